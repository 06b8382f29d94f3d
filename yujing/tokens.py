"""``yujing tokens``: mint, list and revoke the service's bearer tokens (the tokens file).

    yujing tokens add --file tokens.json --tenant acme [--note "acme platform"]   # prints the token once
    yujing tokens add --file tokens.json --scope admin --note deploy
    yujing tokens list --file tokens.json
    yujing tokens revoke --file tokens.json --id 4be1c0 | --tenant acme
    yujing tokens quota --file tokens.json --tenant acme [--max-sessions N] [--turns-per-s R] [--burst-turns B]

Only the SHA-256 of a token is stored; a running service re-reads the file within about
a second of a change, so a revoked token stops working without a restart.
"""
from __future__ import annotations

import argparse
import sys


def _add(args) -> int:
    from yujing.service.security.tokens import add_token

    token, entry = add_token(args.file, args.tenant or "", args.scope, args.note or "")
    who = "admin (any tenant)" if entry["scope"] == "admin" else f"tenant {entry['tenant']}"
    print(token)
    print(f"token {entry['id']} for {who} stored (its hash only) in {args.file}; the token is shown only "
          "this once", file=sys.stderr)
    return 0


def _list(args) -> int:
    from yujing.service.security.tokens import list_tokens, read_tokens

    entries = list_tokens(args.file)
    for e in entries:
        print(f"{e.get('id', '?'):<14} {e.get('scope', 'tenant'):<7} {e.get('tenant') or '*':<24} "
              f"{e.get('created', ''):<21} {e.get('note', '')}")
    for tenant, q in sorted(read_tokens(args.file).quotas.items()):
        print(f"quota {tenant}: " + ", ".join(f"{k} {v:g}" for k, v in q.items()))
    if not entries:
        print(f"no tokens in {args.file}", file=sys.stderr)
    return 0


def _revoke(args) -> int:
    from yujing.service.security.tokens import revoke_tokens

    removed = revoke_tokens(args.file, args.id, args.tenant)
    for e in removed:
        print(f"revoked {e.get('id')} ({e.get('scope', 'tenant')} {e.get('tenant') or '*'})")
    if not removed:
        print("yujing tokens: no token matched", file=sys.stderr)
        return 1
    return 0


def _quota(args) -> int:
    from yujing.service.security.tokens import set_quota

    q = set_quota(args.file, args.tenant, max_sessions=args.max_sessions, turns_per_s=args.turns_per_s,
                  burst_turns=args.burst_turns)
    print(f"quota {args.tenant}: " + (", ".join(f"{k} {v:g}" for k, v in q.items()) or "the service's flags"))
    return 0


def add_subcommand(sub) -> None:
    p = sub.add_parser("tokens", help="mint, list and revoke bearer tokens (the tokens file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tokens_command", required=True)

    def cmd(name, func, help_text):
        c = tsub.add_parser(name, help=help_text)
        c.add_argument("--file", required=True, help="the tokens file (what yujing serve --tokens reads)")
        c.set_defaults(func=func)
        return c

    a = cmd("add", _add, "mint a token and print it (once)")
    a.add_argument("--tenant", help="the tenant it acts for (required unless --scope admin)")
    a.add_argument("--scope", choices=("tenant", "admin"), default="tenant",
                   help="tenant: its tenant only; admin: any tenant (operations) (default: %(default)s)")
    a.add_argument("--note", help="who holds it, what for")
    cmd("list", _list, "list the tokens (ids, tenants, scopes; never the tokens)")
    r = cmd("revoke", _revoke, "revoke tokens by id (prefix) or by tenant")
    r.add_argument("--id", help="the token's id (at least 6 characters of it)")
    r.add_argument("--tenant", help="every token of this tenant")
    q = cmd("quota", _quota, "set a tenant's quotas (overriding the service's --quota-* flags)")
    q.add_argument("--tenant", required=True)
    q.add_argument("--max-sessions", type=int, default=None, help="live sessions (0: no limit)")
    q.add_argument("--turns-per-s", type=float, default=None, help="sustained turns per second (0: no limit)")
    q.add_argument("--burst-turns", type=float, default=None, help="bucket size (0: one second's worth)")
