"""The package as a user gets it: a wheel that works outside the checkout, one import
namespace, and a serving path that does not pull in training or benchmark code."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.service_harness import ServeProcess, turn

ROOT = Path(__file__).resolve().parents[1]
# folder in the checkout -> its name in the yujing namespace
SERVING = {"service": "yujing.service", "kernels": "yujing.kernels"}
FORBIDDEN = ("yujing.training", "yujing.loadtest", "yujing.cli", "yujing.client")


def _imports(path: Path, package: str) -> set[str]:
    """Every module a file imports, lazily inside functions too, as absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def _serving_modules():
    for folder, package in SERVING.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "_generated" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            pkg = ".".join([package, *rel.parts[:-1]])
            yield path, pkg


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from yujing.training import train\n    from ..loadtest import x\n"
                 "    importlib.import_module('yujing.cli')\n")
    got = _imports(f, "yujing.service.models")
    assert {"yujing.training", "yujing.service.loadtest", "yujing.cli"} <= got


def test_serving_code_imports_no_training_benchmark_or_cli_module():
    offenders = []
    for path, pkg in _serving_modules():
        for name in _imports(path, pkg):
            if name.startswith(FORBIDDEN) or name.split(".")[0] in ("service", "kernels", "loadtest", "training"):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "serving code reaches outside the serving path:\n" + "\n".join(offenders)


def test_kernels_import_nothing_from_the_service():
    for path in (ROOT / "kernels").glob("*.py"):
        bad = [n for n in _imports(path, "yujing.kernels") if n.startswith("yujing.service")]
        assert not bad, f"{path.name} imports {bad}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel built from this checkout, installed into a fresh venv outside it. The
    venv borrows this environment's third-party packages through a path file (installing
    them again would only measure the network), but not its editable yujing."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(out.glob("yujing-*.whl"))
    venv = out / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)]
                          if _pip_has_python_flag() else
                          [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    if not (venv / "bin" / "yujing").exists():  # --target installs no console script
        (venv / "bin" / "yujing").write_text(f"#!{py}\nimport sys\nfrom yujing.cli import main\nsys.exit(main())\n")
        os.chmod(venv / "bin" / "yujing", 0o755)
    return venv


def _pip_has_python_flag() -> bool:
    import pip

    return tuple(int(x) for x in pip.__version__.split(".")[:2]) >= (22, 3)


def _run(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_the_wheel_installs_one_namespace(wheel_venv, tmp_path):
    ok = _run(wheel_venv, "import yujing, yujing.service.contract as c, yujing.kernels; "
                          "print(yujing.__file__); print(c.pb.Turn.DESCRIPTOR.full_name)", tmp_path)
    assert ok.returncode == 0, ok.stderr
    where, name = ok.stdout.split()
    assert str(wheel_venv) in where and name == "yujing.v1.Turn"
    for generic in ("service", "kernels", "loadtest", "training"):
        r = _run(wheel_venv, f"import {generic}", tmp_path)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"import {generic} worked"


def test_the_wheel_carries_contract_policy_lexicons_and_default_models(wheel_venv, tmp_path):
    r = _run(wheel_venv, "from yujing.service import paths as p; "
                         "print(p.PROTO_DIR.joinpath(p.PROTO_FILES[0]).is_file(), p.DEFAULT_POLICY.is_file(), "
                         "any(p.LEXICON_DIR.glob('*.txt')), sorted(d.name for d in p.DEFAULT_MODEL_REPO.iterdir() "
                         "if d.is_dir()), p.is_checkout())", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["True", "True", "True"]
    assert "'intent'," in r.stdout and "'sentiment']" in r.stdout and r.stdout.strip().endswith("False")
    assert "'heads'," in r.stdout  # the service's default model call: sentiment, emotion, intent in one
    assert "'dissatisfaction'," in r.stdout and "'emotion'," in r.stdout


def test_the_wheel_carries_heads_ready_to_load(wheel_venv, tmp_path):
    """The embedded Triton of an installed service loads heads (it is the service's default
    model call): its config, its model.py, and discover_models finds it beside its members."""
    r = _run(wheel_venv, "from yujing.service import paths as p; from yujing.service.triton.launcher import "
                         "discover_models; h = p.DEFAULT_MODEL_REPO / 'heads'; "
                         "print((h / 'config.pbtxt').is_file(), (h / '1' / 'model.py').is_file(), "
                         "'heads' in discover_models(p.DEFAULT_MODEL_REPO))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]


def test_the_installed_command_serves_a_score_from_another_directory(wheel_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    svc = ServeProcess("--models", "in-process", "--capacity", "1024", command=[str(wheel_venv / "bin" / "yujing")],
                       cwd=str(tmp_path), env=env)
    try:
        risk = svc.stub().Score(turn(session="wheel", turn_id="1", text="我要投诉，太慢了！"), timeout=60)
        assert risk.session_id == "wheel" and risk.customer_turns == 1 and risk.sentiment.label
    finally:
        assert svc.stop() == 0, svc.output()[-3000:]
