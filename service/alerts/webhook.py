"""The webhook sink: pushes each alert (JSON bytes, serialised by the caller) to an HTTP
endpoint as a POST, retrying transient failures, with a durable cursor for restarts.

Usage (inside the service's event loop)::

    sink = WebhookSink("https://tools.example/alerts", secret=b"...",
                       cursor_path=state / "webhook.cursor",
                       dead_letter_path=state / "webhook.dead.jsonl")
    # replay what the last run did not settle: every logged alert with id > sink.cursor
    sink.start()
    sink.offer(alert.id, body)          # non-blocking; False when the queue is full
    ...
    await sink.close(5.0)

Delivery
    One POST per attempt (a fresh HTTP/1.1 connection, ``Connection: close``), headers
    ``Content-Type: application/json``, ``User-Agent: yujing-webhook/<version>``,
    ``X-Yujing-Alert-Id``, ``X-Yujing-Attempt`` (1, 2, ...), ``X-Yujing-Timestamp``
    (unix seconds of that attempt) and, with a secret, ``X-Yujing-Signature:
    sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>``.

    2xx: delivered. 408, 429, 5xx, connection errors and timeouts (``timeout_s`` for the
    whole attempt): retried after an exponential backoff with jitter (``backoff_s * 2**(n-1)``
    scaled by a random factor in [0.5, 1], at most ``max_backoff_s``; a ``Retry-After``
    seconds header on 429/503 replaces it, bounded by ``max_backoff_s``), up to
    ``max_attempts`` attempts. Any other status (3xx, other 4xx): dead letter at once.
    After the last failed attempt: dead letter (counted; a JSON line
    ``{"id", "attempts", "last_error", "body"}`` appended to ``dead_letter_path``, the
    body as UTF-8 text).

    Alerts are delivered one at a time, in the order they were offered (ids increase), so a
    slow or failing receiver delays later alerts but never reorders them. Delivery is at
    least once: a receiver dedupes by ``X-Yujing-Alert-Id`` (a retry after a lost answer,
    or a replay after a restart, sends the same id again).

Cursor
    ``sink.cursor`` is the highest id delivered or dead-lettered (0: none), loaded from
    ``cursor_path`` at construction and written there (temp file + fsync + rename) at most
    about once a second and on close. After a restart the caller replays its durable alert
    log from it (ids > cursor); offers of ids at or below the cursor or the last accepted
    id are skipped (counted in ``skipped``), so an overlapping replay sends nothing twice.

Overflow
    ``offer`` never blocks: with ``queue_limit`` alerts waiting it returns False and counts
    ``dropped``. The alert stays in the durable alert log, and from the first drop on the
    cursor stops below the dropped id, so the next start re-delivers it (and the alerts
    after it, which the receiver dedupes) by replaying from the cursor.

Verifying a signature (receiver side)::

    ts = request.headers["X-Yujing-Timestamp"]
    sig = request.headers["X-Yujing-Signature"]           # "sha256=<hex>"
    if not verify_signature(secret, ts, raw_body, sig):   # tolerance 300 s
        return 401
    # by hand: hmac.compare_digest(sig, "sha256=" + hmac.new(secret,
    #     ts.encode() + b"." + raw_body, hashlib.sha256).hexdigest())
    # and abs(time.time() - int(ts)) <= 300 against replays

Counters for metrics: ``delivered``, ``attempts``, ``retries``, ``dead_letters``,
``dropped``, ``skipped``, ``queued`` (waiting, including the one in flight), ``last_error``.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import os
import random
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from yujing import __version__

USER_AGENT = f"yujing-webhook/{__version__}"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
RETRY_AFTER_STATUSES = frozenset({429, 503})
CURSOR_INTERVAL_S = 1.0
_MAX_HEADER_BYTES = 64 * 1024
_MAX_DISCARD_BYTES = 1 << 20       # response bodies are read and dropped up to this much


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Yujing-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``b"<ts>." + body``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, timestamp: int | str, body: bytes, header: str,
                     tolerance_s: float = 300, *, now: float | None = None) -> bool:
    """True when ``header`` (the ``X-Yujing-Signature`` value) signs ``body`` at
    ``timestamp`` (the ``X-Yujing-Timestamp`` value) with ``secret``, and the timestamp is
    within ``tolerance_s`` of now (a replayed old request fails)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    if not isinstance(header, str):
        return False
    return hmac.compare_digest(header.strip().encode(), sign(secret, ts, body).encode())


class _Transient(Exception):
    """A failed attempt worth retrying; ``delay`` overrides the backoff (Retry-After)."""

    def __init__(self, message: str, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class _Permanent(Exception):
    """A failed attempt not worth retrying (a 4xx other than 408/429, a 3xx)."""


class WebhookSink:
    def __init__(self, url: str, secret: bytes | None, *, max_attempts: int = 6,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, timeout_s: float = 5.0,
                 queue_limit: int = 10_000, cursor_path: Path | None = None,
                 dead_letter_path: Path | None = None, clock=time.time,
                 ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must be http:// or https:// with a host: {url!r}")
        if max_attempts < 1 or queue_limit < 1 or timeout_s <= 0:
            raise ValueError("max_attempts and queue_limit must be >= 1, timeout_s > 0")
        self.url = url
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = 443 if self._tls else 80
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.queue_limit = queue_limit
        self.cursor_path = Path(cursor_path) if cursor_path is not None else None
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path is not None else None
        self.clock = clock
        self._random = random.Random()

        self.delivered = 0
        self.attempts = 0
        self.retries = 0
        self.dead_letters = 0
        self.dropped = 0
        self.skipped = 0
        self.last_error: str | None = None

        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._closed = False
        self._settled = self._load_cursor()     # highest delivered-or-dead id
        self._accepted = self._settled          # highest id taken into the queue
        self._first_dropped: int | None = None
        self._written = self._settled
        self._last_write = float("-inf")
        self._flush_handle: asyncio.TimerHandle | None = None

    # -- the caller's side ---------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """Replay the alert log from here (ids > cursor) after a restart."""
        if self._first_dropped is not None:
            return min(self._settled, self._first_dropped - 1)
        return self._settled

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, alert_id: int, body: bytes) -> bool:
        """Queue one alert; never blocks. False (and ``dropped`` + 1) when the queue is full
        or the sink is closed: the alert log still holds it and a restart re-delivers it
        from the cursor. An id at or below one already accepted is skipped (True)."""
        alert_id = int(alert_id)
        if alert_id <= self._accepted:
            self.skipped += 1
            return True
        if self._closing or len(self._queue) >= self.queue_limit:
            self.dropped += 1
            if self._first_dropped is None:
                self._first_dropped = alert_id
            return False
        self._queue.append((alert_id, bytes(body)))
        self._accepted = alert_id
        self._wakeup.set()
        return True

    def start(self) -> None:
        """Start the delivery task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-sink")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking alerts, keep delivering what is queued (the attempt in flight and
        those after it, retries included) for up to ``timeout_s``, then cancel the rest (it
        stays above the cursor) and persist the cursor."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._write_cursor()

    # -- delivery --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            alert_id, body = self._queue[0]
            await self._deliver(alert_id, body)
            self._queue.popleft()
            self._settle(alert_id)

    async def _deliver(self, alert_id: int, body: bytes) -> None:
        error = "no attempt"
        for attempt in range(1, self.max_attempts + 1):
            self.attempts += 1
            if attempt > 1:
                self.retries += 1
            try:
                await asyncio.wait_for(self._post(alert_id, attempt, body), self.timeout_s)
                self.delivered += 1
                return
            except asyncio.TimeoutError:
                error, delay = f"timeout after {self.timeout_s:g} s", None
            except _Permanent as exc:
                self.last_error = str(exc)
                self._dead_letter(alert_id, attempt, str(exc), body)
                return
            except _Transient as exc:
                error, delay = str(exc), exc.delay
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                error, delay = f"{type(exc).__name__}: {exc}", None
            self.last_error = error
            if attempt < self.max_attempts:
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay)
        self._dead_letter(alert_id, self.max_attempts, error, body)

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return base * self._random.uniform(0.5, 1.0)

    def _headers(self, alert_id: int, attempt: int, body: bytes) -> bytes:
        ts = int(self.clock())
        lines = [
            f"POST {self._target} HTTP/1.1",
            f"Host: {self._host_header}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"User-Agent: {USER_AGENT}",
            f"X-Yujing-Alert-Id: {alert_id}",
            f"X-Yujing-Attempt: {attempt}",
            f"X-Yujing-Timestamp: {ts}",
        ]
        if self.secret is not None:
            lines.append(f"X-Yujing-Signature: {sign(self.secret, ts, body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _post(self, alert_id: int, attempt: int, body: bytes) -> None:
        """One attempt; returns on 2xx, raises _Transient/_Permanent/OSError otherwise."""
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._tls else None)
        try:
            writer.write(self._headers(alert_id, attempt, body) + body)
            await writer.drain()
            while True:
                status, headers = await _read_head(reader)
                if not 100 <= status < 200:
                    break               # 1xx interim answers (100 Continue) are skipped
            try:
                await _discard_body(reader, status, headers)
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError):
                pass                    # the status decides; the connection closes anyway
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        if 200 <= status < 300:
            return
        message = f"HTTP {status}"
        if status in RETRY_STATUSES:
            delay = None
            if status in RETRY_AFTER_STATUSES:
                delay = _retry_after(headers.get("retry-after"), self.max_backoff_s)
            raise _Transient(message, delay)
        raise _Permanent(message)

    # -- bookkeeping -----------------------------------------------------------------------

    def _dead_letter(self, alert_id: int, attempts: int, error: str, body: bytes) -> None:
        self.dead_letters += 1
        if self.dead_letter_path is None:
            return
        line = json.dumps({"id": alert_id, "attempts": attempts, "last_error": error,
                           "body": body.decode("utf-8", errors="replace")},
                          ensure_ascii=False)
        with open(self.dead_letter_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _settle(self, alert_id: int) -> None:
        self._settled = max(self._settled, alert_id)
        if self.cursor_path is None or self._flush_handle is not None:
            return
        wait = self._last_write + CURSOR_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._write_cursor()
        else:
            self._flush_handle = asyncio.get_running_loop().call_later(wait, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_handle = None
        self._write_cursor()

    def _load_cursor(self) -> int:
        if self.cursor_path is None or not self.cursor_path.exists():
            return 0
        text = self.cursor_path.read_text().strip()
        return int(text) if text else 0

    def _write_cursor(self) -> None:
        cursor = self.cursor
        if self.cursor_path is None or cursor == self._written:
            return
        tmp = self.cursor_path.with_name(f".{self.cursor_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{cursor}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cursor_path)
        self._written = cursor
        self._last_write = time.monotonic()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status line and headers (names lower-cased; repeats joined with ", ")."""
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("connection closed before a response")
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    size = len(status_line)
    while True:
        line = await reader.readline()
        size += len(line)
        if size > _MAX_HEADER_BYTES:
            raise ValueError("response headers too large")
        if not line:
            raise EOFError("connection closed in the response headers")
        if line in (b"\r\n", b"\n"):
            return status, headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value


async def _discard_body(reader: asyncio.StreamReader, status: int, headers: dict) -> None:
    """Read and drop the response body: chunked, Content-Length or up to EOF (bounded)."""
    if status in (204, 304):
        return
    budget = _MAX_DISCARD_BYTES
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while budget > 0:
            size_line = await reader.readline()
            if not size_line:
                raise EOFError("connection closed in a chunk")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass                # trailers
                return
            await reader.readexactly(size + 2)
            budget -= size
        return
    length = headers.get("content-length")
    if length is not None:
        remaining = min(int(length), budget)
        while remaining > 0:
            chunk = await reader.read(min(remaining, 65536))
            if not chunk:
                raise EOFError("connection closed in the body")
            remaining -= len(chunk)
        return
    while budget > 0:                   # no length: the server closes the connection
        chunk = await reader.read(65536)
        if not chunk:
            return
        budget -= len(chunk)


def _retry_after(value: str | None, limit: float) -> float | None:
    """A Retry-After in seconds, bounded to [0, limit]; None when absent or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds:              # NaN
        return None
    return min(max(seconds, 0.0), limit)
