"""The tests' ways to run a real service: in a background thread (:class:`ServiceThread`),
or as the ``yujing serve`` command (:class:`ServeProcess`), reached over real gRPC."""
from __future__ import annotations

from yujing.service.background import LoopbackClient, ServiceThread  # noqa: F401 (ServiceThread: the tests' in-process service)
from yujing.service.contract import pb


def state_copy(svc) -> tuple:
    """Copies of a ServiceThread's whole state (tables, slot indexes, answer cache size):
    a refused call must leave it unchanged (:func:`assert_same_state`)."""
    def grab(srv):
        t = srv.table
        return ({k: v.copy() for k, v in t.state.items()}, {k: v.copy() for k, v in t.agents.items()},
                dict(t.sessions.slot_of), dict(t.agent_index.slot_of), len(srv.engine.answers._d))
    return svc.call(grab)


def assert_same_state(a, b) -> None:
    import numpy as np

    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)
    assert a[2:] == b[2:]


def turn(session="s1", turn_id="1", text="hello", speaker=pb.CUSTOMER, ts=0, **kw) -> pb.Turn:
    return pb.Turn(session_id=session, turn_id=turn_id, text=text, speaker=speaker, timestamp_ms=ts, **kw)


class ServeProcess(LoopbackClient):
    """``yujing serve`` as a child process on a free port (the port read from its
    ready line), for tests that need the real command with its embedded Triton."""

    def __init__(self, *args: str, timeout_s: float = 240.0, command: list[str] | None = None,
                 cwd: str | None = None, env: dict | None = None):
        import os
        import re
        import subprocess
        import sys
        import tempfile
        import time

        self.log = tempfile.NamedTemporaryFile("w+", prefix="yujing-serve-", suffix=".log", delete=False)
        self._own_dir = "--data-dir" not in args
        if self._own_dir:               # never the user's default state directory
            args = ("--data-dir", tempfile.mkdtemp(prefix="yujing-state-"), *args)
        self.data_dir = args[args.index("--data-dir") + 1]
        cmd = [*(command or [sys.executable, "-m", "yujing.cli"]), "serve", "--port", "0", "--triton-port", "0",
               *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
        if self._own_dir:
            import shutil

            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode
