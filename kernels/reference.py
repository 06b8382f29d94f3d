"""A plain-Python reference for every indicator, recomputed from the full history.

Where the kernels fold one turn at a time into a few numbers per session, this module
keeps every turn and evaluates each indicator from its definition (closed-form EWMAs,
sums of decayed terms, window counts over the whole list). It is slow on purpose and
exists to check :mod:`yujing.kernels.update_cpu` and :mod:`yujing.kernels.update_gpu`.

Input: the concatenated per-turn arrays of every batch ever applied (``ti``, ``tf``,
``th`` in the layout of :mod:`yujing.kernels.layout`); a session's life runs from a turn with
``T_NEW`` set to the next one on the same slot (same for agents and ``T_NEW_AGENT``).
Output: ``(of, oi)`` shaped like the kernels' outputs.

:func:`sla_scan_reference` is the same kind of check for the scheduler's SLA scan
(:mod:`yujing.kernels.scan`): a Python loop over the table arrays themselves.
"""
from __future__ import annotations

import math

import numpy as np

from yujing.kernels import layout as L


def _ewma(values, alpha):
    """EWMA started at the first value: (1-a)^(n-1) v0 + sum_k a (1-a)^(n-1-k) v_k."""
    n = len(values)
    if n == 0:
        return 0.0
    out = (1 - alpha) ** (n - 1) * values[0]
    for k in range(1, n):
        out += alpha * (1 - alpha) ** (n - 1 - k) * values[k]
    return out


def _decay(dt, half_life):
    return math.exp(-dt * math.log(2.0) / half_life)


def _popcount(x: int) -> int:
    return bin(int(x)).count("1")


def reference(ti, tf, th, pf):
    n = ti.shape[1]
    of = np.zeros((L.OF_ROWS, n))
    oi = np.zeros((L.OI_ROWS, n), dtype=np.int64)
    life_start: dict[int, int] = {}
    agent_start: dict[int, int] = {}
    levels: dict[int, int] = {}  # slot -> level after the previous turn of its life
    bms = int(pf[L.P_BUCKET_MS])
    abms = int(pf[L.P_AGENT_BUCKET_MS])
    N = int(pf[L.P_NEG_TURNS_N])
    for i in range(n):
        s = int(ti[L.T_SLOT, i])
        if ti[L.T_NEW, i]:
            life_start[s] = i
            levels[s] = 0
        a = int(ti[L.T_AGENT, i])
        if a >= 0 and ti[L.T_NEW_AGENT, i]:
            agent_start[a] = i
        hist = [j for j in range(life_start[s], i + 1) if ti[L.T_SLOT, j] == s]

        # clock
        t_eff, clock = {}, -1
        for j in hist:
            clock = max(clock, int(ti[L.T_TS, j]))
            t_eff[j] = clock
        T = clock

        def is_msg(j, who):
            return ti[L.T_SPEAKER, j] == who and (ti[L.T_FLAGS, j] & L.TFLAG_HAS_TEXT)

        cust = [j for j in hist if is_msg(j, L.SPEAKER_CUSTOMER)]
        sent = [float(tf[L.TF_SENTIMENT, j]) for j in cust]
        # the sentiment EWMAs are over the customer turns that carry a sentiment
        sent_known = [float(tf[L.TF_SENTIMENT, j]) for j in cust if ti[L.T_FLAGS, j] & L.TFLAG_SENTIMENT]
        neg = [bool(ti[L.T_FLAGS, j] & L.TFLAG_NEGATIVE) for j in cust]
        ind = np.zeros(L.N_INDICATORS)
        fast = _ewma(sent_known, pf[L.P_ALPHA_FAST])
        ind[0] = fast
        last_n = neg[-N:]
        ind[1] = sum(last_n) / len(last_n) if last_n else 0.0
        head = T // bms
        in_win = [k for k, j in enumerate(cust) if int(ti[L.T_TS, j]) // bms > head - L.WINDOW_BUCKETS]
        ind[2] = sum(neg[k] for k in in_win) / len(in_win) if in_win else 0.0
        ind[3] = fast - _ewma(sent_known, pf[L.P_ALPHA_SLOW])
        run = 0
        for x in reversed(neg):
            if not x:
                break
            run += 1
        ind[4] = run
        ind[5] = max([max(0.0, -sent[k]) * _decay(T - t_eff[j], pf[L.P_HL_PEAK_MS])
                      for k, j in enumerate(cust)], default=0.0)
        repeats = []
        for k, j in enumerate(cust):
            similar = False
            h = int(th[j])
            if ti[L.T_WORDS, j] >= pf[L.P_REPEAT_MIN_WORDS] and h != 0:
                for prev in cust[max(0, k - L.SIMHASH_RING):k]:
                    if _popcount(h ^ int(th[prev])) <= pf[L.P_NEAR_DUP_BITS]:
                        similar = True
            complaint = bool(ti[L.T_FLAGS, j] & L.TFLAG_COMPLAINT)
            if k > 0 and ti[L.T_INTENT, j] >= 0 and ti[L.T_INTENT, j] == ti[L.T_INTENT, cust[k - 1]]:
                similar = True
            repeats.append(similar and (neg[k] or complaint))
        r = sum(repeats[-N:])
        ind[6] = r + 1 if r else 0
        tau = pf[L.P_RATE_TAU_MS]
        ind[7] = sum(math.exp(-(T - t_eff[j]) / tau) for j in cust) * 60000.0 / tau

        delays, since, bot_run, bot_mode = [], L.NO_WAIT, 0, False
        for j in hist:
            ev = ti[L.T_EVENT, j]
            if ev == L.EVENT_HANDOFF:
                bot_run, bot_mode = 0, False
            if ev == L.EVENT_HOLD and since == L.NO_WAIT:
                since = t_eff[j]
            if is_msg(j, L.SPEAKER_CUSTOMER):
                if since == L.NO_WAIT:
                    since = t_eff[j]
            elif is_msg(j, L.SPEAKER_AGENT) or is_msg(j, L.SPEAKER_BOT):
                if since != L.NO_WAIT:
                    delays.append(float(t_eff[j] - since))
                    since = L.NO_WAIT
                if is_msg(j, L.SPEAKER_BOT):
                    bot_run, bot_mode = bot_run + 1, True
                else:
                    bot_run, bot_mode = 0, False
        sla = tf[L.TF_SLA_MS, i]
        ind[8] = _ewma(delays, pf[L.P_ALPHA_DELAY]) / sla
        ind[9] = (T - since) / sla if since != L.NO_WAIT else 0.0
        lam = pf[L.P_NEGATION_DECAY]
        m = len(cust)
        num = sum(lam ** (m - 1 - k) * float(ti[L.T_NEG_WORDS, j]) for k, j in enumerate(cust))
        den = sum(lam ** (m - 1 - k) * float(ti[L.T_WORDS, j]) for k, j in enumerate(cust))
        ind[10] = num / den if den > 0 else 0.0
        ind[11] = _ewma([float(tf[L.TF_INTENSITY, j]) for j in cust], pf[L.P_ALPHA_INTENSITY])
        ind[12] = max([tf[L.TF_ESC_LEVEL, j] * _decay(T - t_eff[j], pf[L.P_HL_ESCALATION_MS])
                       for j in cust], default=0.0)
        ind[13] = sum(tf[L.TF_INTENT_WEIGHT, j] * _decay(T - t_eff[j], pf[L.P_HL_EXPOSURE_MS]) for j in cust)
        ind[14] = sum(1 for j in hist if ti[L.T_EVENT, j] == L.EVENT_TRANSFER)
        ind[15] = (T - min(int(ti[L.T_TS, j]) for j in hist)) / 60000.0
        ind[16] = bot_run
        if a >= 0:
            ahist = [j for j in range(agent_start[a], i + 1) if ti[L.T_AGENT, j] == a]
            ahead = max(int(ti[L.T_TS, j]) // abms for j in ahist)
            ind[17] = sum(1 for j in ahist if is_msg(j, L.SPEAKER_CUSTOMER)
                          and ti[L.T_FLAGS, j] & L.TFLAG_NEGATIVE
                          and int(ti[L.T_TS, j]) // abms > ahead - L.AGENT_BUCKETS)
        scored = [j for j in cust if ti[L.T_FLAGS, j] & L.TFLAG_DISSATISFACTION]
        ind[18] = L.dissatisfaction_q(float(tf[L.TF_DISSATISFACTION, scored[-1]])) / L.DISSAT_SCALE if scored else 0.0

        # score: weight * clip(risk / saturation, 0, 1), summed, capped at 100
        pts = []
        for k, name in enumerate(L.INDICATORS):
            risk = L.indicator_risk(name, ind[k])
            pts.append(pf[L.P_WEIGHTS + k] * min(1.0, max(0.0, risk / pf[L.P_SATURATION + k])))
        total = sum(pts)
        score = min(100.0, total)
        ranked = sorted((p, -k) for k, p in enumerate(pts) if p > 0)[::-1][:L.TOP_REASONS]

        th_by_level = {1: pf[L.P_TH_BLUE], 2: pf[L.P_TH_YELLOW], 3: pf[L.P_TH_RED]}
        raw = max([lv for lv, t in th_by_level.items() if score >= t], default=0)
        level = levels[s]
        if raw >= level:
            level = raw
        elif ti[L.T_SPEAKER, i] == L.SPEAKER_CUSTOMER:   # only the customer's turn may lower it
            while level > raw and score < th_by_level[level] - pf[L.P_HYSTERESIS]:
                level -= 1
        level = max([level] + [int(ti[L.T_FLOOR, j]) for j in hist])
        levels[s] = level
        lift = max([int(ti[L.T_RAISE, j]) for j in hist] + [int(ti[L.T_TIER_RAISE, i])])
        priority = min(4, level + lift) if level > 0 else 0
        actions = (L.ACTION_HANDOFF if bot_mode and level >= 2 else 0) | (L.ACTION_SUPERVISOR if level == 3 else 0)

        of[:L.N_INDICATORS, i] = ind
        of[L.OF_SCORE, i] = score
        of[L.OF_TOTAL_POINTS, i] = total
        oi[L.OI_REASON_IDX:L.OI_REASON_IDX + 3, i] = -1
        for rank, (p, negk) in enumerate(ranked):
            of[L.OF_REASON_POINTS + rank, i] = p
            oi[L.OI_REASON_IDX + rank, i] = -negk
        oi[L.OI_LEVEL, i] = level
        oi[L.OI_PRIORITY, i] = priority
        oi[L.OI_ACTIONS, i] = actions
        oi[L.OI_CUSTOMER, i] = len(cust)
        oi[L.OI_TURNS, i] = len(hist)
        oi[L.OI_SESSION_TIME, i] = T
    return of, oi


def sla_scan_reference(si, sf, occupied, now_ms: int, max_out: int):
    """The scheduler's SLA scan (:mod:`yujing.kernels.scan`) from its definition, in
    Python integers and floats: the breaching slots are every occupied ``s`` with a
    wait ``w = si[s, I_WAIT_SINCE] != NO_WAIT``, ``sla = sf[s, F_SLA_MS] > 0``,
    ``now_ms - w >= sla`` and ``si[s, I_SLA_ALERTED] != w``; the first ``max_out`` of
    them in slot order are reported and marked (``si[s, I_SLA_ALERTED] = w``, in
    place), the others left as they are. Returns ``(slots, wait_ms, sla_ms)`` lists."""
    breaching = []
    for s in range(len(occupied)):
        w = int(si[s, L.I_WAIT_SINCE])
        sla = float(sf[s, L.F_SLA_MS])
        if (bool(occupied[s]) and w != L.NO_WAIT and sla > 0 and int(now_ms) - w >= sla
                and int(si[s, L.I_SLA_ALERTED]) != w):
            breaching.append(s)
    reported = breaching[:max(int(max_out), 0)]
    for s in reported:
        si[s, L.I_SLA_ALERTED] = si[s, L.I_WAIT_SINCE]
    return (reported, [int(now_ms) - int(si[s, L.I_WAIT_SINCE]) for s in reported],
            [int(math.floor(float(sf[s, L.F_SLA_MS]))) for s in reported])
