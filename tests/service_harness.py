"""A real service in a background thread (its own uvloop event loop), reached over
real gRPC on a free port, for the tests."""
from __future__ import annotations

import asyncio
import threading

import grpc

from service.config import Config
from service.contract import pb, pb_grpc


class ServiceThread:
    def __init__(self, config: Config):
        self.config = config
        self.loop = None
        self.srv = None
        self.port = None
        self._ready = threading.Event()
        self._error = None
        self._stop = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="yujing-test-service")

    def _run(self):
        import uvloop

        async def main():
            from service.server import create_server

            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.srv, self.port = await create_server(self.config)
            except BaseException as exc:  # surfaced in start()
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.srv.stop(self.config.grace_s)

        uvloop.run(main())

    def start(self, timeout_s: float = 180.0) -> "ServiceThread":
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("service did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, *args):
        """Run ``fn(srv, *args)`` on the service's loop (for white-box checks)."""
        async def go():
            return fn(self.srv, *args)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)

    def stop(self):
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def stub(self) -> pb_grpc.RiskScorerStub:
        return pb_grpc.RiskScorerStub(self.channel())


def turn(session="s1", turn_id="1", text="hello", speaker=pb.CUSTOMER, ts=0, **kw) -> pb.Turn:
    return pb.Turn(session_id=session, turn_id=turn_id, text=text, speaker=speaker, timestamp_ms=ts, **kw)


class ServeProcess:
    """``yujing serve`` as a child process on a free port (the port read from its
    ready line), for tests that need the real command with its embedded Triton."""

    def __init__(self, *args: str, timeout_s: float = 240.0):
        import os
        import re
        import subprocess
        import sys
        import tempfile
        import time

        self.log = tempfile.NamedTemporaryFile("w+", prefix="yujing-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--triton-port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        deadline = time.monotonic() + timeout_s
        self.port = None
        while time.monotonic() < deadline:
            text = open(self.log.name).read()
            m = re.search(r"yujing serving on [\d.]+:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"yujing serve exited {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.2)
        if self.port is None:
            self.stop()
            raise TimeoutError(f"yujing serve not ready in {timeout_s} s:\n{open(self.log.name).read()[-4000:]}")

    def stub(self) -> pb_grpc.RiskScorerStub:
        return pb_grpc.RiskScorerStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))

    def output(self) -> str:
        return open(self.log.name).read()

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
