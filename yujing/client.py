"""``yujing score``: send turns to a running service and print the answers for a person.

    yujing score "我要投诉，你们太慢了！"                       # one customer turn, 127.0.0.1:50051
    yujing score --speaker agent --session s1 "Sorry for the wait."
    yujing score --file conversation.jsonl --json           # one JSON answer per line

A conversation file is JSON Lines, one turn per line; every key is optional except
``text`` (or ``event``): ``{"speaker": "customer", "text": "...", "timestamp_ms": 0,
"agent_id": "a1", "tier": "VIP", "channel": "CHAT", "event": "HOLD", "turn_id": "t3"}``.
Turns of one invocation share a session (``--session``, default a fresh id), are sent in
order on one stream, and each answer is printed as it arrives. ``--json`` prints the
answers as JSON (the proto's JSON mapping) instead. Grpcurl is not needed. Against a
secured service: ``--token`` (or $YUJING_TOKEN) and ``--tls-ca ca.pem`` (mTLS: also
``--tls-cert``/``--tls-key``).
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Iterable, Iterator

import grpc
from google.protobuf import json_format

from yujing.service.contract import pb, pb_grpc

_ENUMS = {"speaker": pb.Speaker, "channel": pb.Channel, "tier": pb.CustomerTier, "event": pb.Event}


def _enum(kind: str, value: str) -> int:
    enum = _ENUMS[kind]
    try:
        return enum.Value(str(value).upper())
    except ValueError:
        names = ", ".join(n.lower() for n in enum.keys() if not n.endswith("UNSPECIFIED"))
        raise SystemExit(f"yujing score: {kind} {value!r}: expected one of {names}") from None


def read_turns(lines: Iterable[str], defaults: dict) -> Iterator[dict]:
    """Turn dicts from JSON Lines, with the command line's defaults filled in."""
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"yujing score: line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not ("text" in row or "event" in row):
            raise SystemExit(f"yujing score: line {n}: expected an object with \"text\" or \"event\"")
        yield {**defaults, **row}


def build_turn(row: dict, session_id: str, tenant_id: str, n: int) -> "pb.Turn":
    return pb.Turn(
        tenant_id=row.get("tenant_id", tenant_id), session_id=row.get("session_id", session_id),
        turn_id=str(row.get("turn_id", f"t{n}")), timestamp_ms=int(row.get("timestamp_ms", 0)),
        speaker=_enum("speaker", row.get("speaker", "customer")),
        channel=_enum("channel", row.get("channel", "chat")),
        customer_tier=_enum("tier", row.get("tier", "standard")),
        event=_enum("event", row.get("event", "event_none")),
        text=str(row.get("text", "")), agent_id=str(row.get("agent_id", "")), queue=str(row.get("queue", "")))


def describe(turn: "pb.Turn", risk: "pb.TurnRisk") -> str:
    """Lines a person reads: who said what, the verdict, then each reason in words (Chinese
    for a turn written in Chinese, else English) with the points it adds."""
    who = pb.Speaker.Name(turn.speaker).lower()
    said = turn.text if turn.text else f"[{pb.Event.Name(turn.event)}]"
    level = pb.Level.Name(risk.level)
    prio = pb.Priority.Name(risk.priority).replace("PRIORITY_NONE", "-")
    parts = [f"{who:>8}: {said}",
             f"          risk {risk.risk_score:5.1f}  {level:<6} {prio:<3}"]
    if risk.HasField("sentiment") and risk.sentiment.label:
        parts[1] += f"  sentiment {risk.sentiment.label} ({risk.sentiment.score:+.2f})"
    if risk.HasField("intent") and risk.intent.label:
        parts[1] += f"  intent {risk.intent.label} ({risk.intent.confidence:.2f})"
    actions = [pb.Action.Name(a) for a in risk.actions if a != pb.NO_ACTION]
    if actions:
        parts[1] += "  -> " + ", ".join(actions)
    if risk.degraded:
        parts[1] += "  [degraded: in-process models]"
    if risk.duplicate:
        parts[1] += "  [duplicate]"
    zh = _written_in_chinese(turn.text)
    shown = [r for r in risk.reasons if r.points >= 0.05]     # one that adds "+0.0" explains nothing
    for k, r in enumerate(shown):          # the reason's words, in the turn's language
        words = (r.text_zh if zh else r.text_en) or r.text_en or f"{r.indicator} {r.value:.2f}"
        parts.append(f"          {'because' if k == 0 else '':<7}  {words} (+{r.points:.1f})")
    return "\n".join(parts)


def _written_in_chinese(text: str) -> bool:
    """Has ``text`` Chinese letters? The service's own test (the language bits its models'
    trust goes by), from the plain reference featuriser: no compiled kernel in a client."""
    from yujing.service.featurize_reference import LANG_ZH, featurize_batch

    return bool(text) and bool(featurize_batch([text]).languages[0] & LANG_ZH)


def run(args: argparse.Namespace) -> int:
    defaults = {k: v for k, v in (("speaker", args.speaker), ("tier", args.tier), ("channel", args.channel),
                                  ("agent_id", args.agent), ("queue", args.queue)) if v is not None}
    if args.file:
        with (sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")) as f:
            rows = list(read_turns(f, defaults))
    else:
        rows = [{**defaults, "text": t} for t in args.text]
    if not rows:
        raise SystemExit("yujing score: nothing to send (give texts or --file)")
    session = args.session or f"cli-{uuid.uuid4().hex[:12]}"
    turns = [build_turn(r, session, args.tenant, n) for n, r in enumerate(rows, 1)]
    from yujing.service.security.client import channel_from_args

    with channel_from_args(args) as channel:
        stub = pb_grpc.RiskScorerStub(channel)
        try:
            for turn, risk in zip(turns, stub.ScoreStream(iter(turns), timeout=args.timeout_s)):
                if args.json:
                    print(json_format.MessageToJson(risk, indent=None, ensure_ascii=False))
                else:
                    print(describe(turn, risk))
        except grpc.RpcError as exc:
            print(f"yujing score: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if not args.json:
        print(f"session {session} (tenant {args.tenant or '-'}): yujing score --session {session} ... continues it")
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("score", help="send turns to a running service and print the answers",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="*", help="turn texts, one turn each (or --file)")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service (default: %(default)s)")
    p.add_argument("--file", help="a conversation in JSON Lines ('-' reads standard input)")
    p.add_argument("--tenant", default="", help="tenant_id (default: none)")
    p.add_argument("--session", help="session_id (default: a fresh one, printed at the end)")
    p.add_argument("--speaker", default=None, help="customer, agent or bot (default: customer)")
    p.add_argument("--tier", default=None, help="standard, gold, diamond or vip (default: standard)")
    p.add_argument("--channel", default=None, help="voice, chat, email, social or app (default: chat)")
    p.add_argument("--agent", default=None, help="agent_id for the turns (default: none)")
    p.add_argument("--queue", default=None, help="queue for the turns (default: none)")
    p.add_argument("--json", action="store_true", help="print each answer as one line of JSON")
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of the whole call (default: %(default)s)")
    from yujing.service.security.client import add_client_arguments

    add_client_arguments(p)
    p.set_defaults(func=run)
