"""A real service on its own uvloop event loop in a background thread, reached over real
gRPC on a free port: for the tests, the conversation evaluator and notebooks::

    with ServiceThread(Config(port=0, models="in-process")) as svc:
        answer = svc.stub().Score(turn)
"""
from __future__ import annotations

import asyncio
import threading

import grpc

from yujing.service.config import Config
from yujing.service.contract import pb_grpc


class LoopbackClient:
    """Channels and stubs to a service listening on ``self.port`` on loopback: shared by
    :class:`ServiceThread` and the tests' ``ServeProcess``."""
    port: int | None

    def channel(self, **secure) -> grpc.Channel:
        """A channel to the service; ``secure``: open_channel's token, tls_ca, tls_cert, tls_key,
        server_name (service/security/client.py)."""
        if not secure:
            return grpc.insecure_channel(f"127.0.0.1:{self.port}")
        from yujing.service.security.client import open_channel

        return open_channel(f"127.0.0.1:{self.port}", **secure)

    def stub(self, **secure) -> pb_grpc.RiskScorerStub:
        return pb_grpc.RiskScorerStub(self.channel(**secure))

    def alerts(self, **secure) -> pb_grpc.AlertsStub:
        return pb_grpc.AlertsStub(self.channel(**secure))


class ServiceThread(LoopbackClient):
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
            from yujing.service.server import create_server

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
            await self.srv.stop(self.config.drain_s)

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

    def __enter__(self) -> "ServiceThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
