"""Pure array kernels: the session/agent state layout, the per-turn update and the
composite score, as a CPU (Numba njit) and a GPU (numba.cuda, CuPy arrays) variant side
by side, plus a plain-Python reference. Nothing here imports from ``yujing.service``; CuPy is
imported only when the GPU backend is chosen, so ``import yujing.kernels`` works without CUDA.
"""
import hashlib
import os
from pathlib import Path


def _pin_numba_cache() -> None:
    """Numba's on-disk cache does not notice when a jitted function calls code from
    another file that changed (the CPU driver inlines kernels/turn_update.py). The cache
    folder is therefore always keyed on a hash of this package's sources, under
    ``$NUMBA_CACHE_DIR`` when it is set (CI, containers) and ``~/.cache/yujing/numba``
    otherwise, so a stale kernel cannot be loaded."""
    import numba

    digest = source_digest()
    base = os.environ.get("NUMBA_CACHE_DIR")
    if base:
        numba.config.CACHE_DIR = str(Path(base) / f"yujing-{digest}")
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        numba.config.CACHE_DIR = str(home / "yujing" / "numba" / digest)


def source_digest(folder: str | os.PathLike | None = None) -> str:
    """A hash of every source file (``*.py``) of ``folder`` (default: this package), in name
    order: the numba cache key."""
    here = Path(folder) if folder is not None else Path(__file__).resolve().parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()[:16]


_pin_numba_cache()


def get_backend(name: str = "auto"):
    """``"cpu"``, ``"gpu"`` or ``"auto"`` (GPU when CuPy sees a device, else CPU)."""
    if name == "auto":
        try:
            import cupy

            name = "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
        except Exception:  # no CuPy, no driver, no device: the CPU twin
            name = "cpu"
    if name == "cpu":
        from yujing.kernels.update_cpu import CpuKernels

        return CpuKernels()
    if name == "gpu":
        from yujing.kernels.update_gpu import GpuKernels

        return GpuKernels()
    raise ValueError(f"unknown kernel backend {name!r}: expected cpu, gpu or auto")
