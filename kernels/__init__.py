"""Pure array kernels: the session/agent state layout, the per-turn update and the
composite score, as a CPU (Numba njit) and a GPU (numba.cuda, CuPy arrays) variant side
by side, plus a plain-Python reference. Nothing here imports from ``service``; CuPy is
imported only when the GPU backend is chosen, so ``import kernels`` works without CUDA.
"""


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
