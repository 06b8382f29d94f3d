"""A watchdog that outlives the service on purpose, to remove what its Triton leaves.

Why: when the service is SIGKILLed, the kernel kills ``tritonserver`` with it
(PR_SET_PDEATHSIG), but not the Python-backend stub workers tritonserver started (one was
seen computing for 40 s, two holding 441 MB for over a minute), nor the stubs' shared-memory
regions in ``/dev/shm`` (5 MiB each), nor the server's run directory in ``/tmp`` (2.8 MB,
the copied backend). Nothing of the service runs after a SIGKILL, so the cleanup has to
live in another process that the kill does not reach.

How: :class:`Reaper` starts this file as its own process, in its own session (so a signal
to the service's process group does not reach it either), with ``stdin`` the read end of a
pipe whose write end only the service holds (close-on-exec, so tritonserver and the stubs
do not inherit it). It blocks reading; when the service exits, however it exits, the
kernel closes the write end, the read returns, and :func:`reap` runs: it SIGKILLs every
``tritonserver`` / ``triton_python_backend_stub`` whose command line holds the run's
shared-memory prefix (unique per server: ``yujing_<pid>_<random>``, in tritonserver's
``--backend-config`` and in every stub's arguments), removes ``/dev/shm/<prefix>*`` and the
given paths, and exits. A clean stop closes the pipe too: the reaper then finds nothing
left and exits at once.

This file uses the standard library only and is run as ``python -I -S reaper.py``, so it
starts in tens of milliseconds and does not depend on the service's environment.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Reaper", "reap", "triton_processes", "SHM_DIR"]

SHM_DIR = Path("/dev/shm")
TRITON_PROGRAMS = ("tritonserver", "triton_python_backend_stub")


def triton_processes(marker: str) -> list[int]:
    """Pids of the Triton programs (:data:`TRITON_PROGRAMS`) whose command line holds
    ``marker``, this process excluded."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if argv and os.path.basename(argv[0]).decode(errors="replace") in TRITON_PROGRAMS \
                and any(marker.encode() in a for a in argv[1:]):
            found.append(int(entry.name))
    return found


def kill_processes(marker: str, timeout_s: float = 5.0) -> int:
    """SIGKILL the Triton processes of ``marker`` until none is left (a dying server may
    still start a stub); returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        pids = triton_processes(marker)
        if not pids or time.monotonic() >= deadline:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)  # a killed process keeps its cmdline until it is a zombie


def remove_shm(prefix: str) -> int:
    """Unlink ``/dev/shm/<prefix>*``; returns how many were removed."""
    n = 0
    for path in SHM_DIR.glob(f"{prefix}*"):
        try:
            path.unlink()
            n += 1
        except OSError:
            pass
    return n


def reap(shm_prefix: str, paths: Iterable[str | Path] = ()) -> None:
    """Everything a Triton of ``shm_prefix`` leaves behind: its processes, its
    shared-memory regions, and ``paths`` (files or directories)."""
    kill_processes(shm_prefix)
    remove_shm(shm_prefix)
    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass


class Reaper:
    """The watchdog process for one Triton (see the module doc): :meth:`start` before the
    server starts, :meth:`close` after it stopped (then the reaper exits by itself)."""

    def __init__(self, shm_prefix: str, paths: Sequence[str | Path]) -> None:
        self.shm_prefix = shm_prefix
        self.paths = [str(p) for p in paths]
        self._proc: subprocess.Popen | None = None
        self._pipe: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "Reaper":
        if self.is_running():
            return self
        read_end, self._pipe = os.pipe()  # both close-on-exec: no other child inherits them
        try:
            cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--shm-prefix", self.shm_prefix]
            for p in self.paths:
                cmd += ["--remove", p]
            self._proc = subprocess.Popen(cmd, stdin=read_end, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except BaseException:
            os.close(self._pipe)
            self._pipe = None
            raise
        finally:
            os.close(read_end)
        return self

    def __del__(self) -> None:  # dropped without close(): let the watchdog reap now
        if getattr(self, "_pipe", None) is not None:
            os.close(self._pipe)
            self._pipe = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the pipe (the reaper reaps, finds nothing if all was stopped, and exits)
        and wait for it."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def _wait_for_eof() -> None:
    while True:
        try:
            if not os.read(0, 4096):
                return
        except InterruptedError:
            continue
        except OSError:  # stdin not a pipe any more: nothing to wait on
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reaper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shm-prefix", required=True)
    parser.add_argument("--remove", action="append", default=[])
    args = parser.parse_args(argv)
    # Asked to stop (SIGTERM, SIGHUP, SIGINT): clean up first, then go.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: (reap(args.shm_prefix, args.remove), os._exit(0)))
    _wait_for_eof()
    reap(args.shm_prefix, args.remove)
    return 0


if __name__ == "__main__":
    sys.exit(main())
