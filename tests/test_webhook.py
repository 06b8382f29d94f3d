"""The webhook sink against a real HTTP receiver (http.server in a thread, 127.0.0.1)."""
import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import yujing
from yujing.service.alerts import webhook
from yujing.service.alerts.webhook import WebhookSink, sign, verify_signature

SECRET = b"s3cret-for-tests"
NOW = 1_700_000_000


class Receiver:
    """Records (path, headers, body, arrival monotonic time) of every request; ``respond``
    maps (index of the request, headers) to (status, extra headers, delay before answering,
    response body)."""

    def __init__(self, respond=None):
        self.requests = []
        self.respond = respond or (lambda i, h: (200, {}, 0.0, b"ok"))
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    index = len(receiver.requests)
                    receiver.requests.append((self.path, dict(self.headers), body, time.monotonic()))
                status, headers, delay, payload = receiver.respond(index, self.headers)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if headers.get("Transfer-Encoding") == "chunked":
                        self.end_headers()
                        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                except OSError:
                    pass                    # the sink gave up on this one (timeout)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?tenant=t1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(respond=None):
        r = Receiver(respond)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def _body(i):
    return json.dumps({"id": i, "kind": "LEVEL_RISE", "summary_zh": "风险上升"},
                      ensure_ascii=False).encode()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_delivers_each_alert_once_in_order_signed(receiver_factory):
    rec = receiver_factory()

    async def main():
        sink = WebhookSink(rec.url, SECRET, clock=lambda: NOW + 0.7)
        sink.start()
        for i in range(1, 6):
            assert sink.offer(i, _body(i))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert sink.delivered == 5 and sink.attempts == 5 and sink.retries == 0
    assert sink.dead_letters == 0 and sink.queued == 0 and sink.last_error is None
    assert sink.cursor == 5
    assert [int(h["X-Yujing-Alert-Id"]) for _, h, _, _ in rec.requests] == [1, 2, 3, 4, 5]
    for i, (path, h, body, _) in enumerate(rec.requests, start=1):
        assert path == "/hook?tenant=t1"
        assert body == _body(i)
        assert h["Content-Type"] == "application/json"
        assert h["User-Agent"] == f"yujing-webhook/{yujing.__version__}"
        assert h["X-Yujing-Attempt"] == "1"
        assert h["X-Yujing-Timestamp"] == str(NOW)
        assert h["Content-Length"] == str(len(body))
        sig = h["X-Yujing-Signature"]
        assert verify_signature(SECRET, h["X-Yujing-Timestamp"], body, sig, now=NOW + 1)
        expected = hmac.new(SECRET, f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()
        assert sig == f"sha256={expected}"


def test_no_secret_no_signature_and_chunked_answer(receiver_factory):
    rec = receiver_factory(lambda i, h: (200, {"Transfer-Encoding": "chunked"}, 0.0, b"fine"))

    async def main():
        sink = WebhookSink(rec.url, None)
        sink.start()
        sink.offer(7, b"{}")
        await sink.close(5)
        return sink

    sink = _run(main())
    assert sink.delivered == 1 and sink.attempts == 1
    (_, h, body, _), = rec.requests
    assert "X-Yujing-Signature" not in h and body == b"{}"
    assert abs(int(h["X-Yujing-Timestamp"]) - time.time()) < 5


def test_503_twice_then_200_retries(receiver_factory):
    rec = receiver_factory(lambda i, h: (503 if i < 2 else 200, {}, 0.0, b""))

    async def main():
        sink = WebhookSink(rec.url, SECRET, backoff_s=0.01)
        sink.start()
        sink.offer(1, _body(1))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert [h["X-Yujing-Attempt"] for _, h, _, _ in rec.requests] == ["1", "2", "3"]
    assert all(h["X-Yujing-Alert-Id"] == "1" and b == _body(1) for _, h, b, _ in rec.requests)
    for _, h, b, _ in rec.requests:            # each attempt signed afresh
        assert verify_signature(SECRET, h["X-Yujing-Timestamp"], b, h["X-Yujing-Signature"])
    assert sink.delivered == 1 and sink.retries == 2 and sink.attempts == 3
    assert sink.dead_letters == 0 and sink.last_error == "HTTP 503" and sink.cursor == 1


@pytest.mark.parametrize("status,retry_after,max_backoff,low,high", [
    (429, "1", 30.0, 0.95, 3.0),              # honoured
    (503, "100", 0.2, 0.18, 0.9),             # bounded by max_backoff_s
])
def test_retry_after(receiver_factory, status, retry_after, max_backoff, low, high):
    rec = receiver_factory(
        lambda i, h: (status, {"Retry-After": retry_after}, 0.0, b"") if i == 0 else (200, {}, 0.0, b""))

    async def main():
        sink = WebhookSink(rec.url, SECRET, backoff_s=0.01, max_backoff_s=max_backoff)
        sink.start()
        sink.offer(1, _body(1))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert sink.delivered == 1 and sink.retries == 1
    gap = rec.requests[1][3] - rec.requests[0][3]
    assert low <= gap <= high


def test_400_dead_letter_at_once(receiver_factory, tmp_path):
    rec = receiver_factory(lambda i, h: (400 if h["X-Yujing-Alert-Id"] == "1" else 200, {}, 0.0, b"bad"))
    dead = tmp_path / "dead.jsonl"

    async def main():
        sink = WebhookSink(rec.url, SECRET, backoff_s=0.01, dead_letter_path=dead)
        sink.start()
        sink.offer(1, _body(1))
        sink.offer(2, _body(2))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert [h["X-Yujing-Alert-Id"] for _, h, _, _ in rec.requests] == ["1", "2"]
    assert sink.dead_letters == 1 and sink.retries == 0 and sink.delivered == 1
    assert sink.last_error == "HTTP 400" and sink.cursor == 2
    (line,) = dead.read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == {"id": 1, "attempts": 1, "last_error": "HTTP 400",
                                "body": _body(1).decode()}


def test_receiver_down_dead_letter_after_max_attempts(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    dead = tmp_path / "dead.jsonl"

    async def main():
        sink = WebhookSink(f"http://127.0.0.1:{port}/", SECRET, max_attempts=3, backoff_s=0.01,
                           dead_letter_path=dead)
        sink.start()
        sink.offer(1, _body(1))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert sink.attempts == 3 and sink.retries == 2 and sink.delivered == 0
    assert sink.dead_letters == 1 and sink.cursor == 1
    assert sink.last_error and "Connect" in sink.last_error
    rec = json.loads(dead.read_text())
    assert rec["id"] == 1 and rec["attempts"] == 3 and rec["last_error"] == sink.last_error


def test_receiver_never_answers_is_a_timeout_then_retried(receiver_factory):
    rec = receiver_factory(lambda i, h: (200, {}, 1.0 if i == 0 else 0.0, b""))

    async def main():
        sink = WebhookSink(rec.url, SECRET, timeout_s=0.2, backoff_s=0.01)
        sink.start()
        sink.offer(1, _body(1))
        t0 = time.monotonic()
        await sink.close(5)
        return sink, time.monotonic() - t0

    sink, took = _run(main())
    assert [h["X-Yujing-Attempt"] for _, h, _, _ in rec.requests] == ["1", "2"]
    assert sink.delivered == 1 and sink.attempts == 2 and sink.retries == 1
    assert sink.last_error.startswith("timeout")
    assert took < 0.9                           # did not wait for the slow answer


def test_cursor_written_atomically_and_throttled(receiver_factory, tmp_path, monkeypatch):
    rec = receiver_factory(lambda i, h: (400 if h["X-Yujing-Alert-Id"] == "20" else 200, {}, 0.0, b""))
    cursor = tmp_path / "webhook.cursor"
    replaced = []
    real_replace = webhook.os.replace

    def spy(src, dst):
        replaced.append((str(src), str(dst), open(src).read()))
        real_replace(src, dst)

    monkeypatch.setattr(webhook.os, "replace", spy)

    async def main():
        sink = WebhookSink(rec.url, SECRET, cursor_path=cursor)
        sink.start()
        for i in range(1, 21):                  # the last one dead-lettered (400)
            sink.offer(i, _body(i))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert sink.delivered == 19 and sink.dead_letters == 1 and sink.cursor == 20
    assert cursor.read_text() == "20\n"
    assert 1 <= len(replaced) <= 3             # at most ~1/s, plus the one on close
    assert all(dst == str(cursor) and src != dst for src, dst, _ in replaced)
    assert replaced[-1][2] == "20\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhook.cursor"]   # no temp left

    async def restart():                        # a new sink resumes from the file
        sink = WebhookSink(rec.url, SECRET, cursor_path=cursor)
        assert sink.cursor == 20
        sink.start()
        assert sink.offer(20, _body(20))        # replay overlap: skipped, not re-sent
        assert sink.offer(21, _body(21))
        await sink.close(5)
        return sink

    before = len(rec.requests)
    sink2 = _run(restart())
    assert sink2.skipped == 1 and sink2.delivered == 1
    assert [h["X-Yujing-Alert-Id"] for _, h, _, _ in rec.requests[before:]] == ["21"]
    assert cursor.read_text() == "21\n"


def test_cursor_flushed_by_the_timer_without_close(receiver_factory, tmp_path):
    rec = receiver_factory()
    cursor = tmp_path / "c"

    async def main():
        sink = WebhookSink(rec.url, SECRET, cursor_path=cursor)
        sink.start()
        sink.offer(1, _body(1))                 # first write at once
        while sink.delivered < 1:
            await asyncio.sleep(0.01)
        sink.offer(2, _body(2))                 # within the second: deferred
        while sink.delivered < 2:
            await asyncio.sleep(0.01)
        early = cursor.read_text()
        await asyncio.sleep(1.2)
        late = cursor.read_text()
        await sink.close(5)
        return early, late

    early, late = _run(main())
    assert (early, late) == ("1\n", "2\n")


def test_queue_overflow_counts_dropped_and_holds_the_cursor(receiver_factory, tmp_path):
    rec = receiver_factory()
    cursor = tmp_path / "c"

    async def main():
        sink = WebhookSink(rec.url, SECRET, queue_limit=2, cursor_path=cursor)
        assert sink.offer(1, _body(1)) and sink.offer(2, _body(2))
        assert sink.offer(3, _body(3)) is False  # full: dropped, stays in the alert log
        assert sink.dropped == 1 and sink.queued == 2
        sink.start()
        while sink.delivered < 2:
            await asyncio.sleep(0.01)
        assert sink.offer(4, _body(4))
        await sink.close(5)
        return sink

    sink = _run(main())
    assert [h["X-Yujing-Alert-Id"] for _, h, _, _ in rec.requests] == ["1", "2", "4"]
    assert sink.delivered == 3 and sink.dropped == 1
    assert sink.cursor == 2 and cursor.read_text() == "2\n"   # a restart replays from 3
    assert sink.offer(5, b"{}") is False        # closed


def test_verify_signature_rejects():
    body = _body(1)
    header = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, NOW, body, header, now=NOW + 10)
    assert verify_signature(SECRET, str(NOW), body, header, now=NOW - 299)
    assert not verify_signature(b"other", NOW, body, header, now=NOW)          # wrong secret
    assert not verify_signature(SECRET, NOW, body + b" ", header, now=NOW)     # changed body
    assert not verify_signature(SECRET, NOW + 1, body, header, now=NOW)        # changed ts
    assert not verify_signature(SECRET, NOW, body, header, now=NOW + 301)      # stale
    assert not verify_signature(SECRET, NOW, body, header, tolerance_s=5, now=NOW + 6)
    assert not verify_signature(SECRET, "x", body, header, now=NOW)
    assert not verify_signature(SECRET, NOW, body, header[:-1], now=NOW)
    assert verify_signature(SECRET, int(time.time()), body, sign(SECRET, int(time.time()), body))


def test_response_parser_chunked_length_and_interim():
    async def parse(raw):
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        status, headers = await webhook._read_head(reader)
        while 100 <= status < 200:
            status, headers = await webhook._read_head(reader)
        await webhook._discard_body(reader, status, headers)
        return status, headers, await reader.read()

    st, h, rest = asyncio.run(parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n"
        b"Retry-After: 3\r\n\r\n4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\nT: 1\r\n\r\nNEXT"))
    assert (st, h["retry-after"], rest) == (202, "3", b"NEXT")
    st, h, rest = asyncio.run(parse(b"HTTP/1.1 503 Busy\r\nContent-Length: 3\r\n\r\nabcNEXT"))
    assert (st, rest) == (503, b"NEXT")
    with pytest.raises(ValueError):
        asyncio.run(parse(b"SMTP ready\r\n\r\n"))
    assert webhook._retry_after("7", 5.0) == 5.0 and webhook._retry_after("2", 5.0) == 2.0
    assert webhook._retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 5.0) is None
