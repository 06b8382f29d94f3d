"""``yujing alerts``: a supervisor's terminal on a running service's alert stream.

    yujing alerts [--target H:P] [--tenant T] [--queue Q ...] [--kind K ...] [--min-level yellow]
                  [--after ID | --from-oldest] [--json] [--count N]
    yujing alerts --ack ID --by NAME [--note TEXT]
    ... [--token T | $YUJING_TOKEN] [--tls-ca ca.pem [--tls-cert c.pem --tls-key c.key]]

It prints one line per alert as it is raised (``--json``: the alert as proto3 JSON, one per
line) and stays connected; after a dropped connection or a service restart it reconnects
and resumes after the last alert it printed, so nothing is missed and nothing printed twice.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

LEVEL_MARK = {"NONE": "  ", "BLUE": "🔵", "YELLOW": "🟡", "RED": "🔴"}


def describe(a) -> str:
    from yujing.service.contract import pb

    when = datetime.fromtimestamp(a.time_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    level = pb.Level.Name(a.level) if a.level else "NONE"
    prio = pb.Priority.Name(a.priority).replace("PRIORITY_", "") if a.priority else "-"
    where = "/".join(x for x in (a.tenant_id, a.queue or "-") if x)
    about = a.session_id or a.agent_id or ""
    due = ""
    if a.deadline_ms:
        due = " due " + datetime.fromtimestamp(a.deadline_ms / 1000, timezone.utc).strftime("%m-%d %H:%M")
    return (f"#{a.id} {when} {LEVEL_MARK.get(level, '')} {level:<6} {prio:<4} {pb.AlertKind.Name(a.kind):<18} "
            f"{where} {about}{due}  {a.summary_en}")


def _query(args):
    from yujing.service.contract import pb

    q = pb.AlertQuery(tenant_id=args.tenant, queues=args.queue or [], from_oldest=args.from_oldest,
                      after_id=args.after or 0)
    for k in args.kind or []:
        q.kinds.append(pb.AlertKind.Value(k.upper()))
    if args.min_level:
        q.min_level = pb.Level.Value(args.min_level.upper())
    return q


def _ack(args, stub) -> int:
    import grpc

    from yujing.service.contract import pb

    try:
        a = stub.AckAlert(pb.AckRequest(tenant_id=args.tenant, alert_id=args.ack, by=args.by or "",
                                        note=args.note or ""), timeout=args.timeout_s)
    except grpc.RpcError as err:
        print(f"yujing alerts: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    state = "on time" if a.ack.on_time else "LATE"
    print(f"{describe(a)}\n  acknowledged by {a.ack.by} ({state})")
    return 0


def run(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from yujing.service.contract import pb_grpc
    from yujing.service.security.client import channel_from_args

    channel = channel_from_args(args)
    stub = pb_grpc.AlertsStub(channel)
    if args.ack:
        return _ack(args, stub)
    q = _query(args)
    printed = 0
    backoff = 0.5
    while True:
        try:
            for a in stub.WatchAlerts(q):
                backoff = 0.5
                if args.json:
                    print(json_format.MessageToJson(a, indent=None), flush=True)
                else:
                    print(describe(a), flush=True)
                q.after_id, q.from_oldest = a.id, False
                printed += 1
                if args.count and printed >= args.count:
                    return 0
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED):
                print(f"yujing alerts: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1
            print(f"yujing alerts: {err.code().name}; reconnecting after #{q.after_id or '-'}", file=sys.stderr)
        except KeyboardInterrupt:
            return 0
        time.sleep(backoff)
        backoff = min(10.0, backoff * 2)


def add_subcommand(sub) -> None:
    p = sub.add_parser("alerts", help="follow a running service's alerts (or acknowledge one)",
                       description="Print the alerts of a running service as they are raised, resuming "
                                   "after the last one printed when the connection drops.")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service (default: %(default)s)")
    p.add_argument("--tenant", default="", help="only this tenant's alerts")
    p.add_argument("--queue", action="append", help="only this queue (repeatable)")
    p.add_argument("--kind", action="append", help="only this kind, e.g. level_rise, sla_breach (repeatable)")
    p.add_argument("--min-level", choices=("blue", "yellow", "red"), help="only alerts at this level or above")
    p.add_argument("--after", type=int, help="resume after this alert id")
    p.add_argument("--from-oldest", action="store_true", help="start with the oldest alert the service keeps")
    p.add_argument("--json", action="store_true", help="one alert per line as JSON")
    p.add_argument("--count", type=int, default=0, help="stop after this many alerts (default: follow)")
    p.add_argument("--ack", type=int, metavar="ID", help="acknowledge alert ID instead of following")
    p.add_argument("--by", help="with --ack: who takes it")
    p.add_argument("--note", help="with --ack: a note")
    p.add_argument("--timeout-s", type=float, default=10.0, help="deadline of --ack (default: %(default)s)")
    from yujing.service.security.client import add_client_arguments

    add_client_arguments(p)
    p.set_defaults(func=run)
