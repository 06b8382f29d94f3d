"""Start and stop a local Triton Inference Server on our model repository.

The server is the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel
(Linux x86-64 only; ``pip install yujing[triton]``), or any Triton installation given
by ``tritonserver_root`` (the GPU image's ``/opt/tritonserver``). It runs in explicit
model-control mode on 127.0.0.1 and free ports, logs to a file, and dies with us.

Locked down (:mod:`yujing.service.triton.access`): the model-repository, shared-memory,
trace and logging protocols (gRPC, and HTTP when it is on) refuse any call without a
header whose value is random per start; :attr:`TritonServer.key` holds it and
:attr:`TritonServer.key_file` (0600) lets a local operator's ``yujing models deploy`` send
it. Without that, anything on the host could load a model with uploaded Python and run it
as us, or unload our models. Every endpoint (gRPC, HTTP, metrics) binds ``host``, which
must be a loopback address unless ``allow_remote`` says otherwise.

Leaves nothing behind (:mod:`yujing.service.triton.reaper`): a watchdog process, started
with the server and outliving us by design, kills the server's processes and removes its
shared-memory regions, run directory and key file as soon as we exit, SIGKILL included;
each start also sweeps what a dead owner's servers left (the watchdog killed too, say).

    >>> with TritonServer("model_repo", models=["sentiment"]) as server:   # doctest: +SKIP
    ...     server.grpc_url
    '127.0.0.1:40123'

Why a per-run backend directory: the wheel keeps the Python backend in
``pytriton/tritonserver/backends/python`` but its stub, which embeds the Python the
models run on, one per Python version, in ``python_backend_stubs/<X.Y>/``. The backend
looks for the stub beside itself, so each server gets a private copy of the backend
folder with the right stub; the wheel is never written to, and concurrent servers
(other tests, other Python versions) cannot trip over each other.

The stub embeds the *system* libpython of that version, in isolated mode: it ignores
``PYTHONPATH`` and takes its prefix from the first ``python3`` on ``PATH``. The launcher
puts this interpreter's folder first on ``PATH`` (so a venv's site-packages are found)
and sets ``PYTHONPATH`` (site-packages, extras), which the backend module
(:mod:`yujing.service.triton.backend`) prepends to ``sys.path`` before it imports any
plug-in artifact loader; ``yujing`` itself is found as an installed package.
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from yujing.service.triton.access import RESTRICTED, TritonKey, new_key, write_key_file
from yujing.service.triton.reaper import SHM_DIR, Reaper, reap, remove_shm

__all__ = [
    "TritonServer",
    "TritonServerError",
    "TritonNotInstalledError",
    "TritonInstallation",
    "find_installation",
    "discover_models",
]

_PR_SET_PDEATHSIG = 1


class TritonServerError(RuntimeError):
    """The Triton server could not be started, or died; the message carries its log tail."""


class TritonNotInstalledError(TritonServerError):
    """No usable ``tritonserver``: the wheel is missing or the platform is not supported."""


@dataclass(frozen=True)
class TritonInstallation:
    """Where a Triton build lives: the binary, its backends, caches and shared libraries."""

    binary: Path
    backends: Path
    caches: Path | None
    libs: tuple[Path, ...]
    stub: Path | None  # the Python backend stub to place beside the backend; None: already there


def find_installation(tritonserver_root: str | Path | None = None) -> TritonInstallation:
    """Locate ``tritonserver``: ``tritonserver_root`` (or ``$YUJING_TRITONSERVER_ROOT``) if
    given, else the one inside the installed ``nvidia-pytriton`` wheel."""
    root = tritonserver_root or os.environ.get("YUJING_TRITONSERVER_ROOT")
    if root:
        root = Path(root)
        binary = root / "bin" / "tritonserver"
        if not binary.is_file():
            raise TritonNotInstalledError(f"{binary} does not exist (tritonserver_root={root})")
        caches = root / "caches"
        return TritonInstallation(binary, root / "backends", caches if caches.is_dir() else None,
                                  (root / "lib",), None)

    if not (sys.platform.startswith("linux") and _machine() in ("x86_64", "amd64")):
        raise TritonNotInstalledError(
            f"the embedded Triton server runs on Linux x86-64 only (this is {sys.platform}/{_machine()}); "
            "point --triton-url at a running Triton instead, or run without Triton (in-process models)")
    try:
        import pytriton  # noqa: F401  (nvidia-pytriton)
    except ImportError as exc:
        raise TritonNotInstalledError(
            "nvidia-pytriton is not installed, so there is no embedded tritonserver: "
            "install the 'triton' extra (pip install 'yujing[triton]'), point --triton-url at a "
            "running Triton, or run without Triton (in-process models)") from exc
    pkg = Path(pytriton.__file__).resolve().parent
    server_dir = pkg / "tritonserver"
    binary = server_dir / "bin" / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not binary.is_file():
        raise TritonNotInstalledError(f"nvidia-pytriton at {pkg} has no tritonserver binary ({binary})")
    if not stub.is_file():
        have = sorted(p.name for p in (server_dir / "python_backend_stubs").glob("*"))
        raise TritonNotInstalledError(
            f"nvidia-pytriton ships no Python backend stub for Python {py} (it has: {', '.join(have)})")
    libs = tuple(p for p in (pkg.parent / "nvidia_pytriton.libs",) if p.is_dir())
    caches = server_dir / "caches"
    return TritonInstallation(binary, server_dir / "backends", caches if caches.is_dir() else None,
                              libs, stub)


def _machine() -> str:
    return os.uname().machine.lower() if hasattr(os, "uname") else ""


def discover_models(model_repository: str | Path) -> list[str]:
    """Models in a repository that can be loaded: a ``config.pbtxt`` and at least one
    numeric version folder with a ``model.py`` and an ``artifact/model.json``; and a
    combined model (``heads``: a ``members`` parameter, no artifact of its own) when one of
    its members can be."""
    from yujing.service.triton.heads import members_of

    repo = Path(model_repository)
    found, combined = [], {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        model_dir = cfg.parent
        for version in model_dir.iterdir():
            if not (version.name.isdigit() and (version / "model.py").is_file()):
                continue
            if (version / "artifact" / "model.json").is_file():
                found.append(model_dir.name)
                break
            members = members_of(model_dir)
            if members:
                combined[model_dir.name] = members
                break
    return found + [name for name, members in combined.items() if any(m in found for m in members)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _accepts_connections(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            return True
    except OSError:
        return False


def model_pythonpath(extra: Iterable[str | Path] = ()) -> list[str]:
    """The ``PYTHONPATH`` the model code needs inside the stub's embedded Python."""
    paths: list[str] = [str(p) for p in extra]
    for key in ("purelib", "platlib"):
        paths.append(sysconfig.get_paths()[key])
    paths.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


class _Spawner:
    """The one thread that forks servers. PR_SET_PDEATHSIG fires when the *thread* that
    forked exits, not the process; forking from this daemon thread, which lives as long as
    the process, lets callers start servers from short-lived threads (an executor), and
    leaves the graceful stop to the atexit hook."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="yujing-triton-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, args, kwargs, fut = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    fut.set_exception(exc)

    def submit(self, fn, *args, **kwargs) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, kwargs, fut))
        return fut


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()
_RUNNING: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


def _spawner() -> _Spawner:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = _Spawner()
        return _SPAWNER


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(grace_s=5.0)
        server.close()


_RUN_DIR_PREFIX = "yujing-triton-"
_SHM_PREFIX = "yujing_"


def _shm_prefix_of(pid: int) -> str:
    """The shared-memory prefix of every server an owner process ``pid`` starts."""
    return f"{_SHM_PREFIX}{pid}_"


def _owner_dead(pid: str) -> bool:
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    return False


def _sweep_stale_debris() -> None:
    """What servers of a dead owner left, when their watchdog could not remove it (it
    was killed too): run directories ``yujing-triton-<pid>-<random>``, shared-memory
    regions ``yujing_<pid>_*``, and Triton processes still running with that prefix.
    Only a dead owner pid's are touched."""
    dirs: dict[str, list[Path]] = {}
    for d in Path(tempfile.gettempdir()).glob(f"{_RUN_DIR_PREFIX}*-*"):
        dirs.setdefault(d.name[len(_RUN_DIR_PREFIX):].split("-", 1)[0], []).append(d)
    for region in SHM_DIR.glob(f"{_SHM_PREFIX}*_*"):
        dirs.setdefault(region.name[len(_SHM_PREFIX):].split("_", 1)[0], [])
    for pid, paths in dirs.items():
        if _owner_dead(pid):
            reap(_shm_prefix_of(int(pid)), paths)


# Runs in the child, after spawn, before tritonserver: asks the kernel to SIGKILL the child
# when the spawner thread goes away (PR_SET_PDEATHSIG survives exec), then execs the server.
# It is a separate interpreter rather than a Popen preexec_fn on purpose: a preexec_fn forces
# fork() instead of vfork(), fork() runs gRPC's at-fork handlers in the child, and gRPC's
# restarted poller thread then aborts the child (SIGABRT, "epoll_wait error: Bad file
# descriptor") once close_fds closes its epoll descriptor. Seen once in CI while the test
# process had gRPC calls in flight. With no preexec_fn, Popen uses vfork(): no handlers run.
_EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL('libc.so.6', use_errno=True)\n"
    f"libc.prctl({_PR_SET_PDEATHSIG}, {int(signal.SIGKILL)}, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"  # the parent died before prctl took effect
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _die_with_parent(cmd: Sequence[str]) -> list[str]:
    """``cmd`` wrapped so the child is SIGKILLed when the spawning thread goes away."""
    return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid()), *cmd]


class TritonServer:
    """A ``tritonserver`` child process serving ``model_repository``.

    Args:
        model_repository: the Triton model repository (``model_repo/``).
        models: models to load at start (``--load-model``); None: every loadable model
            (:func:`discover_models`). More can be loaded later through the repository API.
        grpc_port, http_port, metrics_port: 0 picks a free port at the first start; the
            ports are kept across :meth:`restart` so clients can reconnect.
        allow_http, allow_metrics: serve the HTTP endpoint and the Prometheus metrics.
        host: the address every endpoint binds to: loopback (127.0.0.1, ::1) unless
            ``allow_remote``.
        allow_remote: allow a non-loopback ``host`` (the restricted protocols still need
            the key, but inference and metadata are open to whoever reaches the port).
        key_file: where each start writes the key (``<name>=<value>``, 0600); default: in
            the run directory.
        log_path: the server's log (stdout and stderr); default: in the run directory.
        tritonserver_root: use this Triton installation instead of the wheel's.
        extra_args: more ``tritonserver`` flags.
        extra_pythonpath: more folders for the model code's ``PYTHONPATH``.
        env: more environment variables for the server (and the model code).
        startup_timeout_s: how long :meth:`start` waits for readiness.

    Use as a context manager, or call :meth:`start` / :meth:`stop` yourself.
    """

    def __init__(
        self,
        model_repository: str | Path,
        models: Sequence[str] | None = None,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        allow_http: bool = True,
        allow_metrics: bool = True,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        tritonserver_root: str | Path | None = None,
        extra_args: Sequence[str] = (),
        extra_pythonpath: Sequence[str | Path] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 60.0,
        verbose: int = 0,
        allow_remote: bool = False,
        key_file: str | Path | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} is not a directory")
        self.models = list(models) if models is not None else discover_models(self.model_repository)
        if not allow_remote and not _is_loopback(host):
            raise TritonServerError(f"host {host!r} is not a loopback address: the embedded Triton serves "
                                    "this host only (allow_remote=True to override)")
        self.host = host
        self.key: TritonKey | None = None  # new at every start: the restricted protocols' key
        self._user_key_file = Path(key_file) if key_file else None
        self._reaper: Reaper | None = None
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.allow_http = allow_http
        self.allow_metrics = allow_metrics
        self.extra_args = list(extra_args)
        self.extra_pythonpath = list(extra_pythonpath)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.verbose = verbose
        self._tritonserver_root = tritonserver_root
        self._installation: TritonInstallation | None = None
        self._run_dir: Path | None = None
        self._user_log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._shm_prefix = f"{_shm_prefix_of(os.getpid())}{uuid.uuid4().hex[:8]}"

    # -- public surface ---------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        if self._user_log_path is not None:
            return self._user_log_path
        return self._ensure_run_dir() / "tritonserver.log"

    @property
    def key_file(self) -> Path:
        """The file each start writes :attr:`key` to (0600)."""
        return self._user_key_file or self._ensure_run_dir() / "control.key"

    @property
    def control_headers(self) -> dict[str, str]:
        """The gRPC headers that open the restricted protocols ({} before the first start)."""
        return self.key.grpc_headers() if self.key is not None else {}

    @property
    def run_dir(self) -> Path:
        return self._ensure_run_dir()

    @property
    def shm_prefix(self) -> str:
        return self._shm_prefix

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True when the process runs, the server is ready, every model in ``models`` is
        ready and every endpoint it was asked to serve accepts connections (Triton opens
        HTTP and metrics after gRPC answers)."""
        if not self.is_running():
            return False
        if not all(_accepts_connections(self.host, port, timeout_s) for port in self._extra_ports()):
            return False
        try:
            import tritonclient.grpc as grpcclient
            client = grpcclient.InferenceServerClient(self.grpc_url)
            try:
                if not client.is_server_ready(client_timeout=timeout_s):
                    return False
                return all(client.is_model_ready(m, client_timeout=timeout_s) for m in self.models)
            finally:
                client.close()
        except Exception:  # not up yet: connection refused, deadline, ...
            return False

    def _extra_ports(self) -> list[int]:
        return ([self.http_port] if self.allow_http else []) + ([self.metrics_port] if self.allow_metrics else [])

    def unready_models(self, timeout_s: float = 2.0) -> list[str]:
        """The models of ``models`` that the running server says are not ready (unloaded
        behind our back, say). [] when the server itself does not answer: that is the
        supervisor's restart, not a reload."""
        import tritonclient.grpc as grpcclient
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            if not client.is_server_live(client_timeout=timeout_s):
                return []
            return [m for m in self.models if not client.is_model_ready(m, client_timeout=timeout_s)]
        except Exception:
            return []
        finally:
            client.close()

    def load_model(self, name: str, timeout_s: float = 120.0) -> None:
        """(Re)load ``name`` through the repository API, with the key. Raises
        :class:`TritonServerError` when Triton refuses or fails."""
        import tritonclient.grpc as grpcclient
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            client.load_model(name, headers=self.control_headers, client_timeout=timeout_s)
        except Exception as exc:
            raise TritonServerError(f"loading {name} on the embedded Triton failed: {exc}") from exc
        finally:
            client.close()

    def start(self) -> "TritonServer":
        """Start the server and wait until it and its models are ready.

        Raises :class:`TritonServerError` with the log tail if it exits or is not ready in
        ``startup_timeout_s``."""
        if self.is_running():
            return self
        if self._proc is not None:  # it died (or was killed): tidy up before the new one
            self.stop()
        self._installation = self._installation or find_installation(self._tritonserver_root)
        run_dir = self._ensure_run_dir()
        self._start_reaper(run_dir)
        backends = self._prepare_backends(run_dir)
        for attr in ("grpc_port", "http_port", "metrics_port"):
            if not getattr(self, attr):
                setattr(self, attr, free_port(self.host))
        self.key = new_key()
        write_key_file(self.key_file, self.key)
        cmd = self._command(backends)
        env = self._environment()
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab", buffering=0)
        self._log_file.write(f"\n=== yujing: starting {' '.join(cmd)}\n".encode())
        self._proc = _spawner().submit(
            subprocess.Popen, _die_with_parent(cmd), stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, env=env, cwd=run_dir, process_group=0,
            close_fds=True).result()
        _RUNNING.add(self)
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            if not self.is_running():
                code = self._proc.returncode if self._proc is not None else None
                raise TritonServerError(
                    f"tritonserver exited with code {code} before it was ready "
                    f"(models {self.models}, repository {self.model_repository}); "
                    f"log {self.log_path}:\n{self.log_tail()}")
            if self.is_ready(timeout_s=min(1.0, max(0.1, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"tritonserver was not ready within {timeout_s:.0f} s "
                    f"(models {self.models}); log {self.log_path}:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the server's process group, wait ``grace_s``, then SIGKILL it.
        Returns the exit code (None if it was not started)."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        code = None
        if proc is not None:
            code = proc.poll()
            if code is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    code = proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    code = proc.wait()
            # The Python backend stubs are in the same group; leave none behind.
            self._signal_group(proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._cleanup_shm()
        return code

    def kill(self) -> None:
        """SIGKILL the whole server at once, as a crash would (for failure tests)."""
        if self._proc is not None:
            self._signal_group(self._proc, signal.SIGKILL)
            self._proc.wait()

    def restart(self) -> "TritonServer":
        """Stop (if running) and start again on the same ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server, remove the run directory and the key file, let the watchdog go."""
        self.stop()
        if self.key is not None:
            self.key_file.unlink(missing_ok=True)
            self.key = None
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None

    def log_tail(self, n_lines: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n_lines:])

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL)

    # -- internals --------------------------------------------------------------------
    def _ensure_run_dir(self) -> Path:
        if self._run_dir is None:
            _sweep_stale_debris()
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"{_RUN_DIR_PREFIX}{os.getpid()}-"))
        return self._run_dir

    def _start_reaper(self, run_dir: Path) -> None:
        """The watchdog first, so no moment of the server's life is uncovered."""
        if self._reaper is None or not self._reaper.is_running():
            paths = [run_dir] + ([self._user_key_file] if self._user_key_file else [])
            self._reaper = Reaper(self._shm_prefix, paths).start()

    def _prepare_backends(self, run_dir: Path) -> Path:
        inst = self._installation
        assert inst is not None
        if inst.stub is None:
            return inst.backends
        backends = run_dir / "backends"
        python_dir = backends / "python"
        if not (python_dir / "triton_python_backend_stub").is_file():
            shutil.copytree(inst.backends, backends, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
            tmp = python_dir / ".triton_python_backend_stub.tmp"
            shutil.copy2(inst.stub, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, python_dir / "triton_python_backend_stub")
        return backends

    def _command(self, backends: Path) -> list[str]:
        inst = self._installation
        assert inst is not None
        b = lambda flag: "true" if flag else "false"  # noqa: E731
        cmd = [
            str(inst.binary),
            "--model-repository", str(self.model_repository),
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--backend-directory", str(backends),
            "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
            f"--allow-http={b(self.allow_http)}",
            "--http-address", self.host, "--http-port", str(self.http_port),
            f"--allow-metrics={b(self.allow_metrics)}",
            "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
            "--backend-config", f"python,shm-region-prefix-name={self._shm_prefix}",
            "--exit-timeout-secs", "5",
            f"--log-verbose={self.verbose}",
        ]
        if self.key is not None:
            cmd.append(self.key.grpc_flag(RESTRICTED))
            if self.allow_http:
                cmd.append(self.key.http_flag(RESTRICTED))
        if self.allow_metrics and not _has_nvidia_gpu():
            cmd.append("--allow-gpu-metrics=false")
        if inst.caches is not None:
            cmd += ["--cache-directory", str(inst.caches)]
        return cmd + self.extra_args

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        inst = self._installation
        assert inst is not None
        libs = [str(p) for p in inst.libs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PYTHONPATH"] = os.pathsep.join(model_pythonpath(self.extra_pythonpath))
        # The stub's embedded Python finds its prefix (and so its site-packages) from the
        # first python3 on PATH: make that ours, so model code sees our environment.
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p != bindir])
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        return env

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup_shm(self) -> None:
        # A killed server leaves its Python-backend shared-memory regions behind.
        remove_shm(self._shm_prefix)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()
