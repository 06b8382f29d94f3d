"""Pretrained token vectors, pooled per text: the dense feature block of a text model.

A :class:`TokenVectors` holds a sub-word tokenizer (a Hugging Face ``tokenizers`` JSON) and
one vector per token id. A text becomes ``[mean of its token vectors, element-wise max of
its token vectors]``, each half L2-normalised, times ``scale``; the linear head sees these
``2 * dim`` numbers beside the sparse n-gram features (``textclf``). The vectors carry what
the n-grams cannot: tokens never seen in the training data but close in meaning to ones
that were ("card hasn't arrived" / "card still not delivered").

The vectors shipped with yujing's models come from WordLlama (see
:mod:`yujing.training.pretrained` and MODELS.md): 32,000 Llama-2 tokens x 256 dimensions.
Inference needs ``tokenizers`` and NumPy/Numba; no ML framework.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from numba import njit

TOKENIZER_FILE = "tokenizer.json"
POOLS = ("mean", "max")


@njit(cache=True)
def _pool(ids, ptr, table, scale):
    """Per text: [normalised mean, normalised max] of its rows of ``table`` (zeros if empty)."""
    n = ptr.shape[0] - 1
    d = table.shape[1]
    out = np.zeros((n, 2 * d), np.float32)
    acc = np.empty(d, np.float32)
    mx = np.empty(d, np.float32)
    for i in range(n):
        a, b = ptr[i], ptr[i + 1]
        if b <= a:
            continue
        for j in range(d):
            acc[j] = 0.0
            mx[j] = -np.inf
        for k in range(a, b):
            t = ids[k]
            for j in range(d):
                v = np.float32(table[t, j])
                acc[j] += v
                if v > mx[j]:
                    mx[j] = v
        s1 = 0.0
        s2 = 0.0
        for j in range(d):
            s1 += acc[j] * acc[j]
            s2 += mx[j] * mx[j]
        f1 = scale / np.sqrt(s1) if s1 > 0 else 0.0
        f2 = scale / np.sqrt(s2) if s2 > 0 else 0.0
        for j in range(d):
            out[i, j] = acc[j] * f1
            out[i, d + j] = mx[j] * f2
    return out


class TokenVectors:
    """Tokenizer + token vector table -> pooled dense features ``[n, 2 * dim]``."""

    def __init__(self, tokenizer_json: str, table: np.ndarray, scale: float = 1.0,
                 max_tokens: int = 512, max_chars: int = 2000):
        from tokenizers import Tokenizer
        self.tokenizer_json = tokenizer_json
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.table = np.ascontiguousarray(table, np.float32)
        if self.table.ndim != 2:
            raise ValueError(f"token vector table must be 2-D, got shape {self.table.shape}")
        if self.tokenizer.get_vocab_size() > self.table.shape[0]:
            raise ValueError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens, the table "
                             f"{self.table.shape[0]} rows")
        self.scale = float(scale)
        self.max_tokens = int(max_tokens)
        self.max_chars = int(max_chars)

    @property
    def dim(self) -> int:
        """Width of the pooled features (two pools)."""
        return 2 * self.table.shape[1]

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(flat token ids int64, ptr int64 [n+1]); long texts keep head and tail."""
        half = self.max_chars // 2
        clipped = [t if len(t) <= self.max_chars else t[:half] + " " + t[-half:]
                   for t in (x if isinstance(x, str) else "" if x is None else str(x) for x in texts)]
        encs = self.tokenizer.encode_batch(clipped, add_special_tokens=False)
        lens = np.fromiter((min(len(e.ids), self.max_tokens) for e in encs), np.int64, len(encs))
        ptr = np.zeros(len(encs) + 1, np.int64)
        np.cumsum(lens, out=ptr[1:])
        ids = np.empty(int(ptr[-1]), np.int64)
        for i, e in enumerate(encs):
            ids[ptr[i]:ptr[i + 1]] = e.ids[:lens[i]]
        return ids, ptr

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ids, ptr = self.token_ids(texts)
        return _pool(ids, ptr, self.table, np.float32(self.scale))

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict:
        return {"tokenizer_file": TOKENIZER_FILE, "pools": list(POOLS), "scale": self.scale,
                "max_tokens": self.max_tokens, "max_chars": self.max_chars,
                "vocab": int(self.table.shape[0]), "dim": int(self.table.shape[1])}

    def save(self, path: Path) -> None:
        (Path(path) / TOKENIZER_FILE).write_text(self.tokenizer_json, encoding="utf-8")

    @classmethod
    def load(cls, path: Path, meta: dict, table: np.ndarray) -> "TokenVectors":
        tfile = Path(path) / meta.get("tokenizer_file", TOKENIZER_FILE)
        if not tfile.is_file():
            raise FileNotFoundError(f"{path}: missing {tfile.name}")
        if list(meta.get("pools", POOLS)) != list(POOLS):
            raise ValueError(f"unsupported pools {meta.get('pools')!r} (this version pools {POOLS})")
        return cls(tfile.read_text(encoding="utf-8"), table, scale=meta.get("scale", 1.0),
                   max_tokens=meta.get("max_tokens", 512), max_chars=meta.get("max_chars", 2000))
