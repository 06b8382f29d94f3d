"""A sentence encoder (a BERT-family transformer) in NumPy: a dense feature block beside
the n-grams of a text model (``textclf``), or the body of a fine-tuned classifier
(``encoder_clf``).

The encoder is a standard post-LayerNorm BERT: token + position + segment-0 embeddings,
LayerNorm, then ``layers`` blocks of multi-head self-attention and a GELU feed-forward
layer, each followed by a residual LayerNorm. A text's vector is the mean of its last
hidden states over its real tokens (padding masked), L2-normalised (unless
``normalize=False``, as in a fine-tuned classifier, ``encoder_clf.py``), times ``scale``:
the "mean pooling" of sentence-transformers. Verified against the reference
implementation (Hugging Face ``BertModel``) to 1e-6 in ``tests/test_sentence_encoder.py``.

Two encoders ship with yujing: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads, 22.7 M
parameters; frozen, in ``intent_banking77_minilm``) and multilingual-e5-small (12 layers,
384 wide, fine-tuned, vocabulary pruned, in ``sentiment_e5``); see
:mod:`yujing.training.pretrained` and MODELS.md. Texts are tokenised by the encoder's own
tokenizer (``tokenizers`` JSON: WordPiece, or SentencePiece unigram), cut to
``max_tokens`` (:func:`token_ids`), sorted by length and run in batches so that padding
stays small.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

TOKENIZER_FILE = "encoder_tokenizer.json"
PREFIX = "enc/"     # weight names in the artifact's weights.npz


def token_ids(tokenizer, texts: Sequence[str], max_tokens: int, head_tokens: int = 0) -> list[list[int]]:
    """Token ids of each text (special tokens included), at most ``max_tokens`` of them.

    ``head_tokens == 0``: a long text keeps its first tokens (the tokenizer's own truncation,
    which keeps the closing special token: BERT's usual cut). ``head_tokens > 0``: it keeps
    its first ``head_tokens`` and its last ``max_tokens - head_tokens`` tokens ("head +
    tail", Sun et al. 2019, "How to Fine-Tune BERT for Text Classification": a review's
    verdict is often at its end). Sets ``tokenizer``'s truncation. Only the first (and, for
    head + tail, the last) ``16 * max_tokens`` characters are tokenised: no more can survive
    the cut."""
    clip = 16 * int(max_tokens)
    if not head_tokens:
        tokenizer.enable_truncation(int(max_tokens))
        return [e.ids for e in tokenizer.encode_batch([t[:clip] for t in texts])]
    if not 0 < head_tokens < max_tokens:
        raise ValueError(f"head_tokens {head_tokens} must be in (0, {max_tokens})")
    tokenizer.no_truncation()
    texts = [t if len(t) <= 2 * clip else t[:clip] + " " + t[-clip:] for t in texts]
    tail = max_tokens - head_tokens
    return [ids if len(ids) <= max_tokens else ids[:head_tokens] + ids[-tail:]
            for ids in (e.ids for e in tokenizer.encode_batch(list(texts)))]


def _is_linear(name: str, v: np.ndarray) -> bool:
    """A linear layer's matrix: stored [out, in] (as trained), kept [in, out] in memory."""
    return name.endswith(".weight") and v.ndim == 2 and not name.startswith("embeddings.")


def _layer_norm(x, g, b, eps: float, xp=np):
    m = x.mean(-1, keepdims=True)
    d = x - m
    v = (d * d).mean(-1, keepdims=True)
    return d / xp.sqrt(v + np.float32(eps)) * g + b


def _gelu(x, xp=np):
    """Exact (erf) GELU, as BERT uses; erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = xp.abs(x) * np.float32(1 / np.sqrt(2))
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    erf = 1 - poly * xp.exp(-z * z)
    return np.float32(0.5) * x * (1 + xp.sign(x) * erf)


class SentenceEncoder:
    """Tokenizer + BERT weights -> pooled sentence vectors ``[n, hidden]``."""

    def __init__(self, tokenizer_json: str, weights: dict[str, np.ndarray], layers: int, heads: int,
                 scale: float = 1.0, max_tokens: int = 128, batch: int = 64, layer_norm_eps: float = 1e-12,
                 normalize: bool = True, head_tokens: int = 0):
        from tokenizers import Tokenizer
        self.tokenizer_json = tokenizer_json
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.head_tokens = int(head_tokens)
        self.layers, self.heads = int(layers), int(heads)
        self.scale = float(scale)
        self.max_tokens = int(max_tokens)
        self.batch = int(batch)
        self.eps = float(layer_norm_eps)
        self.normalize = bool(normalize)
        w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
        self.hidden = w["embeddings.word_embeddings.weight"].shape[1]
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of {self.heads} heads")
        if self.tokenizer.get_vocab_size() > w["embeddings.word_embeddings.weight"].shape[0]:
            raise ValueError("the tokenizer has more tokens than the embedding table")
        # linear layers kept as [in, out] so that x @ W needs no transpose per call
        self.w = {k: np.ascontiguousarray(v.T) if _is_linear(k, v) else v for k, v in w.items()}
        self.xp = np                  # the array module: numpy, or cupy after to_gpu()
        self._host_w = self.w

    def to_gpu(self, device_id: int = 0) -> bool:
        """Run the encoder with CuPy on GPU ``device_id`` (Triton KIND_GPU); False without
        CuPy. The same code as on the CPU with ``cupy`` for ``numpy`` -- not yet run on a GPU
        (no GPU was available when it was written)."""
        try:
            import cupy as cp
        except Exception:  # noqa: BLE001 -- no CuPy: stay on the CPU
            return False
        with cp.cuda.Device(device_id):
            self.w = {k: cp.asarray(v) for k, v in self._host_w.items()}
        self.xp = cp
        return True

    @property
    def dim(self) -> int:
        return self.hidden

    # ------------------------------------------------------------------ forward
    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"] + self.w[name + ".bias"]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled, normalised vectors of one padded batch (ids, mask: [B, T])."""
        xp = self.xp
        w, B, T, H, nh = self.w, ids.shape[0], ids.shape[1], self.hidden, self.heads
        hd = H // nh
        ids, mask = xp.asarray(ids), xp.asarray(mask)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps, xp)
        keep = mask[:, :, None]
        bias = ((mask - 1) * np.float32(1e9))[:, None, None, :]      # 0 for tokens, -1e9 for padding
        x = (x * keep).reshape(B * T, H)
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            q = self._linear(x, p + "attention.self.query").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
            k = self._linear(x, p + "attention.self.key").reshape(B, T, nh, hd).transpose(0, 2, 3, 1)
            v = self._linear(x, p + "attention.self.value").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
            s = xp.ascontiguousarray(q) @ xp.ascontiguousarray(k) * np.float32(1 / np.sqrt(hd)) + bias
            s = xp.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = xp.ascontiguousarray((s @ xp.ascontiguousarray(v)).transpose(0, 2, 1, 3)).reshape(B * T, H)
            x = _layer_norm(x + self._linear(a, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                            self.eps, xp)
            f = self._linear(_gelu(self._linear(x, p + "intermediate.dense"), xp), p + "output.dense")
            x = _layer_norm(x + f, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps, xp)
            # padded positions are zeroed: they never reach a real token (masked), and left
            # alone they drift towards denormal floats, which slow the matrix products 100x
            x = (x.reshape(B, T, H) * keep).reshape(B * T, H)
        out = (x.reshape(B, T, H) * keep).sum(1) / xp.maximum(mask.sum(1, keepdims=True), 1)
        if self.normalize:
            norm = xp.linalg.norm(out, axis=1, keepdims=True)
            out = out / xp.where(norm > 0, norm, 1)
        return out if xp is np else xp.asnumpy(out)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [t if isinstance(t, str) else "" if t is None else str(t) for t in texts]
        out = np.zeros((len(texts), self.hidden), np.float32)
        if not texts:
            return out
        encs = token_ids(self.tokenizer, texts, self.max_tokens, self.head_tokens)
        lens = np.fromiter((len(e) for e in encs), np.int64, len(encs))
        order = np.argsort(lens, kind="stable")
        order = order[lens[order] > 0]          # a text without tokens keeps a zero vector
        for a in range(0, len(order), self.batch):
            rows = order[a:a + self.batch]
            T = int(lens[rows].max())
            ids = np.zeros((len(rows), T), np.int64)
            mask = np.zeros((len(rows), T), np.float32)
            for r, i in enumerate(rows):
                ids[r, :lens[i]] = encs[i]
                mask[r, :lens[i]] = 1
            out[rows] = self._forward(ids, mask)
        return out * np.float32(self.scale)

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict:
        return {"tokenizer_file": TOKENIZER_FILE, "architecture": "bert", "layers": self.layers,
                "heads": self.heads, "hidden": self.hidden, "pooling": "mean", "normalize": self.normalize,
                "scale": self.scale, "max_tokens": self.max_tokens, "head_tokens": self.head_tokens,
                "layer_norm_eps": self.eps}

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights in their original layout ([out, in] matrices), for the artifact."""
        return {PREFIX + k: np.ascontiguousarray(v.T) if _is_linear(k, v) else v
                for k, v in self._host_w.items()}

    def save(self, path: Path) -> None:
        (Path(path) / TOKENIZER_FILE).write_text(self.tokenizer_json, encoding="utf-8")

    @classmethod
    def from_artifact(cls, path: Path, meta: dict, stored: dict[str, np.ndarray]) -> "SentenceEncoder":
        """The encoder of an artifact: ``meta`` its ``sentence_encoder`` entry, ``stored`` all
        arrays of its weights file (as written by ``quantize.store``)."""
        from yujing.service.models.quantize import fetch, is_stored_key
        return cls.load(path, meta, {k: fetch(stored, k) for k in stored if k.startswith(PREFIX) and is_stored_key(k)})

    @classmethod
    def load(cls, path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> "SentenceEncoder":
        tfile = Path(path) / meta.get("tokenizer_file", TOKENIZER_FILE)
        if not tfile.is_file():
            raise FileNotFoundError(f"{path}: missing {tfile.name}")
        if meta.get("architecture", "bert") != "bert" or meta.get("pooling", "mean") != "mean":
            raise ValueError(f"unsupported sentence encoder {meta.get('architecture')}/{meta.get('pooling')}")
        weights = {k[len(PREFIX):]: v for k, v in arrays.items() if k.startswith(PREFIX)}
        return cls(tfile.read_text(encoding="utf-8"), weights, meta["layers"], meta["heads"],
                   scale=meta.get("scale", 1.0), max_tokens=meta.get("max_tokens", 128),
                   layer_norm_eps=meta.get("layer_norm_eps", 1e-12), normalize=meta.get("normalize", True),
                   head_tokens=meta.get("head_tokens", 0))
