"""Realistic contact-center traffic: interleaved multi-turn conversations.

    gen = ConversationTraffic(seed=7, sessions=1_000_000, concurrent=5_000)
    turn = gen.next_turn()          # a pb.Turn, the next turn of some live conversation

Many conversations are live at once (``concurrent``); each turn comes from one picked at
random, so sessions interleave as they do on a real platform. A conversation holds a few
integers and a phrase script pointer (O(1) memory); when it ends (a hang-up, or its
script runs out) a fresh one starts with the next session number, until ``sessions``
distinct ids have been used, after which numbering wraps (the ids get a new epoch
suffix, so they stay distinct from the earlier ones). Nothing is generated in advance.

Conversations are in Chinese, English or mixed; calm (an inquiry answered by the bot or
an agent) or escalating (the customer grows angry, repeats the complaint, asks for a
manager, then threatens 12315 / the regulator / a lawyer). Turns carry customer, agent
and bot speakers with realistic gaps in their timestamps, plus HANDOFF, HOLD/RESUME,
TRANSFER and HANGUP events; tenants, queues, tiers and channels vary.

``FileTraffic`` replays turns from a CSV or Parquet file (columns named like the Turn
fields; enum columns as names or numbers), read with polars in slices.

Both are deterministic for a given seed (and ``shard``/``shards`` partition the session
numbers between client processes so that no two processes share a session).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from yujing.service.contract import pb

TENANTS = ("acme-bank", "jd-retail", "telco-east", "air-lines", "ins-mutual", "")
QUEUES = ("billing", "refunds", "tech-support", "sales", "claims", "vip-care", "logistics")
CHANNELS = (pb.VOICE, pb.CHAT, pb.CHAT, pb.APP, pb.EMAIL, pb.SOCIAL)
TIERS = (pb.STANDARD, pb.STANDARD, pb.STANDARD, pb.GOLD, pb.GOLD, pb.DIAMOND, pb.VIP)
LANGS = ("zh", "en", "mix")

# --- phrases, by language and stage ----------------------------------------------------
P = {
    "zh": {
        "open": ["你好，我想问一下我的订单什么时候发货？", "您好，我的账单好像有点问题。",
                 "请问怎么修改收货地址？", "你好，我上周申请的退款还没到账。", "我的手机卡突然没信号了。"],
        "calm": ["好的，谢谢。", "明白了，那我再等等。", "可以，麻烦您帮我查一下。", "嗯，订单号是 {num}。",
                 "那大概需要几天？", "好的，没问题。"],
        "thanks": ["谢谢，问题解决了！", "太好了，非常感谢您的帮助。", "好的，辛苦了，再见。"],
        "annoyed": ["怎么还没处理好？我已经等了很久了。", "你们这个效率也太低了吧。", "我上次已经说过了，订单号 {num}！"],
        "angry": ["我真的很生气！这已经是第三次了！", "你们到底能不能解决问题？？", "别再让我等了，太离谱了！",
                  "同样的问题我已经反映了三次了，还是没人管！"],
        "manager": ["叫你们经理来跟我说！", "我要找你们主管，马上！", "我不想跟机器人说话，转人工！"],
        "threat": ["再不解决我就打12315投诉你们！", "我要向银保监会举报！", "我已经找了律师，准备起诉你们。",
                   "我要去消协投诉，还要发到微博上曝光！"],
        "agent": ["您好，这边帮您查询一下，请稍等。", "非常抱歉给您带来不便。", "我已经帮您加急处理了。",
                  "请您提供一下订单号好吗？", "理解您的心情，我马上为您升级处理。", "好的，已经为您登记了。"],
        "bot": ["您好，我是智能客服小助手，请问有什么可以帮您？", "请问您要咨询的是订单、账单还是售后问题？",
                "正在为您查询，请稍候。", "正在为您转接人工客服。"],
    },
    "en": {
        "open": ["Hi, when will my order ship?", "Hello, there seems to be a problem with my bill.",
                 "How do I change my delivery address?", "My refund from last week still hasn't arrived.",
                 "My phone has had no signal since this morning."],
        "calm": ["OK, thanks.", "Got it, I'll wait a bit.", "Sure, could you check that for me?",
                 "The order number is {num}.", "How many days will that take?", "Alright, no problem."],
        "thanks": ["Thanks, that fixed it!", "Great, thank you so much for your help.", "OK, have a nice day, bye."],
        "annoyed": ["Why is this still not sorted out? I've been waiting forever.", "This is really slow.",
                    "I already told you, order number {num}!"],
        "angry": ["I am really angry now! This is the third time!", "Can you people fix anything at all??",
                  "Stop making me wait, this is ridiculous!", "I have reported the same problem three times and nobody cares!"],
        "manager": ["Get me your manager right now!", "I want to speak to a supervisor, now!",
                    "I don't want a bot, give me a human!"],
        "threat": ["If this isn't fixed today I'm filing a complaint with the regulator.",
                   "I'm calling my lawyer and I will sue you.", "I'll report you to consumer protection and post this everywhere.",
                   "I'm cancelling my account and going to the press."],
        "agent": ["Let me look into that for you, one moment please.", "I'm very sorry for the inconvenience.",
                  "I have escalated this for you.", "Could you give me your order number?",
                  "I understand how frustrating this is; I'm escalating it right away.", "Done, it's been logged."],
        "bot": ["Hi, I'm the virtual assistant. How can I help?", "Is this about an order, a bill or after-sales?",
                "Checking that for you, please wait.", "Transferring you to a human agent."],
    },
    "mix": {
        "open": ["Hi，我的 order 什么时候 ship？", "你好，我的 bill 有问题。", "refund 还没到账，please check 一下。",
                 "我的 app 一直 login 不了。"],
        "calm": ["OK 谢谢。", "好的 got it。", "订单号是 {num}，thanks。", "那要几天 ETA？"],
        "thanks": ["Thanks 解决了！", "太好了 thank you!", "OK 拜拜 bye。"],
        "annoyed": ["怎么还没 fix？等很久了。", "效率太 low 了吧。", "我说过了 order number {num}！"],
        "angry": ["我真的很 angry！第三次了！", "你们到底能不能 fix？？", "太 ridiculous 了！"],
        "manager": ["叫你们 manager 来！", "我要找 supervisor，now！", "不要 bot，转人工 human agent！"],
        "threat": ["再不解决我就打12315 complaint！", "我要找 lawyer 起诉你们！", "我要向 regulator 投诉！"],
        "agent": ["好的，我帮您 check 一下，请稍等。", "Sorry 给您带来不便。", "已经帮您 escalate 了。"],
        "bot": ["您好，I'm your 智能助手，有什么可以帮您？", "正在为您 transfer 到人工 agent。"],
    },
}

# gaps before a turn, in seconds (min, max), by who speaks
GAP_S = {pb.CUSTOMER: (3.0, 35.0), pb.AGENT: (4.0, 60.0), pb.BOT: (0.5, 3.0)}
BACKDATE_MS = 5 * 60 * 1000      # conversations start this far in the past (their clock then runs forward)
MAX_AHEAD_MS = 240 * 1000        # never more than this ahead of the wall clock (server skew limit: 300 s)

# A script is a sequence of steps: (speaker, stage or None, event)
_CALM_HUMAN = [(pb.CUSTOMER, "open", 0), (pb.AGENT, "agent", 0), (pb.CUSTOMER, "calm", 0),
               (pb.AGENT, "agent", 0), (pb.CUSTOMER, "calm", 0), (pb.AGENT, "agent", 0),
               (pb.CUSTOMER, "thanks", 0), (pb.AGENT, None, pb.HANGUP)]
_CALM_BOT = [(pb.BOT, "bot", 0), (pb.CUSTOMER, "open", 0), (pb.BOT, "bot", 0), (pb.CUSTOMER, "calm", 0),
             (pb.BOT, "bot", 0), (pb.CUSTOMER, "thanks", 0), (pb.CUSTOMER, None, pb.HANGUP)]
_ESCALATE = [(pb.BOT, "bot", 0), (pb.CUSTOMER, "open", 0), (pb.BOT, "bot", 0), (pb.CUSTOMER, "annoyed", 0),
             (pb.CUSTOMER, "manager", 0), (pb.BOT, None, pb.HANDOFF), (pb.AGENT, "agent", 0),
             (pb.CUSTOMER, "annoyed", 0), (pb.AGENT, None, pb.HOLD), (pb.AGENT, None, pb.RESUME),
             (pb.CUSTOMER, "angry", 0), (pb.CUSTOMER, "angry", 0), (pb.AGENT, "agent", 0),
             (pb.CUSTOMER, "manager", 0), (pb.AGENT, None, pb.TRANSFER), (pb.AGENT, "agent", 0),
             (pb.CUSTOMER, "threat", 0), (pb.CUSTOMER, "angry", 0), (pb.CUSTOMER, "threat", 0),
             (pb.AGENT, "agent", 0), (pb.CUSTOMER, None, pb.HANGUP)]
SCRIPTS = (("calm_human", _CALM_HUMAN), ("calm_bot", _CALM_BOT), ("escalating", _ESCALATE))


class _Conv:
    """One live conversation: a handful of ints (O(1) memory)."""
    __slots__ = ("sid", "script", "step", "lang", "t_ms", "tenant", "queue", "tier", "channel", "agent",
                 "turn_no")


class ConversationTraffic:
    """Interleaved synthetic conversations; ``next_turn()`` returns the next pb.Turn."""

    def __init__(self, seed: int = 1, sessions: int = 10_000, concurrent: int | None = None,
                 escalating_share: float = 0.3, shard: int = 0, shards: int = 1, agents: int = 500,
                 run_id: str | None = None):
        if sessions < 1:
            raise ValueError("sessions must be >= 1")
        self.rng = random.Random((seed * 1_000_003) ^ shard)
        self.seed = seed
        self.sessions = sessions
        self.shard, self.shards = shard, max(1, shards)
        # this shard's session numbers are shard, shard+shards, ... < sessions
        self.my_sessions = max(1, (sessions - shard + self.shards - 1) // self.shards)
        self.concurrent = max(1, min(concurrent or min(sessions, 2_000), self.my_sessions))
        self.escalating_share = escalating_share
        self.agents = agents
        self.run_id = run_id if run_id is not None else f"r{seed}"
        self._next_session = 0
        self.started = 0
        self.produced = 0
        self.live: list[_Conv] = [self._new_conv() for _ in range(self.concurrent)]

    def _new_conv(self) -> _Conv:
        rng = self.rng
        n = self._next_session
        self._next_session += 1
        epoch, k = divmod(n, self.my_sessions)
        c = _Conv()
        c.sid = f"{self.run_id}-s{k * self.shards + self.shard:08d}" + (f"-e{epoch}" if epoch else "")
        r = rng.random()
        if r < self.escalating_share:
            c.script = 2
        else:
            c.script = 0 if rng.random() < 0.5 else 1
        c.step = 0
        c.lang = LANGS[rng.randrange(3)]
        c.t_ms = int(time.time() * 1000) - BACKDATE_MS + rng.randrange(60_000)
        c.tenant = TENANTS[rng.randrange(len(TENANTS))]
        c.queue = QUEUES[rng.randrange(len(QUEUES))]
        c.tier = TIERS[rng.randrange(len(TIERS))]
        c.channel = CHANNELS[rng.randrange(len(CHANNELS))]
        c.agent = f"agent-{rng.randrange(self.agents):04d}"
        c.turn_no = 0
        self.started += 1
        return c

    def _text(self, lang: str, stage: str) -> str:
        rng = self.rng
        phrases = P[lang][stage]
        s = phrases[rng.randrange(len(phrases))]
        if "{num}" in s:
            s = s.replace("{num}", str(rng.randrange(10**9, 10**10)))
        return s

    def next_turn(self) -> pb.Turn:
        rng = self.rng
        i = rng.randrange(len(self.live))
        c = self.live[i]
        script = SCRIPTS[c.script][1]
        speaker, stage, event = script[c.step]
        lo, hi = GAP_S[speaker]
        if c.turn_no:
            c.t_ms += int(rng.uniform(lo, hi) * 1000)
        c.t_ms = min(c.t_ms, int(time.time() * 1000) + MAX_AHEAD_MS)
        c.turn_no += 1
        agent = c.agent if (speaker == pb.AGENT or c.script == 0 or c.step > 5) else ""
        t = pb.Turn(tenant_id=c.tenant, session_id=c.sid, turn_id=f"{c.turn_no}",
                    timestamp_ms=c.t_ms, speaker=speaker, channel=c.channel,
                    text=self._text(c.lang, stage) if stage else "", customer_tier=c.tier,
                    agent_id=agent, queue=c.queue, event=event)
        c.step += 1
        if c.step >= len(script):
            self.live[i] = self._new_conv()
        self.produced += 1
        return t

    def __iter__(self):
        while True:
            yield self.next_turn()


_ENUMS = {"speaker": pb.Speaker, "channel": pb.Channel, "customer_tier": pb.CustomerTier, "event": pb.Event}
_STR = ("tenant_id", "session_id", "turn_id", "text", "agent_id", "queue")


def _enum(kind, v) -> int:
    if v is None:
        return 0
    if isinstance(v, (int,)):
        return int(v)
    s = str(v).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    return kind.Value(s.upper())


class FileTraffic:
    """Turns replayed from a CSV or Parquet file (columns: Turn field names).

    The file is read lazily in slices of ``chunk`` rows; when it runs out it starts over
    and the turn ids get a ``#<round>`` suffix, so replays are new turns, not duplicates.
    ``shard``/``shards`` pick every shards-th row (so processes split the file).
    ``rebase_time`` shifts the file's timestamps so that its first turn is ``BACKDATE_MS``
    before now (the server refuses timestamps far in the future).
    """

    def __init__(self, path, shard: int = 0, shards: int = 1, chunk: int = 50_000, rebase_time: bool = True):
        import polars as pl

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            self.lf = pl.scan_parquet(self.path)
        elif suffix in (".csv", ".tsv", ".txt"):
            self.lf = pl.scan_csv(self.path, separator="\t" if suffix == ".tsv" else ",",
                                  infer_schema_length=10_000)
        else:
            raise ValueError(f"{self.path}: expected .csv or .parquet")
        self.columns = list(self.lf.collect_schema().names())
        if "session_id" not in self.columns:
            raise ValueError(f"{self.path}: no session_id column (columns: {self.columns})")
        self.rows = self.lf.select(pl.len()).collect().item()
        if self.rows == 0:
            raise ValueError(f"{self.path}: no rows")
        self.shard, self.shards, self.chunk = shard, max(1, shards), chunk
        self._offset = shard
        self._round = 0
        self._buf: list = []
        self._pos = 0
        self.produced = 0
        self._shift = 0
        if rebase_time and "timestamp_ms" in self.columns:
            first = self.lf.select(pl.col("timestamp_ms").min()).collect().item()
            if first:
                self._shift = int(time.time() * 1000) - BACKDATE_MS - int(first)

    def _fill(self) -> None:
        import polars as pl

        if self._offset >= self.rows:
            self._round += 1
            self._offset = self.shard % self.rows
        df = self.lf.slice(self._offset, self.chunk * self.shards).collect()
        if self.shards > 1:
            df = df.gather_every(self.shards)
        self._offset += self.chunk * self.shards
        self._buf = list(df.iter_rows(named=True))
        self._pos = 0
        if not self._buf:  # shard beyond the end: wrap
            self._offset = self.rows
            self._fill()

    def next_turn(self) -> pb.Turn:
        if self._pos >= len(self._buf):
            self._fill()
        row = self._buf[self._pos]
        self._pos += 1
        kw = {}
        for k in _STR:
            v = row.get(k)
            if v is not None:
                kw[k] = str(v)
        if self._round and "turn_id" in kw:
            kw["turn_id"] = f"{kw['turn_id']}#{self._round}"
        ts = row.get("timestamp_ms")
        if ts is not None:
            kw["timestamp_ms"] = int(ts) + self._shift
        for k, kind in _ENUMS.items():
            if k in row:
                kw[k] = _enum(kind, row[k])
        if not kw.get("turn_id"):
            kw["turn_id"] = f"f{self.produced}"
        self.produced += 1
        return pb.Turn(**kw)

    def __iter__(self):
        while True:
            yield self.next_turn()


def make_traffic(turns_file=None, seed: int = 1, sessions: int = 10_000, concurrent: int | None = None,
                 shard: int = 0, shards: int = 1, run_id: str | None = None):
    if turns_file:
        return FileTraffic(turns_file, shard=shard, shards=shards)
    return ConversationTraffic(seed=seed, sessions=sessions, concurrent=concurrent, shard=shard,
                               shards=shards, run_id=run_id)
