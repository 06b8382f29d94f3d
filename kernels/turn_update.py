"""The per-turn update, written once and compiled twice.

:func:`build` takes a jit decorator and returns the device functions that fold one
turn into the agent table and the session table and score it. ``yujing.kernels.update_cpu``
builds them with ``numba.njit`` and loops over a batch in arrival order;
``yujing.kernels.update_gpu`` builds them with ``numba.cuda.jit(device=True)`` and runs one
thread per session (and per agent), each walking its own turns in arrival order, so
the two agree turn for turn and the GPU has no races.

The state layout and every name used here are in :mod:`yujing.kernels.layout`; the
indicator formulas are in the README's indicator table and, as an independent
plain-Python recomputation from the full history, in :mod:`yujing.kernels.reference`.
"""
from __future__ import annotations

import math

import numpy as np

from yujing.kernels import layout as L

LN2 = math.log(2.0)
PREFETCH_AHEAD = 6   # turns between a session's prefetch and its update
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


def build(jit, prefetch_row):
    """Return ``(agent_steps, session_steps, fill_indicators)`` compiled with ``jit``;
    ``prefetch_row(arr, row)`` hints that ``arr[row]`` will be needed (a no-op on the GPU)."""

    @jit
    def popcount64(x):
        x = x - ((x >> _S1) & _M1)
        x = (x & _M2) + ((x >> _S2) & _M2)
        x = (x + (x >> _S4)) & _M4
        return (x * _H01) >> _S56

    @jit
    def decay(dt_ms, half_life_ms):
        return math.exp(-dt_ms * LN2 / half_life_ms)

    @jit
    def ring_advance(w, nb, slot, head, bucket):
        """Move a bucket ring's head forward to ``bucket``, clearing what it passes."""
        if bucket <= head:
            return head
        steps = bucket - head
        if steps > nb:
            steps = nb
        for k in range(1, steps + 1):
            pos = (head + k) % nb
            w[slot, pos] = 0
            w[slot, nb + pos] = 0
        return bucket

    @jit
    def ring_add(w, nb, slot, head, bucket, negative, cap):
        """Count one turn into its bucket if the bucket is still inside the window."""
        if bucket <= head - nb:
            return
        pos = bucket % nb
        if w[slot, pos] < cap:
            w[slot, pos] += 1
        if negative and w[slot, nb + pos] < cap:
            w[slot, nb + pos] += 1

    @jit
    def ring_sums(w, nb, slot, negatives):
        total = 0
        for k in range(nb):
            total += w[slot, (nb if negatives else 0) + k]
        return total

    @jit
    def fill_indicators(sf, si, sc, sw, s, pf, of, i):
        """Write session ``s``'s indicators (at its own clock) into ``of[:N_INDICATORS, i]``."""
        n_cust = sc[s, L.C_CUSTOMER]
        sla = sf[s, L.F_SLA_MS]
        t_eff = si[s, L.I_LAST_TS]
        n_keep = np.int64(pf[L.P_NEG_TURNS_N])
        nb = L.WINDOW_BUCKETS
        of[0, i] = sf[s, L.F_SENT_FAST]
        n_window = n_cust if n_cust < n_keep else n_keep
        of[1, i] = float(popcount64(np.uint64(sc[s, L.C_NEG_BITS]))) / n_window if n_window > 0 else 0.0
        total = ring_sums(sw, nb, s, False)
        of[2, i] = float(ring_sums(sw, nb, s, True)) / total if total > 0 else 0.0
        of[3, i] = sf[s, L.F_SENT_FAST] - sf[s, L.F_SENT_SLOW]
        of[4, i] = float(sc[s, L.C_CONSEC_NEG])
        of[5, i] = sf[s, L.F_PEAK_NEG]
        reps = popcount64(np.uint64(sc[s, L.C_REP_BITS]))
        of[6, i] = float(reps) + 1.0 if reps > 0 else 0.0
        of[7, i] = sf[s, L.F_RATE] * 60000.0 / pf[L.P_RATE_TAU_MS]
        of[8, i] = sf[s, L.F_DELAY_EWMA] / sla
        since = si[s, L.I_WAIT_SINCE]
        of[9, i] = float(t_eff - since) / sla if since != L.NO_WAIT else 0.0
        den = sf[s, L.F_NEGATION_DEN]
        of[10, i] = sf[s, L.F_NEGATION_NUM] / den if den > 0.0 else 0.0
        of[11, i] = sf[s, L.F_INTENSITY]
        of[12, i] = sf[s, L.F_ESCALATION]
        of[13, i] = sf[s, L.F_EXPOSURE]
        of[14, i] = float(sc[s, L.C_TRANSFERS])
        of[15, i] = float(t_eff - si[s, L.I_FIRST_TS]) / 60000.0
        of[16, i] = float(sc[s, L.C_BOT_UNHANDLED])
        of[17, i] = sf[s, L.F_FATIGUE]


    @jit
    def agent_steps(ai, aw, ti, pf, fatigue, order, lo, hi):
        """Fold turns ``order[lo:hi]`` into their agents' 2-hour windows, in that order;
        write each turn's agent fatigue. One call per batch (CPU) or per agent (GPU):
        the loop is inside so array arguments are passed once, not once per turn."""
        for j in range(lo, hi):
            i = order[j]
            a = ti[L.T_AGENT, i]
            if a < 0:
                fatigue[i] = 0.0
                continue
            nb = L.AGENT_BUCKETS
            bucket = ti[L.T_TS, i] // np.int64(pf[L.P_AGENT_BUCKET_MS])
            if ti[L.T_NEW_AGENT, i] != 0:
                for r in range(L.AW_ROWS):
                    aw[a, r] = 0
                ai[a, L.AI_HEAD] = bucket
            head = ring_advance(aw, nb, a, ai[a, L.AI_HEAD], bucket)
            ai[a, L.AI_HEAD] = head
            flags = ti[L.T_FLAGS, i]
            if ti[L.T_SPEAKER, i] == L.SPEAKER_CUSTOMER and (flags & L.TFLAG_HAS_TEXT) != 0:
                ring_add(aw, nb, a, head, bucket, (flags & L.TFLAG_NEGATIVE) != 0, 2147483647)
            fatigue[i] = float(ring_sums(aw, nb, a, True))

    @jit
    def session_steps(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, order, lo, hi):
        """Fold turns ``order[lo:hi]`` into their sessions in that order, scoring each into
        ``of[:, i]`` / ``oi[:, i]``. The loop is inside (see :func:`agent_steps`)."""
        for j in range(lo, hi):
            i = order[j]
            if j + PREFETCH_AHEAD < hi:
                ahead = ti[L.T_SLOT, order[j + PREFETCH_AHEAD]]
                prefetch_row(sf, ahead)
                prefetch_row(si, ahead)
                prefetch_row(sh, ahead)
                prefetch_row(sc, ahead)
                prefetch_row(sb, ahead)
                prefetch_row(sw, ahead)
            s = ti[L.T_SLOT, i]
            ts = ti[L.T_TS, i]
            bucket_ms = np.int64(pf[L.P_BUCKET_MS])
            nb = L.WINDOW_BUCKETS
            if ti[L.T_NEW, i] != 0:
                for r in range(L.SF_ROWS):
                    sf[s, r] = 0.0
                for r in range(L.SIMHASH_RING):
                    sh[s, r] = np.uint64(0)
                for r in range(L.SC_ROWS):
                    sc[s, r] = 0
                for r in range(L.SB_ROWS):
                    sb[s, r] = 0
                for r in range(L.SW_ROWS):
                    sw[s, r] = 0
                si[s, L.I_FIRST_TS] = ts
                si[s, L.I_LAST_TS] = ts
                si[s, L.I_WAIT_SINCE] = L.NO_WAIT
                si[s, L.I_WIN_HEAD] = ts // bucket_ms
                sc[s, L.C_LAST_INTENT] = -1

            # The session clock never goes back: an older turn is applied at the clock.
            last = si[s, L.I_LAST_TS]
            t_eff = ts if ts > last else last
            dt = float(t_eff - last)
            si[s, L.I_LAST_TS] = t_eff
            if ts < si[s, L.I_FIRST_TS]:
                si[s, L.I_FIRST_TS] = ts
            sc[s, L.C_TURNS] += 1

            # Time decays, on every turn.
            sf[s, L.F_PEAK_NEG] *= decay(dt, pf[L.P_HL_PEAK_MS])
            sf[s, L.F_ESCALATION] *= decay(dt, pf[L.P_HL_ESCALATION_MS])
            sf[s, L.F_EXPOSURE] *= decay(dt, pf[L.P_HL_EXPOSURE_MS])
            sf[s, L.F_RATE] *= math.exp(-dt / pf[L.P_RATE_TAU_MS])
            head = ring_advance(sw, nb, s, si[s, L.I_WIN_HEAD], t_eff // bucket_ms)
            si[s, L.I_WIN_HEAD] = head

            speaker = ti[L.T_SPEAKER, i]
            event = ti[L.T_EVENT, i]
            flags = ti[L.T_FLAGS, i]
            has_text = (flags & L.TFLAG_HAS_TEXT) != 0
            negative = (flags & L.TFLAG_NEGATIVE) != 0
            n_keep = np.int64(pf[L.P_NEG_TURNS_N])
            keep_mask = (np.int64(1) << n_keep) - 1
            state_flags = sb[s, L.B_FLAGS]

            if event == L.EVENT_TRANSFER:
                sc[s, L.C_TRANSFERS] += 1
            elif event == L.EVENT_HANDOFF:
                sc[s, L.C_BOT_UNHANDLED] = 0
                state_flags &= ~L.FLAG_BOT_MODE
            elif event == L.EVENT_HOLD:
                if si[s, L.I_WAIT_SINCE] == L.NO_WAIT:
                    si[s, L.I_WAIT_SINCE] = t_eff

            if speaker == L.SPEAKER_CUSTOMER and has_text:
                n_before = sc[s, L.C_CUSTOMER]
                sent = tf[L.TF_SENTIMENT, i]
                # the sentiment EWMAs move only on turns that carry a sentiment
                if (flags & L.TFLAG_SENTIMENT) != 0:
                    if (state_flags & L.FLAG_HAS_SENT) == 0:
                        sf[s, L.F_SENT_FAST] = sent
                        sf[s, L.F_SENT_SLOW] = sent
                        state_flags |= L.FLAG_HAS_SENT
                    else:
                        a = pf[L.P_ALPHA_FAST]
                        sf[s, L.F_SENT_FAST] = a * sent + (1.0 - a) * sf[s, L.F_SENT_FAST]
                        a = pf[L.P_ALPHA_SLOW]
                        sf[s, L.F_SENT_SLOW] = a * sent + (1.0 - a) * sf[s, L.F_SENT_SLOW]
                if n_before == 0:
                    sf[s, L.F_INTENSITY] = tf[L.TF_INTENSITY, i]
                else:
                    a = pf[L.P_ALPHA_INTENSITY]
                    sf[s, L.F_INTENSITY] = a * tf[L.TF_INTENSITY, i] + (1.0 - a) * sf[s, L.F_INTENSITY]
                negativity = -sent if sent < 0.0 else 0.0
                if negativity > sf[s, L.F_PEAK_NEG]:
                    sf[s, L.F_PEAK_NEG] = negativity
                bits = np.int64(sc[s, L.C_NEG_BITS])
                bits = ((bits << 1) | (1 if negative else 0)) & keep_mask
                sc[s, L.C_NEG_BITS] = bits
                if negative:
                    sc[s, L.C_CONSEC_NEG] += 1
                else:
                    sc[s, L.C_CONSEC_NEG] = 0
                ring_add(sw, nb, s, head, ts // bucket_ms, negative, L.U16_MAX)

                # Repeated complaint: a near-duplicate of one of the last texts, or the same
                # intent as the previous customer turn; counted when the turn is negative or
                # its intent is in a complaint category.
                complaint = (flags & L.TFLAG_COMPLAINT) != 0
                h = th[i]
                similar = False
                if ti[L.T_WORDS, i] >= np.int64(pf[L.P_REPEAT_MIN_WORDS]) and h != np.uint64(0):
                    seen = n_before if n_before < L.SIMHASH_RING else L.SIMHASH_RING
                    for k in range(seen):
                        if popcount64(h ^ sh[s, k]) <= np.uint64(pf[L.P_NEAR_DUP_BITS]):
                            similar = True
                if n_before > 0 and ti[L.T_INTENT, i] >= 0 and ti[L.T_INTENT, i] == sc[s, L.C_LAST_INTENT]:
                    similar = True
                repeat = similar and (negative or complaint)
                rbits = np.int64(sc[s, L.C_REP_BITS])
                rbits = ((rbits << 1) | (1 if repeat else 0)) & keep_mask
                sc[s, L.C_REP_BITS] = rbits
                sh[s, n_before % L.SIMHASH_RING] = h
                sc[s, L.C_LAST_INTENT] = ti[L.T_INTENT, i]
                sc[s, L.C_CUSTOMER] = n_before + 1

                sf[s, L.F_RATE] += 1.0
                lam = pf[L.P_NEGATION_DECAY]
                sf[s, L.F_NEGATION_NUM] = lam * sf[s, L.F_NEGATION_NUM] + float(ti[L.T_NEG_WORDS, i])
                sf[s, L.F_NEGATION_DEN] = lam * sf[s, L.F_NEGATION_DEN] + float(ti[L.T_WORDS, i])
                if tf[L.TF_ESC_LEVEL, i] > sf[s, L.F_ESCALATION]:
                    sf[s, L.F_ESCALATION] = tf[L.TF_ESC_LEVEL, i]
                sf[s, L.F_EXPOSURE] += tf[L.TF_INTENT_WEIGHT, i]
                sb[s, L.B_ESC_MASK] |= ti[L.T_ESC_MASK, i]
                if si[s, L.I_WAIT_SINCE] == L.NO_WAIT:
                    si[s, L.I_WAIT_SINCE] = t_eff
            elif (speaker == L.SPEAKER_AGENT or speaker == L.SPEAKER_BOT) and has_text:
                since = si[s, L.I_WAIT_SINCE]
                if since != L.NO_WAIT:
                    delay = float(t_eff - since)
                    if (state_flags & L.FLAG_HAS_DELAY) != 0:
                        a = pf[L.P_ALPHA_DELAY]
                        sf[s, L.F_DELAY_EWMA] = a * delay + (1.0 - a) * sf[s, L.F_DELAY_EWMA]
                    else:
                        sf[s, L.F_DELAY_EWMA] = delay
                        state_flags |= L.FLAG_HAS_DELAY
                    si[s, L.I_WAIT_SINCE] = L.NO_WAIT
                if speaker == L.SPEAKER_BOT:
                    sc[s, L.C_BOT_UNHANDLED] += 1
                    state_flags |= L.FLAG_BOT_MODE
                else:
                    sc[s, L.C_BOT_UNHANDLED] = 0
                    state_flags &= ~L.FLAG_BOT_MODE
            sb[s, L.B_FLAGS] = state_flags
            if ti[L.T_RAISE, i] > sb[s, L.B_RAISE]:
                sb[s, L.B_RAISE] = ti[L.T_RAISE, i]
            if ti[L.T_FLOOR, i] > sb[s, L.B_FLOOR]:
                sb[s, L.B_FLOOR] = ti[L.T_FLOOR, i]

            sf[s, L.F_SLA_MS] = tf[L.TF_SLA_MS, i]
            sf[s, L.F_FATIGUE] = fatigue[i]
            fill_indicators(sf, si, sc, sw, s, pf, of, i)
            n_cust = sc[s, L.C_CUSTOMER]

            # ---- composite score and top reasons --------------------------------------
            total_pts = 0.0
            r0 = -1
            r1 = -1
            r2 = -1
            p0 = 0.0
            p1 = 0.0
            p2 = 0.0
            for j in range(L.N_INDICATORS):
                v = of[j, i]
                if j == 0 or j == 3:
                    v = -v
                x = v / pf[L.P_SATURATION + j]
                if x < 0.0:
                    x = 0.0
                elif x > 1.0:
                    x = 1.0
                pts = pf[L.P_WEIGHTS + j] * x
                total_pts += pts
                if pts > p0:
                    r2, p2, r1, p1, r0, p0 = r1, p1, r0, p0, j, pts
                elif pts > p1:
                    r2, p2, r1, p1 = r1, p1, j, pts
                elif pts > p2:
                    r2, p2 = j, pts
            score = total_pts if total_pts < 100.0 else 100.0
            sf[s, L.F_SCORE] = score
            of[L.OF_SCORE, i] = score
            of[L.OF_REASON_POINTS, i] = p0
            of[L.OF_REASON_POINTS + 1, i] = p1
            of[L.OF_REASON_POINTS + 2, i] = p2
            of[L.OF_TOTAL_POINTS, i] = total_pts
            oi[L.OI_REASON_IDX, i] = r0
            oi[L.OI_REASON_IDX + 1, i] = r1
            oi[L.OI_REASON_IDX + 2, i] = r2

            # ---- level (with hysteresis), priority, actions ------------------------------
            raw = 0
            if score >= pf[L.P_TH_RED]:
                raw = 3
            elif score >= pf[L.P_TH_YELLOW]:
                raw = 2
            elif score >= pf[L.P_TH_BLUE]:
                raw = 1
            level = np.int64(sb[s, L.B_LEVEL])
            if raw >= level:
                level = raw
            else:
                margin = pf[L.P_HYSTERESIS]
                while level > raw:
                    th_level = pf[L.P_TH_BLUE] if level == 1 else (pf[L.P_TH_YELLOW] if level == 2 else pf[L.P_TH_RED])
                    if score < th_level - margin:
                        level -= 1
                    else:
                        break
            if sb[s, L.B_FLOOR] > level:
                level = sb[s, L.B_FLOOR]
            sb[s, L.B_LEVEL] = level
            priority = 0
            if level > 0:
                lift = np.int64(sb[s, L.B_RAISE])
                if ti[L.T_TIER_RAISE, i] > lift:
                    lift = ti[L.T_TIER_RAISE, i]
                priority = level + lift
                if priority > 4:
                    priority = 4
            sb[s, L.B_PRIORITY] = priority
            actions = 0
            if (state_flags & L.FLAG_BOT_MODE) != 0 and level >= 2:
                actions |= L.ACTION_HANDOFF
            if level == 3:
                actions |= L.ACTION_SUPERVISOR
            oi[L.OI_LEVEL, i] = level
            oi[L.OI_PRIORITY, i] = priority
            oi[L.OI_ACTIONS, i] = actions
            oi[L.OI_CUSTOMER, i] = n_cust
            oi[L.OI_TURNS, i] = sc[s, L.C_TURNS]
            oi[L.OI_SESSION_TIME, i] = t_eff

    return agent_steps, session_steps, fill_indicators
