"""Hashed n-gram text classifier: numpy + numba at inference, no ML framework needed.

Features (one pass in numba over the UTF-32 code points of NFKC-lowercased text):

* tokens: runs of letters/digits (digits folded to ``0``; an apostrophe between letters
  stays inside the word), every CJK character (Han, kana, hangul) on its own, and every
  other non-space character (punctuation, emoji) on its own;
* token n-grams: unigrams, bigrams (``word_ngrams``) and, over runs of CJK characters,
  n-grams up to ``cjk_ngrams`` -- for Chinese this is character 1-3 grams, for English
  word 1-2 grams, and mixed text gets both;
* character n-grams ``char_ngrams`` (2-5) inside every non-CJK word, padded with word
  boundary marks (sub-word features: typos, inflections, hashtags);
* one indicator feature for "contains CJK" / "contains none".

Each n-gram is hashed (FNV-1a, 64 bit, type-seeded) into ``2**hash_bits`` buckets. The
value of a bucket is ``(1 + log count) * idf``, rows are L2-normalised (TF-IDF). Only the
buckets seen in training are stored. One or more heads turn the features into logits:

* ``linear``: ``x @ W + b``;
* ``mlp``: ``relu(x @ W1 + b1) @ W2 + b2`` (fastText-style dense hidden layer).

Optionally, dense features follow the n-gram columns: pooled pretrained token vectors
(``token_vectors.py``) and/or a pretrained sentence encoder (``sentence_encoder.py``); the
first weight matrix of a head then has ``n_buckets + dense_dim`` rows, the dense ones last.

The model's probabilities are ``softmax(sum_k weight_k * logits_k)``. Weights are stored
as float16 (optionally int8 with a per-row scale; ``quantize.py``) in ``weights.npz`` beside ``model.json``.
On a GPU instance (Triton ``KIND_GPU``) the matrix products move to the GPU when CuPy is
importable; featurisation stays on the CPU.
"""
from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numba import njit

from yujing.service.models import SoftmaxModel
from yujing.service.models.artifact import ArtifactError, read_weights, register_loader, write_meta
from yujing.service.models.quantize import fetch as _fetch, store as _store

if TYPE_CHECKING:
    from yujing.service.models.sentence_encoder import SentenceEncoder
    from yujing.service.models.token_vectors import TokenVectors

KIND = "hashed-ngram"
WEIGHTS_FILE = "weights.npz"

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# character classes
_SPACE, _WORD, _CJK, _SYM, _APOS = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class FeatureConfig:
    hash_bits: int = 20
    word_ngrams: int = 2          # token n-grams up to this length (non-CJK)
    cjk_ngrams: int = 3           # token n-grams up to this length over CJK runs
    char_min: int = 2             # char n-grams inside non-CJK words
    char_max: int = 5
    max_chars: int = 2000         # longer texts are cut (head and tail kept)
    sublinear_tf: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------- numba

@njit(cache=True, inline="always")
def _cls(c):
    if c <= 0x20:
        return _SPACE
    if c < 0x80:
        if (0x30 <= c <= 0x39) or (0x61 <= c <= 0x7A) or (0x41 <= c <= 0x5A):
            return _WORD
        if c == 0x27:
            return _APOS
        return _SYM
    if c == 0x2019:
        return _APOS
    if (0xC0 <= c <= 0x24F and c != 0xD7 and c != 0xF7) or (0x370 <= c <= 0x52F):
        return _WORD
    if ((0x3400 <= c <= 0x4DBF) or (0x4E00 <= c <= 0x9FFF) or (0xF900 <= c <= 0xFAFF)
            or (0x3040 <= c <= 0x30FF) or (0xAC00 <= c <= 0xD7AF) or (0x20000 <= c <= 0x2FFFF)):
        return _CJK
    if c == 0xA0 or c == 0x3000 or (0x2000 <= c <= 0x200D) or c == 0xFEFF:
        return _SPACE
    return _SYM


@njit(cache=True, inline="always")
def _step(h, c):
    return (h ^ np.uint64(c)) * _FNV_PRIME


@njit(cache=True, inline="always")
def _final(h, mask):
    h ^= h >> np.uint64(31)
    h *= _MIX1
    h ^= h >> np.uint64(29)
    h *= _MIX2
    h ^= h >> np.uint64(32)
    return np.int64(h & mask)


@njit(cache=True)
def _hash_texts(codes, starts, ends, hash_bits, word_n, cjk_n, char_lo, char_hi):
    """Bucket ids (with repeats) of every text; returns (ptr, buckets)."""
    n = starts.shape[0]
    mask = np.uint64((1 << hash_bits) - 1)
    n_char = max(0, char_hi - char_lo + 1)
    maxn = max(word_n, cjk_n)
    bound = 0
    for i in range(n):
        L = ends[i] - starts[i]
        bound += L * (maxn + 3 * n_char + 1) + 4
    out = np.empty(bound, np.int64)
    ptr = np.zeros(n + 1, np.int64)
    pos = 0
    Lmax = 0
    for i in range(n):
        Lmax = max(Lmax, ends[i] - starts[i])
    tok_h = np.empty(Lmax + 1, np.uint64)
    tok_cjk = np.empty(Lmax + 1, np.bool_)
    tok_s = np.empty(Lmax + 1, np.int64)
    tok_e = np.empty(Lmax + 1, np.int64)
    for i in range(n):
        s = starts[i]
        e = ends[i]
        # --- tokenise
        nt = 0
        j = s
        has_cjk = False
        while j < e:
            c = codes[j]
            k = _cls(c)
            if k == _SPACE or k == _APOS:
                j += 1
                continue
            if k == _WORD:
                h = _FNV_OFFSET
                t0 = j
                while j < e:
                    c = codes[j]
                    k2 = _cls(c)
                    if k2 == _WORD:
                        if 0x30 <= c <= 0x39:
                            c = 0x30
                        h = _step(h, c)
                        j += 1
                    elif k2 == _APOS and j + 1 < e and _cls(codes[j + 1]) == _WORD:
                        h = _step(h, 0x27)
                        j += 1
                    else:
                        break
                tok_h[nt] = h
                tok_cjk[nt] = False
                tok_s[nt] = t0
                tok_e[nt] = j
                nt += 1
            else:
                tok_h[nt] = _step(_FNV_OFFSET, c)
                tok_cjk[nt] = k == _CJK
                if k == _CJK:
                    has_cjk = True
                tok_s[nt] = j
                tok_e[nt] = j  # no char n-grams for single characters
                nt += 1
                j += 1
        # --- token n-grams
        for a in range(nt):
            out[pos] = _final(_step(tok_h[a], 1), mask)
            pos += 1
            g = _step(_FNV_OFFSET, 7) ^ tok_h[a]
            allc = tok_cjk[a]
            for m in range(2, maxn + 1):
                b = a + m - 1
                if b >= nt:
                    break
                allc = allc and tok_cjk[b]
                if allc:
                    if m > cjk_n:
                        break
                elif m > word_n:
                    break
                g = _step(g * _FNV_PRIME, tok_h[b])
                out[pos] = _final(_step(g, 10 + m), mask)
                pos += 1
        # --- char n-grams inside words
        if n_char > 0:
            for a in range(nt):
                t0 = tok_s[a]
                t1 = tok_e[a]
                if t1 <= t0:
                    continue
                wl = t1 - t0 + 2  # padded length
                for st in range(wl):
                    h = _step(_FNV_OFFSET, 100)
                    for m in range(1, char_hi + 1):
                        q = st + m - 1
                        if q >= wl:
                            break
                        if q == 0:
                            c = 0x02
                        elif q == wl - 1:
                            c = 0x03
                        else:
                            c = codes[t0 + q - 1]
                            if 0x30 <= c <= 0x39:
                                c = 0x30
                            elif c == 0x2019:
                                c = 0x27
                        h = _step(h, c)
                        if m >= char_lo and not (m == 2 and wl == 3):
                            out[pos] = _final(_step(h, 200 + m), mask)
                            pos += 1
        out[pos] = _final(_step(_FNV_OFFSET, 1001 if has_cjk else 1000), mask)
        pos += 1
        ptr[i + 1] = pos
    return ptr, out[:pos]


@njit(cache=True)
def _count_rows(ptr, buckets):
    """Sort and count bucket ids per row: returns (ptr2, idx, counts)."""
    n = ptr.shape[0] - 1
    idx = np.empty(buckets.shape[0], np.int64)
    cnt = np.empty(buckets.shape[0], np.float32)
    ptr2 = np.zeros(n + 1, np.int64)
    pos = 0
    for i in range(n):
        row = np.sort(buckets[ptr[i]:ptr[i + 1]])
        last = -1
        for v in row:
            if v == last:
                cnt[pos - 1] += 1.0
            else:
                idx[pos] = v
                cnt[pos] = 1.0
                pos += 1
                last = v
        ptr2[i + 1] = pos
    return ptr2, idx[:pos], cnt[:pos]


@njit(cache=True)
def _tfidf_remap(ptr, idx, cnt, remap, idf, sublinear):
    """Map buckets to stored rows (dropping unknown ones), weight and L2-normalise."""
    n = ptr.shape[0] - 1
    ptr2 = np.zeros(n + 1, np.int64)
    cols = np.empty(idx.shape[0], np.int32)
    vals = np.empty(idx.shape[0], np.float32)
    pos = 0
    for i in range(n):
        p0 = pos
        ss = 0.0
        for k in range(ptr[i], ptr[i + 1]):
            r = remap[idx[k]]
            if r < 0:
                continue
            c = cnt[k]
            tf = (1.0 + np.log(c)) if sublinear else c
            v = tf * idf[r]
            cols[pos] = r
            vals[pos] = v
            ss += v * v
            pos += 1
        if ss > 0:
            inv = 1.0 / np.sqrt(ss)
            for k in range(p0, pos):
                vals[k] *= inv
        ptr2[i + 1] = pos
    return ptr2, cols[:pos], vals[:pos]


@njit(cache=True)
def _spmm(ptr, cols, vals, W):
    n = ptr.shape[0] - 1
    out = np.zeros((n, W.shape[1]), np.float32)
    for i in range(n):
        for k in range(ptr[i], ptr[i + 1]):
            v = vals[k]
            r = cols[k]
            for j in range(W.shape[1]):
                out[i, j] += v * W[r, j]
    return out


# ----------------------------------------------------------------------------- python

def normalize(text: str, max_chars: int = 2000) -> str:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + " " + text[-half:]
    return unicodedata.normalize("NFKC", text).lower()


def hash_features(texts: Sequence[str], cfg: FeatureConfig):
    """Raw hashed counts: (ptr int64 [n+1], bucket ids int64, counts float32)."""
    norm = [normalize(t, cfg.max_chars) for t in texts]
    lens = np.fromiter((len(t) for t in norm), np.int64, len(norm))
    ends = np.cumsum(lens + 1) - 1
    starts = ends - lens
    joined = "\n".join(norm)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32) if joined else np.zeros(1, np.uint32)
    ptr, buckets = _hash_texts(codes, starts, ends, cfg.hash_bits, cfg.word_ngrams,
                               cfg.cjk_ngrams, cfg.char_min, cfg.char_max)
    return _count_rows(ptr, buckets)


class Head:
    """One scoring head: ``linear`` (W [F, C], b) or ``mlp`` (W1 [F, H], b1, W2 [H, C], b2)."""

    def __init__(self, kind: str, weight: float, params: dict[str, np.ndarray]):
        if kind not in ("linear", "mlp"):
            raise ArtifactError(f"unknown head kind {kind!r}")
        self.kind = kind
        self.weight = float(weight)
        self.params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
        self._xp = None  # cupy module when on a GPU

    def logits(self, ptr, cols, vals, dense: np.ndarray | None = None) -> np.ndarray:
        """Logits of sparse rows (ptr, cols, vals) plus, when the model has them, dense
        features ``dense`` [n, D]: these meet the last D rows of the first weight matrix."""
        p = self.params
        if self._xp is not None:
            return self._logits_gpu(ptr, cols, vals, dense)
        first = p["W"] if self.kind == "linear" else p["W1"]
        h = _spmm(ptr, cols, vals, first)
        if dense is not None and dense.shape[1]:
            h += dense @ first[first.shape[0] - dense.shape[1]:]
        if self.kind == "linear":
            return h + p["b"]
        h += p["b1"]
        np.maximum(h, 0, out=h)
        return h @ p["W2"] + p["b2"]

    def to_gpu(self, device_id: int) -> bool:
        try:
            import cupy as cp
            import cupyx.scipy.sparse  # noqa: F401
        except Exception:  # noqa: BLE001 -- no CuPy: stay on the CPU
            return False
        with cp.cuda.Device(device_id):
            self._gpu = {k: cp.asarray(v) for k, v in self.params.items()}
        self._xp = cp
        self._device_id = device_id
        return True

    def _logits_gpu(self, ptr, cols, vals, dense=None):
        cp = self._xp
        import cupyx.scipy.sparse as cps
        g = self._gpu
        first = g["W"] if self.kind == "linear" else g["W1"]
        with cp.cuda.Device(self._device_id):
            x = cps.csr_matrix((cp.asarray(vals), cp.asarray(cols), cp.asarray(ptr)),
                               shape=(len(ptr) - 1, first.shape[0]))
            h = x @ first
            if dense is not None and dense.shape[1]:
                h += cp.asarray(dense) @ first[first.shape[0] - dense.shape[1]:]
            if self.kind == "linear":
                out = h + g["b"]
            else:
                out = cp.maximum(h + g["b1"], 0) @ g["W2"] + g["b2"]
            return cp.asnumpy(out).astype(np.float32)


class HashedNgramClassifier(SoftmaxModel):
    """TextModel: hashed n-gram TF-IDF features and one or more heads (see module doc)."""

    def __init__(self, name: str, labels: Sequence[str], cfg: FeatureConfig,
                 buckets: np.ndarray, idf: np.ndarray, heads: list[Head], version: str = "1",
                 temperature: float = 1.0, vectors: "TokenVectors | None" = None,
                 encoder: "SentenceEncoder | None" = None):
        self.name = name
        self.version = str(version)
        self.labels = tuple(labels)
        self.cfg = cfg
        self.buckets = np.asarray(buckets, np.int64)
        self.idf = np.ascontiguousarray(idf, np.float32)
        self.heads = heads
        self.temperature = float(temperature)
        self.vectors = vectors      # optional dense block: pooled pretrained token vectors
        self.encoder = encoder      # optional dense block: a pretrained sentence encoder
        self.remap = np.full(1 << cfg.hash_bits, -1, np.int32)
        self.remap[self.buckets] = np.arange(len(self.buckets), dtype=np.int32)
        for h in heads:
            out = h.params["b"] if h.kind == "linear" else h.params["b2"]
            if out.shape[-1] != len(self.labels):
                raise ArtifactError(f"{name}: a head has {out.shape[-1]} outputs for {len(self.labels)} labels")
            first = h.params["W"] if h.kind == "linear" else h.params["W1"]
            want = len(self.buckets) + self.dense_dim
            if first.shape[0] != want:
                raise ArtifactError(f"{name}: a head has {first.shape[0]} input rows, the features are {want}")

    # features in the stored (compact) column space
    def features(self, texts: Sequence[str]):
        return self.features_from_counts(hash_features(texts, self.cfg))

    def features_from_counts(self, counts):
        """TF-IDF rows in the stored column space from :func:`hash_features` ``(ptr, idx,
        cnt)``: the part that depends on the model, not only on its :class:`FeatureConfig`
        (models with equal configs can share one ``hash_features`` pass)."""
        ptr, idx, cnt = counts
        return _tfidf_remap(ptr, idx, cnt, self.remap, self.idf, self.cfg.sublinear_tf)

    @property
    def dense_dim(self) -> int:
        return ((self.vectors.dim if self.vectors is not None else 0)
                + (self.encoder.dim if self.encoder is not None else 0))

    def dense(self, texts: Sequence[str]) -> np.ndarray | None:
        """The dense features after the n-grams: [token vectors, sentence encoder]."""
        blocks = [b.encode(texts) for b in (self.vectors, self.encoder) if b is not None]
        if not blocks:
            return None
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits_from_counts(texts, hash_features(texts, self.cfg))

    def logits_from_counts(self, texts: Sequence[str], counts) -> np.ndarray:
        """:meth:`logits` given the texts' :func:`hash_features` ``counts`` (computed once
        for several models with the same :class:`FeatureConfig`)."""
        ptr, cols, vals = self.features_from_counts(counts)
        dense = self.dense(texts)
        z = np.zeros((len(texts), len(self.labels)), np.float32)
        for h in self.heads:
            z += h.weight * h.logits(ptr, cols, vals, dense)
        return z

    def use_device(self, kind: str, device_id: int = 0) -> None:
        """Triton hook: on a GPU instance, run the heads with CuPy when it is there."""
        if str(kind).upper().endswith("GPU"):
            for h in self.heads:
                h.to_gpu(int(device_id))
            if self.encoder is not None:
                self.encoder.to_gpu(int(device_id))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, meta: dict, dtype: str = "float16") -> dict:
        """Write model.json (``meta`` plus the kind's own fields) and weights.npz."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"buckets": self.buckets.astype(np.int32),
                                         "idf": self.idf.astype(np.float16)}
        heads_meta = []
        if self.vectors is not None:
            _store(arrays, "vectors", self.vectors.table, dtype)
            self.vectors.save(path)
        if self.encoder is not None:
            for key, arr in self.encoder.arrays().items():
                _store(arrays, key, arr, dtype)
            self.encoder.save(path)
        for k, h in enumerate(self.heads):
            for pname, arr in h.params.items():
                _store(arrays, f"h{k}_{pname}", arr, dtype)
            heads_meta.append({"kind": h.kind, "weight": h.weight, "params": sorted(h.params)})
        np.savez_compressed(path / WEIGHTS_FILE, **arrays)
        full = dict(meta)
        full.update({
            "kind": KIND, "name": self.name, "labels": list(self.labels),
            "features": asdict(self.cfg), "heads": heads_meta, "temperature": self.temperature,
            "n_features": int(len(self.buckets)), "weights_file": WEIGHTS_FILE,
            "weights_dtype": dtype,
        })
        if self.vectors is not None:
            full["token_vectors"] = {**full.get("token_vectors", {}), **self.vectors.meta()}
        if self.encoder is not None:
            full["sentence_encoder"] = {**full.get("sentence_encoder", {}), **self.encoder.meta()}
        write_meta(path, full)
        return full


@register_loader(KIND)
def load(path: Path, meta: dict) -> HashedNgramClassifier:
    arrays = read_weights(path, meta, WEIGHTS_FILE)
    try:
        cfg = FeatureConfig.from_dict(meta["features"])
        heads = []
        for k, hm in enumerate(meta["heads"]):
            params = {pname: _fetch(arrays, f"h{k}_{pname}") for pname in hm["params"]}
            heads.append(Head(hm["kind"], hm.get("weight", 1.0), params))
        vectors = None
        if meta.get("token_vectors"):
            from yujing.service.models.token_vectors import TokenVectors
            vectors = TokenVectors.load(path, meta["token_vectors"], _fetch(arrays, "vectors"))
        encoder = None
        if meta.get("sentence_encoder"):
            from yujing.service.models.sentence_encoder import SentenceEncoder
            encoder = SentenceEncoder.from_artifact(path, meta["sentence_encoder"], arrays)
        return HashedNgramClassifier(meta["name"], meta["labels"], cfg, arrays["buckets"],
                                     arrays["idf"].astype(np.float32), heads,
                                     version=str(meta.get("version", "1")),
                                     temperature=float(meta.get("temperature", 1.0)),
                                     vectors=vectors, encoder=encoder)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
        raise ArtifactError(f"{path}: bad {KIND} artifact ({exc})") from exc
