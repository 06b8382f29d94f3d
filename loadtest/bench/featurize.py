"""``yujing bench featurize``: the compiled text features against the plain reference, side
by side in one process (issue 13).

    yujing bench featurize [--batch 1 256 4096] [--seconds 1.5] [--out FILE]

Both sides featurise the same batches: ``yujing.service.featurize.featurize_batch`` (the
Numba kernel the service calls) and ``yujing.service.featurize_reference.featurize_batch``
(the numpy/regex definition it is tested against). The two run in alternating rounds,
so a busy neighbour slows both alike; the figure is the median over rounds of the time
per call, divided by the batch. Two corpora: ``traffic``, the texts the load generator
sends (``yujing.loadtest.traffic``: short Chinese and English customer-service turns,
empty turns left out), and ``long``, eight of those joined per text (about 200
characters). For the compiled side the call is also split into its Python preparation
(join, UTF-32 encode, NFKC + lowercase) and the kernel call. Run with
``NUMBA_NUM_THREADS=1``. The first-compile and cached-load times of the kernel are
measured in child processes with a fresh numba cache folder.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

_COMPILE = ("import time; t = time.perf_counter(); import yujing.service.featurize as f; "
            "print(f.warm_up(), time.perf_counter() - t)")


def corpus(kind: str, n: int, seed: int = 3) -> list[str]:
    from yujing.loadtest.traffic import ConversationTraffic

    traffic = ConversationTraffic(seed=seed)
    per_text = 8 if kind == "long" else 1
    texts: list[str] = []
    pieces: list[str] = []
    while len(texts) < n:
        t = traffic.next_turn().text
        if not t:
            continue
        pieces.append(t)
        if len(pieces) == per_text:
            texts.append(" ".join(pieces))
            pieces = []
    return texts


def _per_call(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _compile_times() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = {}
        for name in ("first_compile", "cached_load"):
            res = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                                 text=True, timeout=600)
            warm, with_import = (float(x) for x in res.stdout.split())
            out[f"{name}_s"] = round(warm, 3)
            out[f"{name}_with_import_s"] = round(with_import, 3)
    return out


def bench_featurize(batches=(1, 256, 4096), seconds: float = 1.5, rounds: int = 7,
                    compile_times: bool = True) -> dict:
    import yujing.service.featurize as compiled
    import yujing.service.featurize_reference as reference
    from yujing.kernels import text as kernel

    compiled.warm_up()
    rows = []
    for kind in ("traffic", "long"):
        pool = corpus(kind, max(batches))
        for b in batches:
            texts = pool[:b]
            want, got = reference.featurize_batch(texts), compiled.featurize_batch(texts)
            equal = all(np.array_equal(getattr(want, f), getattr(got, f)) for f in
                        ("words", "negation_words", "intensity", "escalation_mask", "simhash",
                         "languages"))
            raw = "\x00".join(texts)
            a = compiled._code_points(raw)
            low = compiled._normalized_lower(raw, a)
            sides = {
                "compiled": lambda: compiled.featurize_batch(texts),
                "reference": lambda: reference.featurize_batch(texts),
                "compiled_prep": lambda: compiled._normalized_lower(
                    raw, compiled._code_points("\x00".join(texts))),
                "compiled_kernel": lambda: kernel.featurize_codes(
                    a, low, len(texts), reference._CLASS, *compiled._NEGATION_PROGRAM,
                    *compiled._ESCALATION_PROGRAM),
            }
            one = _per_call(sides["reference"], 1)
            reps = max(1, int(seconds / rounds / 2 / max(one, 1e-6)))
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(rounds):
                for name, fn in sides.items():
                    times[name].append(_per_call(fn, reps))
            us = {k: statistics.median(v) / b * 1e6 for k, v in times.items()}
            rows.append({
                "corpus": kind, "batch": b, "chars_per_text": round(len(raw) / b - 1 + 1 / b, 1),
                "equal": bool(equal), "reps_per_round": reps, "rounds": rounds,
                **{f"{k}_us_per_text": round(v, 3) for k, v in us.items()},
                "reference_over_compiled": round(us["reference"] / us["compiled"], 2),
            })
            print(f"{kind:8s} batch {b:5d}: compiled {us['compiled']:8.2f} us/text "
                  f"(prep {us['compiled_prep']:.2f}, kernel {us['compiled_kernel']:.2f}), "
                  f"reference {us['reference']:8.2f}: {us['reference'] / us['compiled']:.2f}x"
                  f"{'' if equal else '  NOT EQUAL'}", file=sys.stderr)
    out = {"suite": "featurize", "numba_num_threads": os.environ.get("NUMBA_NUM_THREADS"),
           "rows": rows}
    if compile_times:
        out["kernel_compile"] = _compile_times()
    return out
