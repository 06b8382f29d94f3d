"""Fine-tuning a pretrained BERT encoder and a linear head on labelled texts (PyTorch).

Needs the optional ``finetune`` extra (``torch``, ``transformers``); serving never does: the
result is stored as an ``encoder_clf`` artifact and runs in NumPy (or CuPy on a GPU).

The model is Hugging Face ``BertModel`` (no pooler) + mean pooling over real tokens +
dropout + ``Linear(hidden, labels)``, the same computation as
:class:`yujing.service.models.encoder_clf.EncoderClassifier` (dropout aside); cross-entropy loss.
Optimiser: AdamW (weight decay off for biases and LayerNorms), linear warm-up over
``warmup`` of the steps then linear decay to 0, gradient norm clipped at 1. Batches of
``batch`` texts are cut from chunks of ``batch * 50`` shuffled texts sorted by length (little
padding), and the batch order is shuffled. Everything is seeded; on the CPU with a fixed
thread count a run repeats itself.

Vocabulary pruning (:func:`prune_vocabulary`): a multilingual encoder has 250k token
embeddings (96 M of its 118 M parameters); a model serves a few languages. Kept: the special
tokens, every piece the training texts use, and every single-character piece of the scripts
served (ASCII, Latin-1/Latin Extended, general punctuation, CJK punctuation, CJK unified
ideographs, full-width forms), so that an unseen Chinese word still falls back to its
characters. Training texts tokenise exactly as before (a unigram tokenizer's best split of a
text only uses pieces that are kept); other texts may split into smaller pieces.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from yujing.training.evaluate import decide


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 2
    lr: float = 6e-5
    batch: int = 32
    warmup: float = 0.06            # share of all steps
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_tokens: int = 128           # texts are cut to this many tokens (specials included)
    head_tokens: int = 0            # > 0: keep this many first tokens and the rest from the end
    seed: int = 0
    threads: int = 2

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneSettings":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def served_character(ch: str) -> bool:
    o = ord(ch)
    return ((0x20 < o < 0x7F) or (0xA0 <= o <= 0x24F) or (0x2000 <= o <= 0x206F)
            or (0x3000 <= o <= 0x303F) or (0x4E00 <= o <= 0x9FFF) or (0xFF00 <= o <= 0xFFEF))


def prune_vocabulary(pieces: Sequence[str], scores, special: dict[str, int], texts: Sequence[str],
                     tokenizer_json: Callable[..., str]) -> tuple[list[int], str]:
    """Kept piece ids (sorted; the special tokens must be the first ids) and the pruned
    tokenizer's JSON. ``tokenizer_json(pieces, scores, unk, bos, eos)`` builds a tokenizer."""
    from tokenizers import Tokenizer
    full = Tokenizer.from_str(tokenizer_json(pieces, scores, special["unk"], special["bos"], special["eos"]))
    used: set[int] = set(special.values())
    for enc in full.encode_batch(list(texts)):
        used.update(enc.ids)
    for i, p in enumerate(pieces):
        ch = p.lstrip("\u2581")
        if len(ch) == 1 and served_character(ch):
            used.add(i)
    keep = sorted(used)
    if keep[:len(special)] != sorted(special.values()) or max(special.values()) >= len(special):
        raise ValueError("pruning expects the special tokens to be ids 0..n-1")
    pruned = tokenizer_json([pieces[i] for i in keep], [float(scores[i]) for i in keep],
                            special["unk"], special["bos"], special["eos"])
    return keep, pruned


@dataclass
class FinetuneResult:
    weights: dict[str, np.ndarray]   # BertModel names, float32, matrices [out, in]
    W: np.ndarray                    # head [hidden, labels]
    b: np.ndarray                    # [labels]
    history: list[dict]              # per epoch: loss, validation accuracy per subset, seconds
    settings: dict


def finetune(weights: dict[str, np.ndarray], config: dict, tokenizer_json: str, texts: Sequence[str],
             y: np.ndarray, n_labels: int, settings: FinetuneSettings,
             validation: Sequence[tuple[str, Sequence[str], np.ndarray, Sequence[int] | None]] = (),
             log: Callable[[str], None] = print,
             head: tuple[np.ndarray, np.ndarray] | None = None) -> FinetuneResult:
    """Train encoder + head on ``texts``/``y``. ``validation``: (name, texts, y, classes) per
    subset, scored after every epoch (argmax over ``classes`` when given, e.g. negative vs
    positive for binary data). ``head``: a trained head ``(W [hidden, labels], b)`` to start
    from (a later fine-tuning stage); else the head starts at random."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    from yujing.service.models.sentence_encoder import token_ids

    s = settings
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    H = weights["embeddings.word_embeddings.weight"].shape[1]
    bc = BertConfig(vocab_size=weights["embeddings.word_embeddings.weight"].shape[0], hidden_size=H,
                    num_hidden_layers=config["num_hidden_layers"],
                    num_attention_heads=config["num_attention_heads"],
                    intermediate_size=weights["encoder.layer.0.intermediate.dense.weight"].shape[0],
                    max_position_embeddings=weights["embeddings.position_embeddings.weight"].shape[0],
                    type_vocab_size=weights["embeddings.token_type_embeddings.weight"].shape[0],
                    layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                    hidden_dropout_prob=s.dropout, attention_probs_dropout_prob=s.dropout)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(bc, add_pooling_layer=False)
            self.drop = torch.nn.Dropout(s.dropout)
            self.head = torch.nn.Linear(H, n_labels)

        def forward(self, ids, mask):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head(self.drop((h * m).sum(1) / m.sum(1).clamp(min=1)))

    model = Classifier()
    missing, unexpected = model.bert.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    if head is not None:
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(head[0].T, np.float32)))
            model.head.bias.copy_(torch.from_numpy(np.asarray(head[1], np.float32)))

    def ids_of(batch_texts):
        return token_ids(tok, batch_texts, s.max_tokens, s.head_tokens)   # as served

    def tensors(ids, rows):
        L = max(len(ids[i]) for i in rows)
        x = np.zeros((len(rows), L), np.int64)
        m = np.zeros((len(rows), L), np.int64)
        for r, i in enumerate(rows):
            x[r, :len(ids[i])] = ids[i]
            m[r, :len(ids[i])] = 1
        return torch.from_numpy(x), torch.from_numpy(m)

    train_ids = ids_of(texts)
    lengths = np.array([len(t) for t in train_ids])
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(s.seed)

    def epoch_batches():
        perm = rng.permutation(len(train_ids))
        chunk, out = s.batch * 50, []
        for a in range(0, len(perm), chunk):
            c = perm[a:a + chunk]
            c = c[np.argsort(lengths[c], kind="stable")]
            out += [c[b:b + s.batch] for b in range(0, len(c), s.batch)]
        rng.shuffle(out)
        return out

    def validate() -> dict:
        model.eval()
        res = {}
        with torch.no_grad():
            for name, vtexts, vy, classes in validation:
                vids = ids_of(vtexts)
                order = np.argsort([len(t) for t in vids], kind="stable")
                z = np.zeros((len(vids), n_labels), np.float32)
                for a in range(0, len(order), 64):
                    rows = order[a:a + 64]
                    z[rows] = model(*tensors(vids, rows)).numpy()
                pred = decide(z, classes or None)   # as the test metrics decide
                res[name] = round(float((pred == np.asarray(vy)).mean()), 4)
        model.train()
        return res

    steps_per_epoch = math.ceil(len(train_ids) / s.batch)
    total = steps_per_epoch * s.epochs
    warm = max(1, int(s.warmup * total))
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": s.weight_decay},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))
    history: list[dict] = []
    t0 = time.time()
    step = 0
    model.train()
    for ep in range(s.epochs):
        losses = []
        for rows in epoch_batches():
            loss = torch.nn.functional.cross_entropy(model(*tensors(train_ids, rows)), torch.from_numpy(y[rows]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                el = time.time() - t0
                log(f"finetune: step {step}/{total} loss {np.mean(losses[-100:]):.4f} "
                    f"{el:.0f}s, about {el / step * (total - step):.0f}s left")
        val = validate()
        history.append({"epoch": ep + 1, "train_loss": round(float(np.mean(losses)), 4),
                        "validation_accuracy": val, "seconds": round(time.time() - t0, 1)})
        log(f"finetune: epoch {ep + 1}/{s.epochs} loss {np.mean(losses):.4f} validation {val}")
    model.eval()
    out = {k: v.detach().numpy().astype(np.float32) for k, v in model.bert.state_dict().items()
           if k in weights}
    return FinetuneResult(out, model.head.weight.detach().numpy().T.copy(),
                          model.head.bias.detach().numpy().copy(), history, asdict(s))
