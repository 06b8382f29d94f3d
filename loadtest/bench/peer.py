"""``yujing bench peer``: the same per-turn indicators, computed three ways on one log.

    yujing bench peer [--turns 1000000] [--peer-sessions 20000] [--batch 4096] [--ref-turns 3000]

1. our CPU kernel (:mod:`yujing.kernels.update_cpu`), the whole log in batches of ``--batch``;
2. polars: one lazy query over the whole log (group by session, ordered by arrival;
   cumulative sums / EWMs / cumulative maxima / an as-of join for the time window);
3. the plain reference (:mod:`yujing.kernels.reference`) on a small sample of the same
   generator (it is quadratic per session, on purpose).

The log is generated in timestamp order per session (and globally: arrival order is
timestamp order), so "the session clock" is simply the turn's own timestamp and the
polars query needs no out-of-order handling; that is the one simplification the peer
gets, and it is stated in BENCHMARKS.md. Every indicator both compute is asserted equal
to 1e-6 on every turn.

Indicators polars computes here (16 of 19): sentiment_ewma, neg_share_turns,
neg_share_window, sentiment_trend, consecutive_negative, peak_negativity, message_rate,
response_delay_sla, unanswered_wait_sla, negation_share, intensity, escalation,
intent_exposure, transfers, session_minutes, bot_turns_unhandled. Left out (see
``LEFT_OUT``): repeat_complaints (a SimHash Hamming test against a ring of the last 4
customer texts plus a same-intent test, OR-ed, conditioned, then counted over the last
N), agent_fatigue (state keyed by agent across sessions) and dissatisfaction (a forward
fill of the model's byte). The score, level and
priority (sequential state machines) are computed by the kernel only.
"""
from __future__ import annotations

import math
import warnings
import time

import numpy as np

from yujing.kernels import layout as L

LN2 = math.log(2.0)

# indicators the polars query computes, by name (order of the output columns)
POLARS_INDICATORS = (
    "sentiment_ewma", "neg_share_turns", "neg_share_window", "sentiment_trend",
    "consecutive_negative", "peak_negativity", "message_rate", "response_delay_sla",
    "unanswered_wait_sla", "negation_share", "intensity", "escalation", "intent_exposure",
    "transfers", "session_minutes", "bot_turns_unhandled",
)
LEFT_OUT = {
    "repeat_complaints": "SimHash near-duplicate test (Hamming distance <= 8 to any of the last 4 "
                         "customer texts of >= 3 tokens) OR same intent as the previous customer "
                         "turn, counted when negative or a complaint, over the last N turns: needs "
                         "four shifted uint64 XOR popcounts per row plus a rolling count; not written",
    "agent_fatigue": "state keyed by agent across sessions (12 x 10-min buckets per agent, head = "
                     "the agent's newest bucket): a second as-of join keyed by agent; not written",
    "dissatisfaction": "the latest scored customer text's P(dissatisfied) in 255ths: a forward fill "
                       "over the customer turns the model scored; added after this comparison, not written",
}


def generate_log(n_turns: int, n_sessions: int, seed: int = 0, n_agents: int = 1024,
                 t0: int = 1_700_000_000_000):
    """``n_turns`` turns over ``n_sessions`` sessions in the kernels' input layout.

    Every session starts at a random time in the first hour and advances by random gaps
    (0.5 s .. 120 s); the log is the union sorted by timestamp (stable), so arrival order
    is timestamp order and each session's timestamps never go back. Returns
    ``(ti, tf, th)`` with slot = session index and ``T_NEW`` on each session's first turn.
    """
    rng = np.random.default_rng(seed)
    sess = rng.integers(0, n_sessions, n_turns)
    sess[:n_sessions] = np.arange(n_sessions)[:min(n_sessions, n_turns)]
    order = np.argsort(sess, kind="stable")
    gaps = rng.integers(500, 120_000, n_turns)
    counts = np.bincount(sess, minlength=n_sessions)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    cs = np.cumsum(gaps)
    # per-session cumulative gap, reset at each session start
    first = np.zeros(n_turns, bool)
    first[starts[counts > 0]] = True
    base = np.repeat(cs[starts] - gaps[starts], counts)
    start_t = rng.integers(0, 3_600_000, n_sessions)
    ts_sorted = t0 + np.repeat(start_t, counts) + (cs - base)
    ts = np.empty(n_turns, np.int64)
    ts[order] = ts_sorted
    is_first = np.empty(n_turns, bool)
    is_first[order] = first
    arrival = np.lexsort((np.arange(n_turns), ts))
    sess, ts, is_first = sess[arrival], ts[arrival], is_first[arrival]
    n = n_turns
    ti = np.zeros((L.TI_ROWS, n), np.int64)
    tf = np.zeros((L.TFL_ROWS, n), np.float64)
    ti[L.T_SLOT] = sess
    ti[L.T_TS] = ts
    ti[L.T_NEW] = is_first
    agent = rng.integers(-1, n_agents, n)
    ti[L.T_AGENT] = agent
    _, first_idx = np.unique(np.where(agent >= 0, agent, n_agents), return_index=True)
    new_agent = np.zeros(n, np.int64)
    new_agent[first_idx] = 1
    new_agent[agent < 0] = 0
    ti[L.T_NEW_AGENT] = new_agent
    speaker = rng.choice(np.array([1, 1, 1, 2, 2, 3]), n)
    ti[L.T_SPEAKER] = speaker
    ti[L.T_EVENT] = rng.choice(np.array([0] * 12 + [1, 2, 3, 4, 5]), n)
    has_text = rng.random(n) < 0.92
    sentiment = rng.uniform(-1, 1, n)
    negative = sentiment < -0.2
    complaint = rng.random(n) < 0.3
    # every text of the peer's log carries a sentiment (the polars query assumes it)
    ti[L.T_FLAGS] = (np.where(has_text, L.TFLAG_HAS_TEXT | L.TFLAG_SENTIMENT, 0)
                     | np.where(negative, L.TFLAG_NEGATIVE, 0)
                     | np.where(complaint, L.TFLAG_COMPLAINT, 0))
    ti[L.T_INTENT] = rng.integers(0, 27, n)
    esc = rng.random(n) < 0.1
    ti[L.T_ESC_MASK] = np.where(esc, rng.integers(1, 256, n), 0)
    words = rng.integers(0, 30, n)
    ti[L.T_WORDS] = words
    ti[L.T_NEG_WORDS] = (rng.random(n) * (words + 1)).astype(np.int64) // 3
    ti[L.T_RAISE] = np.where(rng.random(n) < 0.1, rng.integers(0, 2, n), 0)
    ti[L.T_TIER_RAISE] = rng.integers(0, 2, n)
    ti[L.T_FLOOR] = np.where(rng.random(n) < 0.05, rng.integers(0, 4, n), 0)
    tf[L.TF_SENTIMENT] = sentiment
    tf[L.TF_INTENT_WEIGHT] = rng.uniform(0, 1, n)
    tf[L.TF_INTENSITY] = rng.uniform(0, 1, n)
    tf[L.TF_ESC_LEVEL] = np.where(esc, rng.uniform(0, 1, n), 0.0)
    tf[L.TF_SLA_MS] = rng.choice(np.array([20_000.0, 60_000.0, 3_600_000.0]), n)
    base_h = rng.integers(0, 2**63, 4, dtype=np.int64).astype(np.uint64)
    flips = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) & \
        rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) & \
        rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    th = base_h[rng.integers(0, 4, n)] ^ (flips & rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64))
    th[rng.random(n) < 0.05] = 0
    return ti, tf, th


def to_frame(ti, tf):
    """The log as a polars DataFrame (the peer's input; built outside its timing)."""
    import polars as pl

    return pl.DataFrame({
        "seq": np.arange(ti.shape[1], dtype=np.int64),
        "session": ti[L.T_SLOT], "ts": ti[L.T_TS], "speaker": ti[L.T_SPEAKER], "event": ti[L.T_EVENT],
        "flags": ti[L.T_FLAGS], "words": ti[L.T_WORDS], "neg_words": ti[L.T_NEG_WORDS],
        "sentiment": tf[L.TF_SENTIMENT], "intent_weight": tf[L.TF_INTENT_WEIGHT],
        "intensity_in": tf[L.TF_INTENSITY], "esc_level": tf[L.TF_ESC_LEVEL], "sla": tf[L.TF_SLA_MS],
    })


def polars_query(df, pf):
    """The indicators of every turn, as a lazy polars query over the whole log.

    Turn-based indicators run on the customer turns of each session (``over("session")``,
    rows in arrival order) and are joined back and forward-filled to every turn; decayed
    sums and maxima use the closed form ``exp(-(T - t0)/tau) * cum_op(x_k exp((t_k - t0)/tau))``
    with ``t0`` the session's first timestamp (exact for logs whose sessions last less
    than ~700 time constants, which this generator's do); the time window is a
    cumulative count minus the count at the last customer turn before the window, found
    by an as-of join on the bucket number.
    """
    import polars as pl

    warnings.filterwarnings("ignore", message="Sortedness of columns")  # sorted by (session, key) above
    a_fast, a_slow = pf[L.P_ALPHA_FAST], pf[L.P_ALPHA_SLOW]
    n_keep = int(pf[L.P_NEG_TURNS_N])
    bms = int(pf[L.P_BUCKET_MS])
    lam = pf[L.P_NEGATION_DECAY]
    tau = pf[L.P_RATE_TAU_MS]
    k_peak, k_esc, k_exp = LN2 / pf[L.P_HL_PEAK_MS], LN2 / pf[L.P_HL_ESCALATION_MS], LN2 / pf[L.P_HL_EXPOSURE_MS]
    has_text = (pl.col("flags") & L.TFLAG_HAS_TEXT) != 0
    neg = ((pl.col("flags") & L.TFLAG_NEGATIVE) != 0)
    S = "session"

    lf = df.lazy().sort("seq").with_columns(
        cust=(pl.col("speaker") == L.SPEAKER_CUSTOMER) & has_text,
        reply=((pl.col("speaker") == L.SPEAKER_AGENT) | (pl.col("speaker") == L.SPEAKER_BOT)) & has_text,
        neg=neg,
        t=(pl.col("ts") - pl.col("ts").first().over(S)).cast(pl.Float64),
        bucket=pl.col("ts") // bms,
    )
    # --- per customer turn ----------------------------------------------------------------
    cust = lf.filter(pl.col("cust")).with_columns(
        nb=pl.col("neg").cast(pl.Int64),
        run_grp=(~pl.col("neg")).cast(pl.Int64).cum_sum().over(S),
    ).with_columns(
        sentiment_ewma=pl.col("sentiment").ewm_mean(alpha=a_fast, adjust=False).over(S),
        slow=pl.col("sentiment").ewm_mean(alpha=a_slow, adjust=False).over(S),
        neg_share_turns=pl.col("nb").cast(pl.Float64).rolling_mean(n_keep, min_samples=1).over(S),
        consecutive_negative=pl.col("nb").cum_sum().over(S, "run_grp").cast(pl.Float64),
        neg_num=pl.col("neg_words").cast(pl.Float64).ewm_mean(alpha=1 - lam, adjust=True).over(S),
        neg_den=pl.col("words").cast(pl.Float64).ewm_mean(alpha=1 - lam, adjust=True).over(S),
        intensity=pl.col("intensity_in").ewm_mean(alpha=pf[L.P_ALPHA_INTENSITY], adjust=False).over(S),
    ).with_columns(
        sentiment_trend=pl.col("sentiment_ewma") - pl.col("slow"),
        negation_share=pl.when(pl.col("neg_den") > 0).then(pl.col("neg_num") / pl.col("neg_den")).otherwise(0.0),
    )
    turn_based = ["sentiment_ewma", "neg_share_turns", "sentiment_trend", "consecutive_negative",
                  "negation_share", "intensity"]
    # the time window: customer turns with bucket > head - WB, head = this turn's bucket
    cnt = lf.with_columns(
        c_all=pl.col("cust").cast(pl.Int64).cum_sum().over(S),
        c_neg=(pl.col("cust") & pl.col("neg")).cast(pl.Int64).cum_sum().over(S),
    )
    last_per_bucket = cnt.filter(pl.col("cust")).group_by(S, "bucket").agg(
        pl.col("c_all").last().alias("c_all_b"), pl.col("c_neg").last().alias("c_neg_b")
    ).sort(S, "bucket")
    win = cnt.with_columns(edge=pl.col("bucket") - L.WINDOW_BUCKETS).sort(S, "edge").join_asof(
        last_per_bucket, left_on="edge", right_on="bucket", by=S, strategy="backward"
    ).with_columns(
        w_all=pl.col("c_all") - pl.col("c_all_b").fill_null(0),
        w_neg=pl.col("c_neg") - pl.col("c_neg_b").fill_null(0),
    ).select("seq", neg_share_window=pl.when(pl.col("w_all") > 0)
             .then(pl.col("w_neg") / pl.col("w_all")).otherwise(0.0))
    # --- every turn -----------------------------------------------------------------------
    c = pl.col("cust")
    t = pl.col("t")
    wait_start = pl.when(c | (pl.col("event") == L.EVENT_HOLD)).then(pl.col("ts"))
    full = lf.with_columns(
        # replies close a wait: rows after reply k (and reply k+1 itself) form wait group k
        wgrp=(pl.col("reply").cast(pl.Int64).cum_sum() - pl.col("reply").cast(pl.Int64)).over(S),
        bgrp=((pl.col("speaker") == L.SPEAKER_AGENT) & has_text | (pl.col("event") == L.EVENT_HANDOFF))
        .cast(pl.Int64).cum_sum().over(S),
        ws=wait_start,
    ).with_columns(
        since=pl.col("ws").cum_min().over(S, "wgrp").forward_fill().over(S, "wgrp"),
    ).with_columns(
        delay=pl.when(pl.col("reply")).then(pl.col("ts") - pl.col("since")).cast(pl.Float64),
    ).with_columns(
        delay_ewma=pl.col("delay").ewm_mean(alpha=pf[L.P_ALPHA_DELAY], adjust=False, ignore_nulls=True)
        .over(S).forward_fill().over(S).fill_null(0.0),
    ).with_columns(
        response_delay_sla=pl.col("delay_ewma") / pl.col("sla"),
        unanswered_wait_sla=pl.when(pl.col("reply") | pl.col("since").is_null()).then(0.0)
        .otherwise((pl.col("ts") - pl.col("since")) / pl.col("sla")),
        peak_negativity=(pl.when(c).then(pl.max_horizontal(-pl.col("sentiment"), 0.0) * (t * k_peak).exp())
                         .otherwise(0.0).cum_max().over(S) * (-t * k_peak).exp()),
        escalation=(pl.when(c).then(pl.col("esc_level") * (t * k_esc).exp()).otherwise(0.0).cum_max().over(S)
                    * (-t * k_esc).exp()),
        intent_exposure=(pl.when(c).then(pl.col("intent_weight") * (t * k_exp).exp()).otherwise(0.0)
                         .cum_sum().over(S) * (-t * k_exp).exp()),
        message_rate=(pl.when(c).then((t / tau).exp()).otherwise(0.0).cum_sum().over(S)
                      * (-t / tau).exp() * (60_000.0 / tau)),
        transfers=(pl.col("event") == L.EVENT_TRANSFER).cast(pl.Float64).cum_sum().over(S),
        session_minutes=t / 60_000.0,
        bot_turns_unhandled=((pl.col("speaker") == L.SPEAKER_BOT) & has_text).cast(pl.Float64)
        .cum_sum().over(S, "bgrp"),
    )
    out = full.join(cust.select("seq", *turn_based), on="seq", how="left").sort("seq").with_columns(
        [pl.col(x).forward_fill().over(S).fill_null(0.0) for x in turn_based]
    ).join(win, on="seq", how="left").sort("seq")
    return out.select("seq", *POLARS_INDICATORS)


def run_kernel(ti, tf, th, pf, batch: int, n_slots: int, n_agents: int = 1024):
    """The whole log through the CPU kernel in batches: (seconds, of)."""
    from yujing.kernels.update_cpu import CpuKernels

    k = CpuKernels()
    s = L.new_session_arrays(n_slots)
    a = L.new_agent_arrays(n_agents)
    n = ti.shape[1]
    chunks = [(np.ascontiguousarray(ti[:, lo:lo + batch]), np.ascontiguousarray(tf[:, lo:lo + batch]),
               np.ascontiguousarray(th[lo:lo + batch])) for lo in range(0, n, batch)]
    of_all = np.empty((L.OF_ROWS, n))
    t0 = time.perf_counter()
    lo = 0
    for cti, ctf, cth in chunks:
        of, _ = k.apply(s, a, cti, ctf, cth, pf)
        of_all[:, lo:lo + of.shape[1]] = of
        lo += of.shape[1]
    return time.perf_counter() - t0, of_all


def compare(of, frame, names=POLARS_INDICATORS) -> dict:
    """Max |kernel - polars| per indicator (every turn)."""
    out = {}
    for name in names:
        v = frame[name].to_numpy()
        out[name] = float(np.max(np.abs(of[L.IND[name]] - v))) if v.size else 0.0
    return out


def bench_peer(turns: int = 1_000_000, sessions: int = 20_000, batch: int = 4096, ref_turns: int = 3_000,
               repeats: int = 3, seed: int = 0, tol: float = 1e-6) -> dict:
    import os

    import polars as pl

    from yujing.service.policy import load_policy

    pf = load_policy().pf
    t = time.perf_counter()
    ti, tf, th = generate_log(turns, sessions, seed)
    gen_s = time.perf_counter() - t
    df = to_frame(ti, tf)
    # warm both (numba compile / load, polars thread pool)
    wti, wtf, wth = generate_log(5000, 100, seed + 1)
    run_kernel(wti, wtf, wth, pf, batch, 100)
    polars_query(to_frame(wti, wtf), pf).collect()

    k_times, p_times = [], []
    of = frame = None
    for _ in range(repeats):
        kt, of = run_kernel(ti, tf, th, pf, batch, sessions)
        k_times.append(kt)
        t = time.perf_counter()
        frame = polars_query(df, pf).collect()
        p_times.append(time.perf_counter() - t)
    diffs = compare(of, frame)
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, f"kernel and polars disagree: {bad}"

    # the reference on a small sample of the same generator: kernel == reference on
    # every indicator, polars == reference on its 16
    from yujing.kernels.reference import reference

    rti, rtf, rth = generate_log(ref_turns, max(10, ref_turns // 50), seed + 2)
    t = time.perf_counter()
    rof, _ = reference(rti, rtf, rth, pf)
    ref_s = time.perf_counter() - t
    _, kof = run_kernel(rti, rtf, rth, pf, batch, max(10, ref_turns // 50))
    rframe = polars_query(to_frame(rti, rtf), pf).collect()
    ref_vs_kernel = float(np.max(np.abs(kof[:L.N_INDICATORS] - rof[:L.N_INDICATORS])))
    ref_vs_polars = {name: float(np.max(np.abs(rframe[name].to_numpy() - rof[L.IND[name]])))
                     for name in POLARS_INDICATORS}
    assert ref_vs_kernel <= tol, f"kernel vs reference: {ref_vs_kernel}"
    bad = {k: v for k, v in ref_vs_polars.items() if not v <= tol}
    assert not bad, f"polars vs reference: {bad}"

    kt, pt = min(k_times), min(p_times)
    return {
        "turns": turns, "sessions": sessions, "kernel_batch": batch, "repeats": repeats,
        "generate_s": gen_s,
        "kernel": {"seconds": kt, "turns_per_s": turns / kt, "all_seconds": k_times, "threads": 1,
                   "indicators": L.N_INDICATORS, "note": f"all {L.N_INDICATORS} indicators, score, level, priority"},
        "polars": {"seconds": pt, "turns_per_s": turns / pt, "all_seconds": p_times,
                   "threads": pl.thread_pool_size(), "version": pl.__version__,
                   "indicators": len(POLARS_INDICATORS), "computed": list(POLARS_INDICATORS),
                   "left_out": LEFT_OUT},
        "reference": {"turns": ref_turns, "seconds": ref_s, "turns_per_s": ref_turns / ref_s,
                      "max_abs_diff_vs_kernel_all_18": ref_vs_kernel,
                      "max_abs_diff_vs_polars": ref_vs_polars},
        "max_abs_diff_kernel_vs_polars": diffs,
        "tolerance": tol,
        "ratio_kernel_over_polars": pt / kt,
        "ratio_kernel_over_polars_per_core": (pt * pl.thread_pool_size()) / kt,
        "ratio_kernel_over_reference": (turns / kt) / (ref_turns / ref_s),
        "cpus": os.cpu_count(),
    }
