"""Pure array kernels: the session/agent state layout, the per-turn update and the
composite score, as a CPU (Numba njit) and a GPU (numba.cuda, CuPy arrays) variant side
by side, plus a plain-Python reference. Nothing here imports from ``service``; CuPy is
imported only when the GPU backend is chosen, so ``import kernels`` works without CUDA.
"""
import hashlib
import os
from pathlib import Path


def _pin_numba_cache() -> None:
    """Numba's on-disk cache does not notice when a jitted function calls code from
    another file that changed (the CPU driver inlines kernels/turn_update.py). Keying
    the cache folder on a hash of this package's sources makes a stale kernel
    impossible. NUMBA_CACHE_DIR, when set, wins."""
    import numba

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    numba.config.CACHE_DIR = str(base / "yujing" / "numba" / digest)


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
        from kernels.update_cpu import CpuKernels

        return CpuKernels()
    if name == "gpu":
        from kernels.update_gpu import GpuKernels

        return GpuKernels()
    raise ValueError(f"unknown kernel backend {name!r}: expected cpu, gpu or auto")
