"""Bit helpers the kernels share, as plain Python functions that each kernel compiles with
its own ``jit`` (CPU ``njit``, or ``numba.cuda.jit(device=True)``): one definition of the
formula, however many targets.

    popcount64(x)     the number of set bits of a uint64 (SWAR: no loop, no table)
"""
from __future__ import annotations

import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


def popcount64(x):
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return (x * _H01) >> _S56
