"""A fine-tuned transformer classifier: a BERT encoder, mean pooling, one linear layer.

``probabilities = softmax((mean_pool(bert(text)) @ W + b) / temperature)``: the encoder is
:class:`yujing.service.models.sentence_encoder.SentenceEncoder` with ``normalize=False`` (all its
weights were trained with the head, ``finetune.py``), so the CPU (NumPy) and GPU (CuPy)
paths are the ones the frozen encoders use.

Optionally an n-gram model (``textclf``) trained on the same rows adds its logits:
``logits = encoder_logits + companion_weight * ngram_logits``, the weight chosen on held-out
rows (``train.py``). The two make different mistakes (sub-word context vs. exact character
n-grams), and the n-grams cost ~1 % of the transformer's time.

Storage (``weights.npz``, see ``quantize.py``): each part of the encoder (embedding tables,
attention projections, feed-forward layers) int8 per row or 4-bit (``q4``) as the recipe
says (``sentiment_e5``: int8 attention, the rest 4-bit); LayerNorms, biases and the head
float32; the companion is an artifact of its own in the ``ngrams/`` folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from yujing.service.models import SoftmaxModel
from yujing.service.models.artifact import ArtifactError, read_weights, register_loader, write_meta
from yujing.service.models.quantize import store
from yujing.service.models.sentence_encoder import PREFIX, SentenceEncoder

KIND = "fine-tuned-encoder"
WEIGHTS_FILE = "weights.npz"
COMPANION_DIR = "ngrams"


def weight_part(name: str) -> str:
    """Which part of a BERT encoder a weight belongs to: embeddings, attention or ffn."""
    if name.startswith("embeddings."):
        return "embeddings"
    return "attention" if ".attention." in name else "ffn"


class EncoderClassifier(SoftmaxModel):
    """TextModel: fine-tuned encoder + linear head (see module doc)."""

    def __init__(self, name: str, labels: Sequence[str], encoder: SentenceEncoder, W: np.ndarray,
                 b: np.ndarray, version: str = "1", temperature: float = 1.0,
                 companion: SoftmaxModel | None = None, companion_weight: float = 0.0):
        self.name = name
        self.version = str(version)
        self.labels = tuple(labels)
        self.encoder = encoder
        self.W = np.ascontiguousarray(W, np.float32)
        self.b = np.ascontiguousarray(b, np.float32)
        self.temperature = float(temperature)
        if self.W.shape != (encoder.dim, len(self.labels)) or self.b.shape != (len(self.labels),):
            raise ArtifactError(f"{name}: head {self.W.shape}/{self.b.shape} does not fit "
                                f"{encoder.dim} features and {len(self.labels)} labels")
        if companion is not None and tuple(companion.labels) != self.labels:
            raise ArtifactError(f"{name}: the n-gram companion's labels {companion.labels} differ")
        self.companion = companion
        self.companion_weight = float(companion_weight) if companion is not None else 0.0

    def encoder_logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts) @ self.W + self.b

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        z = self.encoder_logits(texts)
        if self.companion is not None and self.companion_weight:
            z += np.float32(self.companion_weight) * self.companion.logits(texts)
        return z

    def use_device(self, kind: str, device_id: int = 0) -> None:
        """Triton hook: on a GPU instance the encoder runs with CuPy when it is there."""
        if str(kind).upper().endswith("GPU"):
            self.encoder.to_gpu(int(device_id))
            if self.companion is not None:
                self.companion.use_device(kind, device_id)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, meta: dict, dtype: str | dict = "q4") -> dict:
        """``dtype``: one storage for every matrix, except that "q4" keeps the embedding
        tables int8; or a storage per part: ``{"embeddings": .., "attention": ..,
        "ffn": ..}`` (the attention projections, the feed-forward layers)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        parts = dtype if isinstance(dtype, dict) else {
            "embeddings": "int8" if dtype == "q4" else dtype, "attention": dtype, "ffn": dtype}
        arrays: dict[str, np.ndarray] = {}
        for key, arr in self.encoder.arrays().items():
            store(arrays, key, arr, parts[weight_part(key[len(PREFIX):])])
        arrays["head_W"] = self.W
        arrays["head_b"] = self.b
        np.savez_compressed(path / WEIGHTS_FILE, **arrays)
        self.encoder.save(path)
        full = dict(meta)
        full.update({"kind": KIND, "name": self.name, "labels": list(self.labels),
                     "temperature": self.temperature, "weights_file": WEIGHTS_FILE, "weights_dtype": dtype,
                     "sentence_encoder": {**full.get("sentence_encoder", {}), **self.encoder.meta()}})
        if self.companion is not None:
            self.companion.save(path / COMPANION_DIR, {"version": self.version, **full.get("companion", {})},
                                dtype=full.get("companion", {}).get("dtype", "float16"))
            full["companion"] = {**full.get("companion", {}), "folder": COMPANION_DIR,
                                 "weight": self.companion_weight}
        write_meta(path, full)
        return full


@register_loader(KIND)
def load(path: Path, meta: dict) -> EncoderClassifier:
    arrays = read_weights(path, meta, WEIGHTS_FILE)
    try:
        enc = SentenceEncoder.from_artifact(path, meta["sentence_encoder"], arrays)
        companion, weight = None, 0.0
        if meta.get("companion"):
            from yujing.service.models.artifact import load_model
            companion = load_model(Path(path) / meta["companion"].get("folder", COMPANION_DIR))
            weight = float(meta["companion"]["weight"])
        return EncoderClassifier(meta["name"], meta["labels"], enc, arrays["head_W"], arrays["head_b"],
                                 version=str(meta.get("version", "1")),
                                 temperature=float(meta.get("temperature", 1.0)),
                                 companion=companion, companion_weight=weight)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
        raise ArtifactError(f"{path}: bad {KIND} artifact ({exc})") from exc
