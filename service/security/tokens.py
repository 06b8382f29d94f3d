"""The tokens file: who holds a token, for which tenant, with what scope, and each
tenant's quota overrides. Only the SHA-256 of a token is kept; the token itself is
printed once, when it is minted (``yujing tokens add``).

    {"version": 1,
     "tokens": [{"id": "4be1c0d2a9f3", "sha256": "<64 hex>", "tenant": "acme", "scope": "tenant",
                 "created": "2026-12-03T10:00:00Z", "note": "acme's platform"},
                {"id": "...", "sha256": "...", "tenant": "", "scope": "admin", ...}],
     "quotas": {"acme": {"max_sessions": 5000, "turns_per_s": 300, "burst_turns": 600}}}

A token is ``yjt_`` and 43 URL-safe characters (32 random bytes), so one SHA-256 is a fit
hash for it (nothing to guess; no salt or slow hash needed). A ``tenant`` token acts for
its tenant only; an ``admin`` token (operations: deploy, support) for any tenant.

:class:`TokenStore` answers "whose token is this?" from a dict keyed by the presented
token string (one SHA-256 on its first use, a dict lookup after), and re-reads the file
when its mtime, size or inode changed, looking at most once every ``recheck_s``. A file
that no longer parses keeps the last good set (logged); a deleted file holds no tokens.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from yujing.service.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "yjt_"
SCOPES = ("tenant", "admin")
QUOTA_KEYS = ("max_sessions", "turns_per_s", "burst_turns")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CACHE_MAX = 65_536          # presented tokens remembered (valid ones only); cleared when full


@dataclass(frozen=True)
class Principal:
    """Who a call acts as: a tenant's token, an admin token, or anyone (no tokens file)."""
    token_id: str
    tenant: str          # "" for admin and open principals
    admin: bool


OPEN = Principal(token_id="-", tenant="", admin=True)   # the service runs without tokens (loopback only)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass
class TokensFile:
    """A parsed tokens file: entries as written, principals by hash, quota overrides."""
    entries: list
    by_hash: dict
    quotas: dict

    @classmethod
    def empty(cls) -> "TokensFile":
        return cls([], {}, {})


def parse_tokens(text: str, where: str = "tokens file") -> TokensFile:
    """The tokens of ``text`` (JSON); raises ConfigError naming what is wrong and where."""
    def bad(msg):
        raise ConfigError(f"{where}: {msg}", "tokens")

    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        bad(f"not JSON ({exc.msg} at line {exc.lineno})")
    if not isinstance(doc, dict):
        bad("expected a JSON object with \"tokens\" and \"quotas\"")
    entries, by_hash = doc.get("tokens", []), {}
    if not isinstance(entries, list):
        bad("\"tokens\" must be a list")
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            bad(f"tokens[{k}] is not an object")
        digest, scope, tenant = e.get("sha256", ""), e.get("scope", "tenant"), e.get("tenant", "")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            bad(f"tokens[{k}].sha256 must be 64 lower-case hex digits (the SHA-256 of the token)")
        if scope not in SCOPES:
            bad(f"tokens[{k}].scope {scope!r}: expected one of {', '.join(SCOPES)}")
        if not isinstance(tenant, str) or (scope == "tenant" and not tenant):
            bad(f"tokens[{k}].tenant is required for a tenant-scoped token")
        by_hash[digest] = Principal(token_id=str(e.get("id", digest[:12])), tenant="" if scope == "admin" else tenant,
                                    admin=scope == "admin")
    quotas = doc.get("quotas", {})
    if not isinstance(quotas, dict):
        bad("\"quotas\" must be an object of tenant -> {max_sessions, turns_per_s, burst_turns}")
    for tenant, q in quotas.items():
        if not isinstance(q, dict) or set(q) - set(QUOTA_KEYS):
            bad(f"quotas[{tenant!r}]: expected an object with only {', '.join(QUOTA_KEYS)}")
        for name, v in q.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                bad(f"quotas[{tenant!r}].{name} = {v!r}: expected a number >= 0 (0: no limit)")
    return TokensFile(entries, by_hash, quotas)


def read_tokens(path: Path) -> TokensFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"tokens file {path}: {exc.strerror or exc}", "tokens") from None
    return parse_tokens(text, f"tokens file {path}")


def _stat_key(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenStore:
    """The principals of a tokens file, kept current (see the module docstring)."""

    def __init__(self, path: Path, recheck_s: float = 1.0, clock=time.monotonic):
        self.path = Path(path)
        self.recheck_s = recheck_s
        self.clock = clock
        self._lock = threading.Lock()        # reloads only; lookups read plain dicts
        self._stat = _stat_key(self.path)
        self.file = read_tokens(self.path)   # a bad file at start is a ConfigError
        self._cache: dict = {}
        self._next_check = clock() + recheck_s
        self.reloads = 0

    @property
    def quotas(self) -> dict:
        self._maybe_reload()
        return self.file.quotas

    def __len__(self) -> int:
        return len(self.file.by_hash)

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``, or None (unknown or revoked)."""
        self._maybe_reload()
        p = self._cache.get(token)
        if p is not None:
            return p
        p = self.file.by_hash.get(hash_token(token))
        if p is not None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache = {}
            self._cache[token] = p
        return p

    def _maybe_reload(self) -> None:
        now = self.clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.recheck_s
            stat = _stat_key(self.path)
            if stat == self._stat:
                return
            self._stat = stat
            self._reload(stat)

    def _reload(self, stat) -> None:
        if stat is None:
            log.error("tokens file %s is gone: every call is refused UNAUTHENTICATED until it is back", self.path)
            self.file, self._cache = TokensFile.empty(), {}
            return
        try:
            fresh = read_tokens(self.path)
        except ConfigError as exc:
            log.error("%s; keeping the %d tokens read before", exc.message, len(self.file.by_hash))
            return
        self.file, self._cache = fresh, {}
        self.reloads += 1
        log.info("tokens file %s re-read: %d tokens, %d tenant quota overrides", self.path,
                 len(fresh.by_hash), len(fresh.quotas))


# -- the operator's side: mint, list, revoke (``yujing tokens``) ------------------------------
def _load_doc(path: Path) -> dict:
    if not Path(path).exists():
        return {"version": 1, "tokens": [], "quotas": {}}
    read_tokens(path)                         # refuse to rewrite a file that does not parse
    doc = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    doc.setdefault("version", 1)
    doc.setdefault("tokens", [])
    doc.setdefault("quotas", {})
    return doc


def _write_doc(path: Path, doc: dict) -> None:
    """Replace the file atomically (temp file in the same folder, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: Path, tenant: str, scope: str = "tenant", note: str = "") -> tuple[str, dict]:
    """Mint a token, store its hash in ``path``; returns (the token, its entry)."""
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}", "scope")
    if scope == "tenant" and not tenant:
        raise ConfigError("a tenant-scoped token needs --tenant", "tenant")
    doc = _load_doc(path)
    token = new_token()
    digest = hash_token(token)
    entry = {"id": digest[:12], "sha256": digest, "tenant": tenant if scope == "tenant" else "", "scope": scope,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": note}
    doc["tokens"].append(entry)
    _write_doc(path, doc)
    return token, entry


def revoke_tokens(path: Path, token_id: str | None = None, tenant: str | None = None) -> list[dict]:
    """Remove the entries with this id (or id prefix of at least 6 characters) or of this
    tenant; returns those removed."""
    if not token_id and not tenant:
        raise ConfigError("revoke needs --id or --tenant", "id")
    if token_id and len(token_id) < 6:
        raise ConfigError("--id: give at least 6 characters of the token's id", "id")
    doc = _load_doc(path)

    def gone(e):
        return (token_id and str(e.get("id", "")).startswith(token_id)) or (tenant and e.get("tenant") == tenant)

    removed = [e for e in doc["tokens"] if gone(e)]
    if removed:
        doc["tokens"] = [e for e in doc["tokens"] if not gone(e)]
        _write_doc(path, doc)
    return removed


def list_tokens(path: Path) -> list[dict]:
    return read_tokens(path).entries


def set_quota(path: Path, tenant: str, **limits) -> dict:
    """Set a tenant's quota overrides (the ones given; the others stay); returns them."""
    doc = _load_doc(path)
    q = {**doc["quotas"].get(tenant, {}), **{k: v for k, v in limits.items() if v is not None}}
    doc["quotas"][tenant] = q
    parse_tokens(json.dumps(doc), f"tokens file {path}")   # refuse a value the service would refuse
    _write_doc(path, doc)
    return q
