"""How model weights are stored in an artifact's ``weights.npz`` and read back.

``store(arrays, key, arr, dtype)`` writes one array; ``fetch(arrays, key)`` returns it as
float32 (or as stored, for float16). Vectors (1-D) are always float32. Matrices:

* ``float16``: as is;
* ``int8``: one float32 scale per row (``key__scale``), ``round(w / scale)``, scale =
  max|row| / 127;
* ``q4``: 4 bits per weight in blocks of 32 along a row, one float16 scale per block
  (``key__q4scale``), ``q = clip(round(w / d), -8, 7)`` with d = max|block| / 7 (the largest
  weight keeps its value), two weights per byte (``key`` holds the packed bytes: the low
  nibble is weight ``2j``, the high one ``2j + 1``). Rows whose length is not a multiple of
  32 fall back to int8.
"""
from __future__ import annotations

import numpy as np

Q4_BLOCK = 32
DTYPES = ("float16", "int8", "q4")


def store(arrays: dict, key: str, arr: np.ndarray, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r} (known: {DTYPES})")
    arr = np.asarray(arr, np.float32)
    if arr.ndim != 2:
        arrays[key] = arr
    elif dtype == "q4" and arr.shape[1] % Q4_BLOCK == 0:
        rows, cols = arr.shape
        blocks = arr.reshape(rows, cols // Q4_BLOCK, Q4_BLOCK)
        d = np.abs(blocks).max(axis=2, keepdims=True) / 7.0
        d = d.astype(np.float16).astype(np.float32)     # the scale as it will be read back
        d[d == 0] = 1.0
        q = np.clip(np.round(blocks / d), -8, 7).astype(np.int8).reshape(rows, cols) + 8
        arrays[key] = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        arrays[key + "__q4scale"] = d.reshape(rows, cols // Q4_BLOCK).astype(np.float16)
    elif dtype in ("int8", "q4"):
        scale = np.abs(arr).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        arrays[key] = np.round(arr / scale).astype(np.int8)
        arrays[key + "__scale"] = scale.astype(np.float32)
    else:
        arrays[key] = arr.astype(np.float16)


def fetch(arrays: dict, key: str) -> np.ndarray:
    a = arrays[key]
    if key + "__q4scale" in arrays:
        d = arrays[key + "__q4scale"].astype(np.float32)
        rows, nb = d.shape
        q = np.empty((rows, a.shape[1] * 2), np.float32)
        q[:, 0::2] = a & 0x0F
        q[:, 1::2] = a >> 4
        q -= 8
        return (q.reshape(rows, nb, Q4_BLOCK) * d[:, :, None]).reshape(rows, nb * Q4_BLOCK)
    if a.dtype == np.int8:
        return a.astype(np.float32) * arrays[key + "__scale"]
    return a


def is_stored_key(key: str) -> bool:
    """True for an array's own key, False for the scales stored beside it."""
    return not (key.endswith("__scale") or key.endswith("__q4scale"))
