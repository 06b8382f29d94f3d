"""How model weights are stored in an artifact's ``weights.npz`` and read back.

``store(arrays, key, arr, dtype)`` writes one array; ``fetch(arrays, key)`` returns it as
float32 (or as stored, for float16). Vectors (1-D) are always float32. Matrices:

* ``float16``: as is;
* ``int8``: one float32 scale per row (``key__scale``), ``round(w / scale)``, scale =
  max|row| / 127;
* ``q4``: 4 bits per weight in blocks of 32 along a row, one float16 scale per block
  (``key__q4scale``, may be negative), ``w ~ q * d`` with ``q = clip(round(w / d), -8, 7)``,
  two weights per byte (``key`` holds the packed bytes: the low nibble is weight ``2j``, the
  high one ``2j + 1``). Rows whose length is not a multiple of 32 fall back to int8.
  The scale of each block is the one with the smallest squared error among: ``max|w| / 7``
  (the largest weight keeps its value; the first version's only choice), ``-m / k`` for
  ``k`` in 6.5, 6.75, ..., 8.5 (``m`` the block's largest-magnitude weight, so that it lands
  on -k and the -8 level is used too), and the least-squares scale ``sum(w q) / sum(q q)``
  for the best of those ``q``. Reading is the same whichever was chosen.
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
        d, q = _q4_blocks(arr.reshape(rows, cols // Q4_BLOCK, Q4_BLOCK))
        q = q.reshape(rows, cols) + 8
        arrays[key] = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        arrays[key + "__q4scale"] = d.reshape(rows, cols // Q4_BLOCK).astype(np.float16)
    elif dtype in ("int8", "q4"):
        scale = np.abs(arr).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        arrays[key] = np.round(arr / scale).astype(np.int8)
        arrays[key + "__scale"] = scale.astype(np.float32)
    else:
        arrays[key] = arr.astype(np.float16)


def _q4_round(blocks: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale as stored in float16, q, squared error per block) for scales ``d`` [..., 1]."""
    d = d.astype(np.float16).astype(np.float32)
    d[d == 0] = 1.0
    q = np.clip(np.round(blocks / d), -8, 7)
    return d, q, ((blocks - q * d) ** 2).sum(axis=-1, keepdims=True)


def _q4_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block scale [..., 1] and int8 codes in [-8, 7] of ``blocks`` [..., 32]."""
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    best_d, best_q, best_e = _q4_round(blocks, amax / 7.0)
    candidates = [-m / k for k in np.arange(6.5, 8.51, 0.25)]
    for d in candidates + [None]:
        if d is None:   # least squares on the best codes so far
            qq = (best_q * best_q).sum(axis=-1, keepdims=True)
            d = np.where(qq > 0, (blocks * best_q).sum(axis=-1, keepdims=True) / np.maximum(qq, 1e-30), best_d)
        d, q, e = _q4_round(blocks, d)
        better = e < best_e
        best_d, best_e = np.where(better, d, best_d), np.where(better, e, best_e)
        best_q = np.where(better, q, best_q)
    return best_d, best_q.astype(np.int8)


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
