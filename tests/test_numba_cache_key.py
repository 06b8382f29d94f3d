"""The numba cache is keyed on the kernels' sources: importing ``yujing.kernels`` points
``numba.config.CACHE_DIR`` at a folder named by :func:`yujing.kernels.source_digest`
(under ``$NUMBA_CACHE_DIR``), and the digest changes when any kernel source changes, so
a changed kernel is never loaded from a stale compiled copy."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yujing.kernels
from yujing.kernels import source_digest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = Path(yujing.kernels.__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json
    import numba
    import yujing.kernels
    print(json.dumps({"cache_dir": numba.config.CACHE_DIR, "digest": yujing.kernels.source_digest()}))
""")


def test_import_pins_numba_cache_dir_to_the_source_digest(tmp_path):
    base = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(base), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["digest"] == source_digest()
    assert got["digest"] in got["cache_dir"]
    assert Path(got["cache_dir"]).parent == base


def test_digest_changes_when_a_kernel_source_changes(tmp_path):
    copy = tmp_path / "kernels"
    copy.mkdir()
    for src in KERNELS.glob("*.py"):
        shutil.copyfile(src, copy / src.name)
    assert source_digest(copy) == source_digest()          # same bytes, same key

    target = copy / "turn_update.py"
    target.write_bytes(target.read_bytes() + b"\n# one more byte changes the key\n")
    changed = source_digest(copy)
    assert changed != source_digest()

    layout = (copy / "layout.py").read_bytes()
    assert b"U16_MAX = 65535" in layout
    (copy / "layout.py").write_bytes(layout.replace(b"U16_MAX = 65535", b"U16_MAX = 65534"))
    assert source_digest(copy) not in (changed, source_digest())
