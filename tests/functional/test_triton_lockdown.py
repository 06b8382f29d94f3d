"""The embedded Triton is the service's alone, and leaves nothing behind.

Real processes throughout: the service with its embedded Triton (in a thread, and as the
``yujing serve`` command), attacked over Triton's own gRPC port with tritonclient.

- Without the key, uploading a model (Python that would run as the service) and unloading
  ``intent`` are refused; with the key from ``DATA_DIR/triton.key`` the same calls work, so
  the refusals are the lockdown's and not a broken request.
- A model unloaded with the key, behind the service's back, is loaded again by the
  supervisor within a deadline, with a log line and a metric count.
- ``yujing serve`` SIGKILLed: within seconds no tritonserver, no Python-backend stub, no
  shared-memory region and no run directory of that run is left.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest_triton import requires_triton
from tests.service_harness import ServeProcess, ServiceThread, turn
from tests.service_models import in_process_repo
from yujing.service.config import Config
from yujing.service.triton.access import KEY_FILE_NAME, TritonKey, read_key_file

pytestmark = [pytest.mark.triton, requires_triton]

SHM = Path("/dev/shm")
EVIL_CONFIG = json.dumps({
    "name": "evil", "backend": "python", "max_batch_size": 0,
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
})


def evil_model_py(marker: Path) -> bytes:
    """A model whose import writes ``marker``: what an attacker's code would do instead."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran as ' + str(__import__('os').getuid()))\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n").encode()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("state")
    s = ServiceThread(Config(port=0, models="embedded", triton_port=0, model_repo=in_process_repo(),
                             capacity=1024, agent_capacity=16, data_dir=data_dir)).start()
    run_dir, prefix = s.call(lambda srv: (srv.triton.run_dir, srv.triton.shm_prefix))
    yield s
    s.stop()
    # a clean stop leaves nothing either
    assert not run_dir.exists() and not (data_dir / KEY_FILE_NAME).exists()
    assert not list(SHM.glob(f"{prefix}*"))


def _client(svc):
    import tritonclient.grpc as grpcclient
    return grpcclient.InferenceServerClient(svc.call(lambda s: s.triton.grpc_url))


def _key(svc) -> TritonKey:
    path = Path(svc.config.data_dir) / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    return read_key_file(path)


def test_model_upload_and_unload_need_the_key(svc, tmp_path):
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "pwned"
    files = {"file:1/model.py": evil_model_py(marker)}
    client = _client(svc)
    wrong = TritonKey(_key(svc).name, "0" * 64)
    try:
        for headers in (None, wrong.grpc_headers()):
            with pytest.raises(InferenceServerException, match="restricted"):
                client.load_model("evil", config=EVIL_CONFIG, files=files, headers=headers, client_timeout=60)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.unload_model("intent", headers=headers, client_timeout=30)
        time.sleep(1.0)  # more than a supervisor pass: nothing is reloading intent behind the test
        assert not marker.exists() and not client.is_model_ready("evil")
        assert client.is_model_ready("intent")
        r = svc.stub().Score(turn(session="locked", text="我要投诉"))
        assert r.models.served_by == "triton" and not r.degraded

        # the same upload with the key runs the code: the refusal above was the lockdown's
        client.load_model("evil", config=EVIL_CONFIG, files=files, headers=_key(svc).grpc_headers(),
                          client_timeout=60)
        assert marker.read_text() == f"ran as {os.getuid()}"
        client.unload_model("evil", headers=_key(svc).grpc_headers(), client_timeout=30)
    finally:
        client.close()


def test_a_model_unloaded_behind_the_services_back_is_reloaded(svc, caplog):
    caplog.set_level("INFO", logger="yujing")
    client = _client(svc)
    try:
        client.unload_model("intent", headers=_key(svc).grpc_headers(), client_timeout=30)
        deadline = time.monotonic() + 30
        while not ("model intent reloaded" in caplog.text and client.is_model_ready("intent")):
            assert time.monotonic() < deadline, "intent was not reloaded within 30 s of its unload"
            time.sleep(0.2)
    finally:
        client.close()
    assert "model intent is not loaded" in caplog.text
    scrape = svc.call(lambda s: s.metrics.render().decode())
    assert re.search(r'^yujing_triton_model_reloads_total\{model="intent"\} [1-9]', scrape, re.M), scrape
    deadline = time.monotonic() + 30
    k = 0
    while True:  # the router's breaker (if a batch met the gap) closes by itself
        r = svc.stub().Score(turn(session="reload", turn_id=str(k), text="I want to cancel"))
        if r.models.served_by == "triton" and not r.degraded:
            break
        assert time.monotonic() < deadline, r.models
        k += 1
        time.sleep(0.2)


def test_every_triton_endpoint_listens_on_loopback_only(svc):
    pid = svc.call(lambda s: s.triton.pid)
    addresses = _listening_addresses(pid)
    assert len(addresses) >= 2, addresses  # gRPC and metrics
    assert all(a.is_loopback for a in addresses), addresses


def _listening_addresses(pid: int) -> list[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])
                # 32-bit words in host (little-endian) order
                addr = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
                found.append(getattr(addr, "ipv4_mapped", None) or addr)
    return found


def test_http_repository_api_needs_the_key_too(model_repo):
    """The service's inference requests go to the embedded Triton's HTTP endpoint; its
    repository API there takes the key as gRPC's does (header ``yujing-triton-key``)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from conftest_triton import start_triton

    with start_triton(model_repo, ["sentiment"], allow_http=True) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            with pytest.raises(InferenceServerException, match="restricted"):
                client.unload_model("sentiment")
            assert client.is_model_ready("sentiment")
            index = client.get_model_repository_index(headers=server.key.http_headers())
            assert {m["name"]: m.get("state") for m in index}["sentiment"] == "READY"
        finally:
            client.close()


# -- SIGKILL of the service -------------------------------------------------------------
def _procs() -> dict[int, list[str]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if argv and fields[0] != "Z":
                out[int(entry.name)] = argv
    return out


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _triton_of(serve_pid: int) -> tuple[int, Path, str]:
    """The serve process's tritonserver: its pid, run directory and shared-memory prefix."""
    for pid, argv in _procs().items():
        if os.path.basename(argv[0]) == "tritonserver" and _ppid(pid) == serve_pid:
            run_dir = Path(argv[argv.index("--backend-directory") + 1]).parent
            prefix = next(a.split("shm-region-prefix-name=", 1)[1] for a in argv if "shm-region-prefix-name=" in a)
            return pid, run_dir, prefix
    raise AssertionError(f"no tritonserver child of {serve_pid}")


def _debris(run_dir: Path, prefix: str) -> dict:
    procs = {pid: argv[0] for pid, argv in _procs().items()
             if any(str(run_dir) in a or prefix in a for a in argv)}
    return {"processes": procs, "shm": sorted(p.name for p in SHM.glob(f"{prefix}*")),
            "run_dir": run_dir.exists()}


def test_sigkill_of_the_service_leaves_no_triton_debris():
    serve = ServeProcess("--models", "embedded", "--capacity", "1024", "--agent-capacity", "16")
    try:
        triton_pid, run_dir, prefix = _triton_of(serve.proc.pid)
        key_file = Path(serve.data_dir) / KEY_FILE_NAME
        before = _debris(run_dir, prefix)
        stubs = [p for p, prog in before["processes"].items() if prog.endswith("triton_python_backend_stub")]
        assert triton_pid in before["processes"] and len(stubs) >= 2, before  # sentiment, intent, emotion
        assert before["shm"] and before["run_dir"] and key_file.is_file(), before

        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(10)
        deadline = time.monotonic() + 5
        while True:
            left = _debris(run_dir, prefix)
            if not (left["processes"] or left["shm"] or left["run_dir"] or key_file.exists()):
                break
            assert time.monotonic() < deadline, f"5 s after SIGKILL: {left}, key file {key_file.exists()}"
            time.sleep(0.1)
    finally:
        serve.stop()


# -- the next start's sweep (no Triton needed) ------------------------------------------
def test_the_next_start_sweeps_what_a_dead_owners_servers_left(tmp_path):
    import tempfile

    from yujing.service.triton import launcher

    dead = subprocess.Popen(["true"])
    dead.wait()
    prefix = f"yujing_{dead.pid}_"
    run_dir = Path(tempfile.mkdtemp(prefix=f"yujing-triton-{dead.pid}-"))
    region = SHM / f"{prefix}deadbeef_region"
    region.write_bytes(b"\0" * 16)
    # a "tritonserver" of that owner still running: the system python under that name
    fake = tmp_path / "tritonserver"
    os.symlink(os.path.realpath(sys.executable), fake)
    orphan = subprocess.Popen([str(fake), "-c", "import time; time.sleep(600)", f"{prefix}deadbeef"])
    deadline = time.monotonic() + 10  # until it has exec'd (before, its cmdline is pytest's)
    while f"{prefix}deadbeef".encode() not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    mine = SHM / f"yujing_{os.getpid()}_live"  # a live owner's: left alone
    mine.write_bytes(b"\0")
    try:
        launcher._sweep_stale_debris()
        assert orphan.wait(5) == -signal.SIGKILL
        assert not run_dir.exists() and not region.exists()
        assert mine.exists()
    finally:
        orphan.kill()
        mine.unlink(missing_ok=True)
        region.unlink(missing_ok=True)


def test_the_embedded_triton_refuses_a_non_loopback_address(tmp_path):
    from yujing.service.triton.launcher import TritonServer, TritonServerError

    with pytest.raises(TritonServerError, match="not a loopback address"):
        TritonServer(tmp_path, models=[], host="0.0.0.0")
    assert TritonServer(tmp_path, models=[], host="::1").host == "::1"
