"""Queue trends: rolling counts per tenant x queue (and per intent category within a queue)
over event time, their baselines, the four queue alerts (DOMAIN's aggregate numbers) and
the figures of GetQueueHealth.

Rows and storage
    A row is (tenant, queue, category); category "" is the queue as a whole, and every
    turn counts in its queue's row and, when it has a category, in (tenant, queue,
    category) too. Each row holds a ring of time buckets (``bucket_minutes``, default 10)
    of six counters (``COUNTERS``): turns, customer_turns, negative (customer turns the
    sentiment model labelled negative), complaints (customer turns the caller marks as a
    complaint), new_sessions, escalations (sessions whose level rose to YELLOW/RED on the
    turn); numpy int32 ``[rows, 6, buckets]``. The ring spans 72 h + one bucket: the 48 h
    the 24 h rule compares, plus 24 h of tolerance for late turns. Time is the turn's own
    timestamp, so a replayed day behaves like a live one; a row's clock is the latest turn
    time it has seen, and a turn older than the ring (72 h before that clock) is not
    counted (``late_dropped``).

Row bound
    Rows are added on first sight until ``max_rows - reserve`` exist (reserve =
    max(2, max_rows // 16)). After that a new queue folds into queue "other" of its tenant
    (that row is created from the reserve), and once the reserve is used up into the
    global row ("*", "other", ""); a new category beyond the bound is not tracked on its
    own (its turns still count in its queue's row). Categories in ``ignore_categories``
    (default "other", the policy's category of turns with no particular intent) get no
    row of their own. Rows are never dropped while the process runs (the state is in
    memory; a restart starts from zero).

Windows and baselines (all bucketed; "now" is the queue's clock for the rules, the stream's
clock, the latest turn time of any queue, for ``health`` unless it is given a time)
    The 1 h, 3 h and 24 h windows are the last 6, 18 and 144 buckets, the current one
    included. The baseline of a window is the 24 h just before it (excluding the window
    itself): a volume baseline is the mean per window length over that span (sum / the
    buckets of it that exist x the window's buckets), a share baseline is the ratio of the
    sums (negative / customer turns over the span). For the 24 h window this is the
    previous 24 h. A baseline only counts the time since the row was first seen (for a
    category row, since its queue was first seen).

Warm-up and arming
    NEGATIVE_SURGE and VOLUME_SPIKE are armed once the row has ``warmup_hours`` (6) of
    history, COMPLAINT_RATE_UP once it has ``warmup_hours_24h`` (48), and each only when the
    current window has its minimum volume (``negative_min_customer_turns``,
    ``volume_min_customer_turns``, ``complaint_min_complaints`` and
    ``complaint_min_customer_turns`` in both 24 h windows).

Rules (``TrendPolicy``; DOMAIN's numbers as defaults)
    NEGATIVE_SURGE      negative share over 1 h >= 1.5 x max(baseline share, 0.02)
    VOLUME_SPIKE        customer turns over 3 h >= 2 x max(baseline 3 h volume, 1)
    COMPLAINT_RATE_UP   complaints / customer turns over 24 h >= 1.3 x max(previous 24 h, 0.01)
    REPEATED_COMPLAINT  >= 5 similar complaints from different sessions in one queue within
                        1 h; similar = the same intent id (>= 0, not of a category in
                        ``ignore_categories``) or SimHashes (non-zero) within
                        ``near_dup_bits`` (Hamming). Each queue keeps its last
                        ``repeated_recent`` complaints for this.
    A rule fires once when its condition becomes true for a row and not again for that
    row until the condition has been false for its window (1 h, 3 h, 24 h): one alert per
    surge, not one per batch. A repeated complaint opens a cluster (its intent and
    SimHash); complaints similar to an open cluster do not fire again, and the cluster
    closes after a window with none. Rules run per category too (``category_alerts``),
    the event's ``intent_category`` naming it. Only the rows a batch touches are evaluated,
    once per batch, as of the batch's latest turn in the queue (micro-batches span
    milliseconds; a replay in big batches sees the rules only at batch ends).
    Figures: value, baseline, ratio (against the floored baseline), count, window_s.

Health index (GetQueueHealth), 0 (worst) .. 100 (healthy)
    Over the last 24 h, each bucket weighs 0.5 ** (age / ``health_half_life_hours``)
    (default 2 h: the last hour carries about 30 % of the weight, DOMAIN's "most recent
    period 30 %"). From the weighted counts: negative share, complaint rate and escalation
    rate (escalations per customer turn). Each is compared with its baseline, the same
    rate over the 24 h before the last hour (with none yet, the value itself), floored at
    ``negative_share_floor`` (negative) or ``complaint_rate_floor`` (the other two):
    penalty = clip((value / baseline - 1) / (ratio - 1), 0, 1), 0 at the baseline and 1 at
    the alarm ratio (``negative_surge_ratio`` 1.5 for negative share and escalations,
    ``complaint_rate_ratio`` 1.3 for complaints). The negative share also has an absolute
    penalty, clip((share - 0.15) / (0.40 - 0.15), 0, 1) (DOMAIN: > 15 % yellow, > 40 %
    red), and counts the larger of the two. The penalties are scaled by
    min(1, weighted customer turns / negative_min_customer_turns) (a handful of turns
    cannot sink a queue), then
    index = 100 - 40 x negative - 35 x complaints - 25 x escalations (``health_weights``),
    clipped to [0, 100]; a queue with no customer turns in 24 h scores 100.

    >>> t = TrendTracker()
    >>> t.observe(tenants=["t"], queues=["q"], categories=[""], ts_ms=[0], customer=[True],
    ...           negative=[True], complaint=[False], new_session=[True], escalation=[False],
    ...           session_hash=[1], intent_id=[-1], simhash=[0])
    []
    >>> t.queues(), t.health("t", "q")["windows"]["1h"]["negative_turns"]
    ([('t', 'q', '')], 1)
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np

from yujing.kernels import trends as _k
from yujing.service.alerts.events import AlertEvent
from yujing.service.errors import ConfigError

log = logging.getLogger(__name__)

COUNTERS = ("turns", "customer_turns", "negative", "complaints", "new_sessions", "escalations")
TURNS, CUSTOMER, NEGATIVE, COMPLAINTS, NEW_SESSIONS, ESCALATIONS = range(len(COUNTERS))
NC = len(COUNTERS)
RULES = ("NEGATIVE_SURGE", "VOLUME_SPIKE", "COMPLAINT_RATE_UP", "REPEATED_COMPLAINT")
LEVEL_NAMES = ("NONE", "BLUE", "YELLOW", "RED")           # kernel level numbers 0 .. 3
PRIORITY_NAMES = ("NONE", "P3", "P2", "P1", "P0")         # kernel priority numbers 0 .. 4
OTHER = "other"
GLOBAL_OTHER = ("*", OTHER, "")
RING_HOURS = 72
_NEVER = -(2 ** 62)          # `last` of a row that holds nothing yet
_FAR = 2 ** 62               # `first` of such a row
_UNSET = np.iinfo(np.int64).min
_ROW_CACHE_MAX = 1 << 16     # remembered (tenant, queue, category) keys of observe

DEFAULT_TREND_TOML = """\
# Queue trends (README "Queue trends"): rolling counts per tenant x queue and per intent
# category over event time, 24 h baselines and the four queue alerts. Optional: a policy
# without this table gets these values.
[trend]
bucket_minutes = 10            # the width of a time bucket; must divide 60
max_rows = 2048                # tracked (tenant, queue, category) rows; beyond: queue "other"
category_alerts = true         # run the rules per intent category too
warmup_hours = 6               # history before NEGATIVE_SURGE / VOLUME_SPIKE are armed
warmup_hours_24h = 48          # history before COMPLAINT_RATE_UP is armed
# NEGATIVE_SURGE: negative share of customer turns over 1 h against the 24 h before it
# (DOMAIN: alert when negative feedback surges by 50 %).
negative_surge_ratio = 1.5
negative_share_floor = 0.02    # the baseline share is at least this (no alarm on 0 -> small)
negative_min_customer_turns = 30
# VOLUME_SPIKE: customer turns over 3 h against the mean 3 h of the 24 h before it
# (DOMAIN: response volume in 3 hours above 2x the average).
volume_spike_ratio = 2.0
volume_min_customer_turns = 60
# COMPLAINT_RATE_UP: complaints / customer turns over 24 h against the previous 24 h
# (DOMAIN: the bad-review rate rising 30 % within 24 h is an anomaly).
complaint_rate_ratio = 1.3
complaint_rate_floor = 0.01
complaint_min_complaints = 20
complaint_min_customer_turns = 200   # in the current and in the previous 24 h
# REPEATED_COMPLAINT: similar complaints from different sessions in one queue
# (DOMAIN: 5 or more similar complaints); similar = same intent or near-duplicate SimHash.
repeated_complaints = 5
repeated_window_minutes = 60
near_dup_bits = 8              # SimHash Hamming distance of near-duplicate texts
repeated_recent = 256          # complaints remembered per queue
# Intent categories that name no topic (the policy's default category): not tracked as a
# category row of their own, and an intent of theirs does not make complaints similar.
ignore_categories = ["other"]
levels = { NEGATIVE_SURGE = "YELLOW", VOLUME_SPIKE = "YELLOW", COMPLAINT_RATE_UP = "YELLOW", REPEATED_COMPLAINT = "RED" }
priorities = { NEGATIVE_SURGE = "P1", VOLUME_SPIKE = "P2", COMPLAINT_RATE_UP = "P1", REPEATED_COMPLAINT = "P1" }
# Health index 0..100: recency-weighted penalties (DOMAIN: recent feedback weighs more,
# the most recent period 30 %: a 2 h half-life gives the last hour about 30 %).
health_half_life_hours = 2.0
health_weights = { negative = 40.0, complaints = 35.0, escalations = 25.0 }
health_negative_yellow = 0.15  # DOMAIN: > 15 % negative feedback is yellow
health_negative_red = 0.40     # DOMAIN: > 40 % is red
"""


def _default_levels():
    return {"NEGATIVE_SURGE": 2, "VOLUME_SPIKE": 2, "COMPLAINT_RATE_UP": 2, "REPEATED_COMPLAINT": 3}


def _default_priorities():
    return {"NEGATIVE_SURGE": 3, "VOLUME_SPIKE": 2, "COMPLAINT_RATE_UP": 3, "REPEATED_COMPLAINT": 3}


@dataclass
class TrendPolicy:
    """The ``[trend]`` section (``DEFAULT_TREND_TOML`` documents each key). Levels and
    priorities are kernel numbers (level 0 none .. 3 red; priority 0 none, 1 P3 .. 4 P0)."""

    bucket_minutes: int = 10
    max_rows: int = 2048
    category_alerts: bool = True
    warmup_hours: float = 6.0
    warmup_hours_24h: float = 48.0
    negative_surge_ratio: float = 1.5
    negative_share_floor: float = 0.02
    negative_min_customer_turns: int = 30
    volume_spike_ratio: float = 2.0
    volume_min_customer_turns: int = 60
    complaint_rate_ratio: float = 1.3
    complaint_rate_floor: float = 0.01
    complaint_min_complaints: int = 20
    complaint_min_customer_turns: int = 200
    repeated_complaints: int = 5
    repeated_window_minutes: float = 60.0
    near_dup_bits: int = 8
    repeated_recent: int = 256
    ignore_categories: tuple = ("other",)
    levels: dict = field(default_factory=_default_levels)
    priorities: dict = field(default_factory=_default_priorities)
    health_half_life_hours: float = 2.0
    health_weights: tuple = (40.0, 35.0, 25.0)      # negative, complaints, escalations
    health_negative_yellow: float = 0.15
    health_negative_red: float = 0.40

    # key: (type, lo, hi, lo_open)
    _RANGES = {
        "bucket_minutes": ("int", 1, 60, False),
        "max_rows": ("int", 8, 1_000_000, False),
        "category_alerts": ("bool", None, None, False),
        "warmup_hours": ("num", 4, RING_HOURS, False),
        "warmup_hours_24h": ("num", 25, RING_HOURS, False),
        "negative_surge_ratio": ("num", 1, 100, True),
        "negative_share_floor": ("num", 0, 1, False),
        "negative_min_customer_turns": ("int", 1, 10_000_000, False),
        "volume_spike_ratio": ("num", 1, 100, True),
        "volume_min_customer_turns": ("int", 1, 10_000_000, False),
        "complaint_rate_ratio": ("num", 1, 100, True),
        "complaint_rate_floor": ("num", 0, 1, False),
        "complaint_min_complaints": ("int", 1, 10_000_000, False),
        "complaint_min_customer_turns": ("int", 0, 100_000_000, False),
        "repeated_complaints": ("int", 2, 1000, False),
        "repeated_window_minutes": ("num", 0, 24 * 60, True),
        "near_dup_bits": ("int", 0, 64, False),
        "repeated_recent": ("int", 2, 100_000, False),
        "ignore_categories": ("strlist", None, None, False),
        "levels": ("levels", None, None, False),
        "priorities": ("priorities", None, None, False),
        "health_half_life_hours": ("num", 0, 24, True),
        "health_weights": ("weights", None, None, False),
        "health_negative_yellow": ("num", 0, 1, False),
        "health_negative_red": ("num", 0, 1, False),
    }

    @classmethod
    def from_section(cls, section: dict | None, where: str = "[trend]") -> "TrendPolicy":
        """Validate a parsed ``[trend]`` table (None: the defaults). Keys left out keep
        their defaults; an unknown key or a value out of range raises ConfigError naming
        the key (``where`` prefixes the message, e.g. "policy.toml [trend]")."""
        d = cls()
        if section is None:
            return d
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: must be a table", "trend")
        extra = sorted(set(section) - set(cls._RANGES))
        if extra:
            raise ConfigError(f"{where}: unknown key(s): {', '.join(extra)}", f"trend.{extra[0]}")
        out = {}
        for key, v in section.items():
            typ, lo, hi, lo_open = cls._RANGES[key]
            name = f"trend.{key}"
            if typ in ("int", "num"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{where}: {key} must be a number, got {v!r}", name)
                if typ == "int" and v != int(v):
                    raise ConfigError(f"{where}: {key} = {v!r} must be a whole number", name)
                if v < lo or v > hi or (lo_open and v == lo):
                    rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
                    raise ConfigError(f"{where}: {key} = {v!r} is outside {rng}", name)
                out[key] = int(v) if typ == "int" else float(v)
            elif typ == "bool":
                if not isinstance(v, bool):
                    raise ConfigError(f"{where}: {key} must be true or false, got {v!r}", name)
                out[key] = v
            elif typ == "strlist":
                if not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                    raise ConfigError(f"{where}: {key} must be a list of category names", name)
                out[key] = tuple(v)
            elif typ in ("levels", "priorities"):
                names = LEVEL_NAMES if typ == "levels" else PRIORITY_NAMES
                if not isinstance(v, dict):
                    raise ConfigError(f"{where}: {key} must be a table like {{ NEGATIVE_SURGE = "
                                      f"\"{names[2]}\" }}", name)
                table = dict(getattr(d, key))
                for kind, lv in v.items():
                    if kind not in RULES:
                        raise ConfigError(f"{where}: {key}.{kind}: unknown alert kind; expected one of "
                                          f"{', '.join(RULES)}", f"{name}.{kind}")
                    if lv not in names[1:]:
                        raise ConfigError(f"{where}: {key}.{kind} = {lv!r}; expected one of "
                                          f"{', '.join(names[1:])}", f"{name}.{kind}")
                    table[kind] = names.index(lv)
                out[key] = table
            elif typ == "weights":
                parts = ("negative", "complaints", "escalations")
                if not isinstance(v, dict):
                    raise ConfigError(f"{where}: {key} must be a table like {{ negative = 40.0 }}", name)
                bad = sorted(set(v) - set(parts))
                if bad:
                    raise ConfigError(f"{where}: {key}.{bad[0]}: unknown; expected negative, complaints, "
                                      f"escalations", f"{name}.{bad[0]}")
                w = dict(zip(parts, d.health_weights))
                for part, x in v.items():
                    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 100:
                        raise ConfigError(f"{where}: {key}.{part} = {x!r} is outside [0, 100]", f"{name}.{part}")
                    w[part] = float(x)
                if sum(w.values()) > 100:
                    raise ConfigError(f"{where}: {key} must sum to at most 100, got {sum(w.values())}", name)
                out[key] = tuple(w[p] for p in parts)
        p = cls(**{**{f.name: getattr(d, f.name) for f in fields(cls)}, **out})
        if 60 % p.bucket_minutes:
            raise ConfigError(f"{where}: bucket_minutes = {p.bucket_minutes} must divide 60",
                              "trend.bucket_minutes")
        if p.repeated_recent < p.repeated_complaints:
            raise ConfigError(f"{where}: repeated_recent = {p.repeated_recent} must be at least "
                              f"repeated_complaints = {p.repeated_complaints}", "trend.repeated_recent")
        if not p.health_negative_yellow < p.health_negative_red:
            raise ConfigError(f"{where}: health_negative_yellow {p.health_negative_yellow} must be below "
                              f"health_negative_red {p.health_negative_red}", "trend.health_negative_red")
        return p


def _column(x, dtype) -> np.ndarray:
    """``x`` as a 1-D C-contiguous array of ``dtype`` (what the compiled kernel is typed for;
    no copy when it is one already)."""
    a = np.asarray(x, dtype)
    if a.ndim != 1 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a.reshape(-1))
    return a


def _fdiv(a, b) -> float:
    """a / b as floats, 0.0 where b is 0 (``_div`` for one pair)."""
    return float(a) / float(b) if b != 0 else 0.0


def _div(a, b):
    """a / b elementwise, 0 where b is 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


class _Recent:
    """A queue's last complaints (bounded ring) and its open repeated-complaint clusters."""

    __slots__ = ("ts", "sess", "intent", "sim", "n", "pos", "clusters")

    def __init__(self, k: int):
        self.ts = np.zeros(k, np.int64)
        self.sess = np.zeros(k, np.int64)
        self.intent = np.full(k, -1, np.int64)
        self.sim = np.zeros(k, np.uint64)
        self.n = self.pos = 0
        self.clusters: list = []      # [intent, simhash, last_ts]

    def append(self, ts, sess, intent, sim):
        i = self.pos
        self.ts[i], self.sess[i], self.intent[i], self.sim[i] = ts, sess, intent, sim
        self.pos = (i + 1) % self.ts.shape[0]
        self.n = min(self.n + 1, self.ts.shape[0])


@dataclass
class _Figures:
    """Window sums for some rows at a time (all [R, NC] int64 unless noted)."""

    cur1: np.ndarray
    base1: np.ndarray
    cur3: np.ndarray
    base3: np.ndarray
    cur24: np.ndarray
    prev24: np.ndarray
    weighted: np.ndarray | None  # float64, recency-weighted last 24 h (health only)
    hist: np.ndarray           # [R] buckets since first seen, the current one included


class TrendTracker:
    """Rolling queue counters, their baselines and the queue alerts (module docstring).

    ``observe`` is called once per micro-batch; ``health`` and ``queues`` from any thread
    (one lock guards the state). Per batch, Python finds the turns' rows (strings, folding)
    and one compiled call (``yujing.kernels.trends.observe_batch``) counts the turns and
    evaluates and latches the three rate rules over the touched rows; only fired rules and
    complaints come back to Python. ``trends_reference.ReferenceTrendTracker`` is the same
    as numpy array calls over the batch, the definition the compiled path is tested against
    (``tests/test_trends_compiled.py``) and timed beside (``yujing bench trends``)."""

    def __init__(self, policy: TrendPolicy | None = None):
        p = self.policy = policy or TrendPolicy()
        self.bucket_ms = p.bucket_minutes * 60_000
        bph = 60 // p.bucket_minutes
        self.w1, self.w3, self.w24 = bph, 3 * bph, 24 * bph
        self.span = 24 * bph                     # the baseline span before a window
        self.nb = RING_HOURS * bph + 1
        self.warm_b = math.ceil(p.warmup_hours * bph)
        self.warm24_b = math.ceil(p.warmup_hours_24h * bph)
        self.cooldown_b = np.array([self.w1, self.w3, self.w24], np.int64)
        self.repeat_ms = int(round(p.repeated_window_minutes * 60_000))
        self.reserve = max(2, p.max_rows // 16)
        self._ignore = frozenset(p.ignore_categories)
        # age segments whose sums make every window and baseline (age 0: the current bucket)
        s = self.span
        self.edges = np.array(sorted({0, 1, self.w1, self.w3, self.w24, self.w1 + s, self.w3 + s, self.w24 + s}))
        self._edge_at = {int(e): i for i, e in enumerate(self.edges)}
        # the compiled kernel's view of the same: segment bounds, the six windows as
        # segment ranges (kernels/trends.py CUR1 .. PREV24) and the parameters
        self._k_edges = self.edges.astype(np.int64)
        at = self._edge_at
        spans = ((0, self.w1), (self.w1, self.w1 + s), (0, self.w3), (self.w3, self.w3 + s),
                 (0, self.w24), (self.w24, self.w24 + s))
        self._k_win_lo = np.array([at[lo] for lo, _ in spans], np.int64)
        self._k_win_hi = np.array([at[hi] for _, hi in spans], np.int64)
        ip = np.zeros(_k.N_IP, np.int64)
        ip[_k.P_BUCKET_MS], ip[_k.P_NB], ip[_k.P_W3], ip[_k.P_SPAN] = self.bucket_ms, self.nb, self.w3, s
        ip[_k.P_WARM], ip[_k.P_WARM24] = self.warm_b, self.warm24_b
        ip[_k.P_NEG_MIN], ip[_k.P_VOL_MIN] = p.negative_min_customer_turns, p.volume_min_customer_turns
        ip[_k.P_COMP_MIN], ip[_k.P_COMP_CUST_MIN] = p.complaint_min_complaints, p.complaint_min_customer_turns
        ip[_k.P_CATEGORY_ALERTS] = bool(p.category_alerts)
        fp = np.zeros(_k.N_FP, np.float64)
        fp[_k.F_NEG_RATIO], fp[_k.F_NEG_FLOOR] = p.negative_surge_ratio, p.negative_share_floor
        fp[_k.F_VOL_RATIO] = p.volume_spike_ratio
        fp[_k.F_COMP_RATIO], fp[_k.F_COMP_FLOOR] = p.complaint_rate_ratio, p.complaint_rate_floor
        self._k_ip, self._k_fp = ip, fp
        cap = min(64, p.max_rows)
        self._counts = np.zeros((cap, NC, self.nb), np.int32)
        self._last = np.full(cap, _NEVER, np.int64)      # newest bucket a row's ring holds
        self._first = np.full(cap, _FAR, np.int64)       # oldest bucket seen
        self._clock = np.full(cap, -1, np.int64)         # latest turn time, ms
        self._parent = np.zeros(cap, np.int64)           # the queue row (itself for a queue row)
        self._active = np.zeros((cap, 3), bool)          # rule fired, not yet released
        self._false_since = np.full((cap, 3), _UNSET, np.int64)
        self._seg = np.zeros((cap, NC, len(self.edges) - 1), np.int64)   # cached segment sums
        self._seg_b = np.full(cap, _UNSET, np.int64)                     # ... as of this bucket
        self._keys: list[tuple] = []
        self._index: dict = {}
        self._fold: dict = {}
        self._children: dict = {}                        # queue row -> {category: row or -1}
        self._row_cache: dict = {}                       # (tenant, queue, category) -> (queue row, category row)
        self._recent: dict = {}                          # queue row -> _Recent
        self._lock = threading.Lock()
        self._stream_ms = 0                              # the latest turn time seen (any queue)
        self.late_dropped = 0                            # turns older than the ring
        self.folded_queues = 0                           # queues folded into "other"

    # -- rows --------------------------------------------------------------------------
    def queues(self) -> list[tuple[str, str, str]]:
        """The tracked rows as (tenant, queue, category), category "" for the whole queue;
        at most ``max_rows``."""
        with self._lock:
            return list(self._keys)

    def _new_row(self, key: tuple, parent: int | None) -> int:
        r = len(self._keys)
        if r >= self._counts.shape[0]:
            self._grow()
        self._keys.append(key)
        self._index[key] = r
        self._parent[r] = r if parent is None else parent
        return r

    def _grow(self):
        cap = self._counts.shape[0]
        new = min(2 * cap, self.policy.max_rows)

        def grown(a, fill):
            out = np.full((new,) + a.shape[1:], fill, a.dtype)
            out[:cap] = a
            return out

        self._counts = grown(self._counts, 0)
        self._last = grown(self._last, _NEVER)
        self._first = grown(self._first, _FAR)
        self._clock = grown(self._clock, -1)
        self._parent = grown(self._parent, 0)
        self._active = grown(self._active, False)
        self._false_since = grown(self._false_since, _UNSET)
        self._seg = grown(self._seg, 0)
        self._seg_b = grown(self._seg_b, _UNSET)

    def _queue_row(self, tenant: str, queue: str) -> int:
        key = (tenant, queue, "")
        r = self._index.get(key)
        if r is None:
            r = self._fold.get(key)
        if r is not None:
            return r
        n, cap = len(self._keys), self.policy.max_rows
        if n < cap - self.reserve:
            return self._new_row(key, None)
        okey = (tenant, OTHER, "")
        r = self._index.get(okey)
        if r is None:
            if n < cap - 1:
                r = self._new_row(okey, None)
            else:
                r = self._index.get(GLOBAL_OTHER)
                if r is None:
                    r = self._new_row(GLOBAL_OTHER, None)
        if not self.folded_queues:
            log.warning("queue trends: %d rows tracked (max_rows); new queues fold into \"other\"", n)
        self._fold[key] = r
        self.folded_queues += 1
        return r

    def _category_row(self, qrow: int, category: str) -> int:
        kids = self._children.setdefault(qrow, {})
        r = kids.get(category)
        if r is None:
            if len(self._keys) < self.policy.max_rows - self.reserve:
                t, q, _ = self._keys[qrow]
                r = self._new_row((t, q, category), qrow)
            else:
                r = -1
            kids[category] = r
        return r

    def _rows_of(self, tenants, queues, categories, n: int) -> np.ndarray:
        """The queue row and the category row (-1: none) of each turn, int64 [n, 2]. A
        key's rows never change once found, so they are remembered across batches (the
        memory is forgotten past ``_ROW_CACHE_MAX`` keys and rebuilt as keys come again)."""
        cache = self._row_cache
        pairs = list(map(cache.get, zip(tenants, queues, categories)))
        if None in pairs:
            if len(cache) > _ROW_CACHE_MAX:
                cache.clear()
            ignore = self._ignore
            for i, k in enumerate(zip(tenants, queues, categories)):
                if pairs[i] is None:
                    rc = cache.get(k)
                    if rc is None:
                        q = self._queue_row(k[0], k[1])
                        rc = cache[k] = (q, self._category_row(q, k[2]) if k[2] and k[2] not in ignore else -1)
                    pairs[i] = rc
        return np.fromiter(itertools.chain.from_iterable(pairs), np.int64, 2 * n).reshape(n, 2)

    # -- a batch -----------------------------------------------------------------------
    def observe(self, tenants, queues, categories, ts_ms, customer, negative, complaint,
                new_session, escalation, session_hash, intent_id, simhash) -> list[AlertEvent]:
        """Count one micro-batch of turns and return the queue alerts it raises.

        All arguments have one entry per turn (lists or numpy arrays, equal length):
        ``tenants``, ``queues``, ``categories`` (str; category "" = none, e.g. an agent's
        turn), ``ts_ms`` (int, the turn's time), ``customer``, ``negative``, ``complaint``,
        ``new_session``, ``escalation`` (bool; negative and complaint count only on
        customer turns), ``session_hash`` (int64, tells sessions apart), ``intent_id``
        (int, -1 = none) and ``simhash`` (uint64, 0 = none): the last three feed
        REPEATED_COMPLAINT. Alerts come back ordered by event time.

        The rows are found here (strings); the counting and the three rate rules are one
        call of the compiled ``yujing.kernels.trends.observe_batch`` (the numpy
        definition it equals is ``trends_reference.ReferenceTrendTracker.observe``), and
        only a fired rule or a complaint comes back to Python."""
        ts = _column(ts_ms, np.int64)
        n = ts.shape[0]
        if n == 0:
            return []
        cust = _column(customer, np.bool_)
        compl = _column(complaint, np.bool_)
        with self._lock:
            rows = self._rows_of(tenants, queues, categories, n)
            ur, fire, sums, hist, now_ms, n_fired, late, ts_max, n_complaints = _k.observe_batch(
                self._counts, self._last, self._first, self._clock, self._parent, self._active,
                self._false_since, self._seg, self._seg_b, rows, ts, cust, _column(negative, np.bool_),
                compl, _column(new_session, np.bool_), _column(escalation, np.bool_),
                self._k_edges, self._k_win_lo, self._k_win_hi, self.cooldown_b, self._k_ip, self._k_fp)
            self.late_dropped += late
            if ts_max > self._stream_ms:
                self._stream_ms = int(ts_max)
            events = []
            if n_complaints:
                events += self._repeated(np.flatnonzero(cust & compl), rows[:, 0], categories, ts,
                                         np.asarray(session_hash, np.int64).reshape(-1),
                                         np.asarray(intent_id, np.int64).reshape(-1),
                                         np.asarray(simhash, np.uint64).reshape(-1))
            if n_fired:
                events += self._rule_events(ur, fire, sums, hist, now_ms)
        if len(events) > 1:
            events.sort(key=lambda e: e.event_time_ms)
        return events

    def _rule_events(self, ur, fire, sums, hist, now_ms) -> list[AlertEvent]:
        """The events of the (row, rule) pairs the kernel fired, rule by rule, rows
        ascending, their figures from the row's window sums."""
        p = self.policy
        events = []
        for j in range(3):
            for u in np.flatnonzero(fire[:, j]).tolist():
                s = sums[u].tolist()
                if j == 0:
                    count, cust = s[_k.CUR1][NEGATIVE], s[_k.CUR1][CUSTOMER]
                    value = _fdiv(count, cust)
                    base = _fdiv(s[_k.BASE1][NEGATIVE], s[_k.BASE1][CUSTOMER])
                    ratio = _fdiv(value, max(base, p.negative_share_floor))
                elif j == 1:
                    count = cust = s[_k.CUR3][CUSTOMER]
                    avail = min(max(int(hist[u]) - self.w3, 0), self.span)
                    value, base = float(count), _fdiv(s[_k.BASE3][CUSTOMER], avail) * self.w3
                    ratio = count / max(base, 1.0)
                else:
                    count, cust = s[_k.CUR24][COMPLAINTS], s[_k.CUR24][CUSTOMER]
                    value = _fdiv(count, cust)
                    base = _fdiv(s[_k.PREV24][COMPLAINTS], s[_k.PREV24][CUSTOMER])
                    ratio = _fdiv(value, max(base, p.complaint_rate_floor))
                events.append(self._rate_event(j, int(ur[u]), int(now_ms[u]), value, base, ratio, count, cust))
        return events

    def _rate_event(self, j: int, row: int, now_ms: int, value: float, base: float, ratio: float,
                    count: int, cust: int) -> AlertEvent:
        """The event of rate rule ``j`` (NEGATIVE_SURGE, VOLUME_SPIKE, COMPLAINT_RATE_UP) fired
        for ``row``: its figures and its words, from the window's figures (``value`` against
        ``base``, ``count`` of ``cust`` customer turns). The one place these alerts are worded
        (the reference tracker calls it too)."""
        p = self.policy
        tenant, queue, cat = self._keys[row]
        where_en, where_zh = _where(queue, cat)
        value, base, ratio, count, cust = float(value), float(base), float(ratio), int(count), int(cust)
        fig = {"value": value, "baseline": base, "ratio": ratio, "count": float(count)}
        if j != 1:                     # a share or a rate: of how many customer turns
            fig["customer_turns"] = float(cust)
        fig["window_s"] = (self.w1, self.w3, self.w24)[j] * self.bucket_ms / 1000.0
        if j == 0:
            en = (f"{where_en}: negative share {value:.0%} in the last hour, {ratio:.1f}x "
                  f"the baseline {base:.0%} ({count} of {cust} customer turns)")
            zh = (f"{where_zh}近 1 小时负面占比 {value:.0%}，为基线 {base:.0%} 的 "
                  f"{ratio:.1f} 倍（{cust} 条客户消息中 {count} 条负面）")
        elif j == 1:
            en = f"{where_en}: {count} customer turns in the last 3 hours, {ratio:.1f}x the baseline {base:.0f}"
            zh = f"{where_zh}近 3 小时客户消息 {count} 条，为基线 {base:.0f} 条的 {ratio:.1f} 倍"
        else:
            en = (f"{where_en}: complaint rate {value:.1%} over the last 24 hours, {ratio:.1f}x "
                  f"the previous 24 hours ({base:.1%}; {count} complaints)")
            zh = (f"{where_zh}近 24 小时投诉率 {value:.1%}，为前 24 小时（{base:.1%}）的 "
                  f"{ratio:.1f} 倍（投诉 {count} 条）")
        kind = RULES[j]
        return AlertEvent(kind=kind, tenant_id=tenant, queue=queue, intent_category=cat, level=p.levels[kind],
                          priority=p.priorities[kind], event_time_ms=now_ms, figures=fig, summary_en=en,
                          summary_zh=zh)

    # -- figures -----------------------------------------------------------------------
    def _gather(self, rows: np.ndarray, nowb: np.ndarray, kmax: int) -> np.ndarray:
        """The rows' rings newest first, int32 [R, NC, kmax]: [..., k] is bucket nowb - k (0
        where the ring does not hold it)."""
        last = self._last[rows]
        absb = nowb[:, None] - np.arange(kmax)[None, :]
        held = (absb <= last[:, None]) & (absb > last[:, None] - self.nb)
        x = self._counts[rows[:, None, None], np.arange(NC)[None, :, None], (absb % self.nb)[:, None, :]]
        x *= held[:, None, :]
        return x

    def _segments(self, rows: np.ndarray, nowb: np.ndarray) -> np.ndarray:
        """Sums over the age segments between ``self.edges``, int64 [R, NC, n_segments]."""
        x = self._gather(rows, nowb, self.edges[-1])
        return np.add.reduceat(x, self.edges[:-1], axis=2, dtype=np.int64)

    def _figures(self, rows: np.ndarray, nowb: np.ndarray, cached: bool = False,
                 weighted: bool = False) -> _Figures:
        """The window sums of ``rows`` as of buckets ``nowb`` (a newer bucket reads 0).

        With ``cached`` (the rules' path, rows evaluated at their queue's clock) the sums
        of the buckets before the current one are kept per row and recomputed only when
        the row's current bucket moved or a late turn landed in an older bucket, so a batch
        costs one read of each row's current bucket."""
        if cached:
            stale = self._seg_b[rows] != nowb
            if stale.any():
                fresh = self._segments(rows[stale], nowb[stale])
                fresh[:, :, 0] = 0
                self._seg[rows[stale]] = fresh
                self._seg_b[rows[stale]] = nowb[stale]
            seg = self._seg[rows]
            now_held = (self._last[rows] == nowb)[:, None]
            seg[:, :, 0] = self._counts[rows, :, nowb % self.nb] * now_held
        else:
            seg = self._segments(rows, nowb)
        pre = np.zeros(seg.shape[:2] + (seg.shape[2] + 1,), np.int64)
        np.cumsum(seg, axis=2, out=pre[:, :, 1:])
        at = self._edge_at

        def win(lo, hi):
            return pre[:, :, at[hi]] - pre[:, :, at[lo]]

        w1, w3, w24, s = self.w1, self.w3, self.w24, self.span
        wsum = None
        if weighted:
            hl_b = self.policy.health_half_life_hours * 60 / self.policy.bucket_minutes
            x = self._gather(rows, nowb, w24).astype(np.float64)
            wsum = np.einsum("rck,k->rc", x, 0.5 ** (np.arange(w24) / hl_b))
        return _Figures(cur1=win(0, w1), base1=win(w1, w1 + s), cur3=win(0, w3), base3=win(w3, w3 + s),
                        cur24=win(0, w24), prev24=win(w24, w24 + s), weighted=wsum,
                        hist=np.maximum(nowb - self._first[rows] + 1, 0))

    def _repeated(self, idx, qrow, categories, ts, sess, intent, sim) -> list[AlertEvent]:
        p = self.policy
        skip = self._ignore
        bits, win = p.near_dup_bits, self.repeat_ms
        events = []
        order = idx[np.argsort(ts[idx], kind="stable")]
        for i, r, t, s, sh, it in zip(order.tolist(), qrow[order].tolist(), ts[order].tolist(),
                                      sess[order].tolist(), sim[order].tolist(), intent[order].tolist()):
            rec = self._recent.get(r)
            if rec is None:
                rec = self._recent[r] = _Recent(p.repeated_recent)
            cat = categories[i] if categories[i] not in skip else ""
            if it < 0 or not cat:
                it = -1
            rec.append(t, s, it, sh)
            rec.clusters = [c for c in rec.clusters if t - c[2] <= win]
            hit = None
            for c in rec.clusters:
                if (it >= 0 and c[0] == it) or (sh != 0 and c[1] != 0 and bin(sh ^ c[1]).count("1") <= bits):
                    hit = c
                    break
            if hit is not None:
                hit[2] = max(hit[2], t)
                continue
            n_sessions, n_similar = _k.similar_complaints(rec.ts, rec.sess, rec.intent, rec.sim, rec.n, t, it,
                                                          np.uint64(sh), win, bits)
            if n_sessions < p.repeated_complaints:
                continue
            rec.clusters.append([it, sh, t])
            del rec.clusters[:-64]
            events.append(self._repeated_event(r, cat, t, it, n_sessions, n_similar))
        return events

    def _repeated_event(self, row: int, cat: str, t: int, intent: int, n_sessions: int,
                        n_similar: int) -> AlertEvent:
        """The REPEATED_COMPLAINT event of queue row ``row``: ``n_sessions`` different sessions
        among ``n_similar`` similar complaints in the window, up to the one at ``t``. The one
        place it is worded (the reference tracker calls it too)."""
        p = self.policy
        tenant, queue, _ = self._keys[row]
        where_en, where_zh = _where(queue, "")
        mins = p.repeated_window_minutes
        kind = "REPEATED_COMPLAINT"
        return AlertEvent(
            kind=kind, tenant_id=tenant, queue=queue, intent_category=cat, level=p.levels[kind],
            priority=p.priorities[kind], event_time_ms=t,
            figures={"value": float(n_sessions), "baseline": float(p.repeated_complaints),
                     "ratio": n_sessions / p.repeated_complaints, "count": float(n_similar),
                     "window_s": self.repeat_ms / 1000.0, "intent_id": float(intent)},
            summary_en=f"{where_en}: {n_sessions} different sessions sent similar complaints within "
                       f"{mins:g} minutes" + (f" (category {cat})" if cat else ""),
            summary_zh=f"{where_zh}{mins:g} 分钟内有 {n_sessions} 个不同会话提出相似投诉"
                       + (f"（类别 {cat}）" if cat else ""))

    # -- GetQueueHealth ----------------------------------------------------------------
    def health(self, tenant: str, queue: str, now_ms: int | None = None) -> dict | None:
        """The figures of one queue as of ``now_ms`` (default: the stream's clock, the latest
        turn time seen in any queue, so a replay is read in its own time and a queue gone
        quiet shows its empty recent windows), or None for a queue never seen.

        ``windows``: {"1h", "3h", "24h"} -> counts (turns, customer_turns, negative_turns,
        complaints, new_sessions, escalations), negative_share, complaint_rate, their
        baselines (baseline_customer_turns, baseline_negative_share, baseline_complaint_rate,
        and baseline_<counter> for every counter) and baseline_ready: the proto's
        QueueWindow names. ``categories``: {category -> the same over 1 h}. Also
        ``health_index`` (0..100) and its ``health_penalties`` (negative, complaints,
        escalations in [0, 1]), ``as_of_ms`` (the time the figures are as of), ``clock_ms``
        (the queue's latest turn time) and ``tracked_as`` ((tenant, queue) of the row that
        holds it: a folded queue reports its "other" row)."""
        with self._lock:
            key = (tenant, queue, "")
            r = self._index.get(key)
            if r is None:
                r = self._fold.get(key)
            if r is None or self._last[r] == _NEVER:
                return None
            cats = sorted((c, row) for c, row in self._children.get(r, {}).items() if row >= 0)
            rows = np.array([r] + [row for _, row in cats], np.int64)
            as_of = self._stream_ms if now_ms is None else int(now_ms)
            f = self._figures(rows, np.full(rows.shape[0], as_of // self.bucket_ms, np.int64), weighted=True)
            tracked_as, clock = self._keys[r][:2], int(self._clock[r])
        out = {"tenant_id": tenant, "queue": queue, "as_of_ms": as_of, "clock_ms": clock, "tracked_as": tracked_as,
               "windows": self._windows(f, 0),
               "categories": {c: self._window("1h", f.cur1[k], f.base1[k], f.hist[k], self.w1, self.warm_b)
                              for k, (c, _) in enumerate(cats, start=1)}}
        out["health_index"], out["health_penalties"] = self._health_index(f.weighted[0], f.base1[0])
        return out

    def gauges(self, limit: int) -> list[tuple[str, str, float, float]]:
        """(tenant, queue, health index, negative share over 1 h) per tracked queue, as of
        the stream's clock, for bounded Prometheus gauges: the first ``limit - 1`` queues
        in order of first sight, the rest summed into one ("*", "other") entry."""
        with self._lock:
            qrows = np.array([r for r, k in enumerate(self._keys) if not k[2]], np.int64)
            if qrows.size == 0 or limit < 1:
                return []
            nowb = np.full(qrows.shape[0], self._stream_ms // self.bucket_ms, np.int64)
            f = self._figures(qrows, nowb, weighted=True)
            keys = [self._keys[r][:2] for r in qrows.tolist()]
        if qrows.shape[0] > limit:
            k = limit - 1
            keys = keys[:k] + [GLOBAL_OTHER[:2]]
            f.weighted = np.concatenate([f.weighted[:k], f.weighted[k:].sum(0, keepdims=True)])
            f.base1 = np.concatenate([f.base1[:k], f.base1[k:].sum(0, keepdims=True)])
            f.cur1 = np.concatenate([f.cur1[:k], f.cur1[k:].sum(0, keepdims=True)])
        share = _div(f.cur1[:, NEGATIVE], f.cur1[:, CUSTOMER])
        return [(t, q, self._health_index(f.weighted[i], f.base1[i])[0], float(share[i]))
                for i, (t, q) in enumerate(keys)]

    def _windows(self, f: _Figures, k: int) -> dict:
        return {"1h": self._window("1h", f.cur1[k], f.base1[k], f.hist[k], self.w1, self.warm_b),
                "3h": self._window("3h", f.cur3[k], f.base3[k], f.hist[k], self.w3, self.warm_b),
                "24h": self._window("24h", f.cur24[k], f.prev24[k], f.hist[k], self.w24, self.warm24_b)}

    def _window(self, name: str, cur, base, hist: int, w: int, warm: int) -> dict:
        avail = int(np.clip(hist - w, 0, self.span))
        bvol = base / avail * w if avail else np.zeros(NC)
        d = {"window": name, "turns": int(cur[TURNS]), "customer_turns": int(cur[CUSTOMER]),
             "negative_turns": int(cur[NEGATIVE]), "complaints": int(cur[COMPLAINTS]),
             "new_sessions": int(cur[NEW_SESSIONS]), "escalations": int(cur[ESCALATIONS]),
             "negative_share": float(_div(cur[NEGATIVE], cur[CUSTOMER])),
             "complaint_rate": float(_div(cur[COMPLAINTS], cur[CUSTOMER])),
             "baseline_customer_turns": float(bvol[CUSTOMER]),
             "baseline_negative_share": float(_div(base[NEGATIVE], base[CUSTOMER])),
             "baseline_complaint_rate": float(_div(base[COMPLAINTS], base[CUSTOMER])),
             "baseline_ready": bool(hist >= warm and avail > 0)}
        for c, label in ((TURNS, "turns"), (NEGATIVE, "negative_turns"), (COMPLAINTS, "complaints"),
                         (NEW_SESSIONS, "new_sessions"), (ESCALATIONS, "escalations")):
            d[f"baseline_{label}"] = float(bvol[c])
        return d

    def _health_index(self, weighted, base) -> tuple[float, dict]:
        p = self.policy
        if weighted[CUSTOMER] <= 0:
            return 100.0, {"negative": 0.0, "complaints": 0.0, "escalations": 0.0}
        pen = {}
        for name, c, floor, ratio in (("negative", NEGATIVE, p.negative_share_floor, p.negative_surge_ratio),
                                      ("complaints", COMPLAINTS, p.complaint_rate_floor, p.complaint_rate_ratio),
                                      ("escalations", ESCALATIONS, p.complaint_rate_floor, p.negative_surge_ratio)):
            v = weighted[c] / weighted[CUSTOMER]
            b = base[c] / base[CUSTOMER] if base[CUSTOMER] > 0 else v
            b = max(b, floor)
            pen[name] = float(np.clip((v / b - 1) / (ratio - 1), 0, 1)) if b > 0 else 0.0
            if c == NEGATIVE:
                a = (v - p.health_negative_yellow) / (p.health_negative_red - p.health_negative_yellow)
                pen[name] = max(pen[name], float(np.clip(a, 0, 1)))
        # a handful of turns cannot sink a queue: full penalties from as many weighted
        # customer turns as the surge rule's minimum volume
        scale = min(1.0, float(weighted[CUSTOMER]) / p.negative_min_customer_turns)
        pen = {k: v * scale for k, v in pen.items()}
        wn, wc, we = p.health_weights
        index = 100.0 - wn * pen["negative"] - wc * pen["complaints"] - we * pen["escalations"]
        return float(np.clip(index, 0.0, 100.0)), pen


def _where(queue: str, category: str) -> tuple[str, str]:
    q = f"'{queue}'" if queue else "(no queue)"
    qz = f"「{queue}」" if queue else "（无队列）"
    if category:
        return f"queue {q} category '{category}'", f"队列{qz}类别「{category}」"
    return f"queue {q}", f"队列{qz}"


def warm_up() -> float:
    """Compile the trend kernel (or load it from numba's on-disk cache) by observing a small
    batch on a scratch tracker; returns the seconds it took. The server calls it before it
    reports SERVING, so the first scored batch does not compile it."""
    start = time.perf_counter()
    TrendTracker().observe(tenants=["t", "t"], queues=["q", "q"], categories=["c", ""], ts_ms=[0, 1],
                           customer=[True, False], negative=[True, False], complaint=[True, False],
                           new_session=[True, False], escalation=[False, False], session_hash=[1, 1],
                           intent_id=[0, -1], simhash=[1, 0])
    return time.perf_counter() - start
