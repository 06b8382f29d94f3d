"""The per-turn update, written once and compiled twice.

:func:`build` takes a jit decorator and returns the device functions that fold one
turn into the agent table and the session table and score it. ``yujing.kernels.update_cpu``
builds them with ``numba.njit`` and loops over a batch in arrival order;
``yujing.kernels.update_gpu`` builds them with ``numba.cuda.jit(device=True)`` and runs one
thread per session (and per agent), each walking its own turns in arrival order, so
the two agree turn for turn and the GPU has no races.

One turn, in order (:func:`_build_steps`):

    start_turn        a new slot is initialised; the session clock moves (never back)
    fold_emotion      sentiment EWMAs, negative turns (last N, time window, run), peak,
                      negation, intensity, dissatisfaction          (README "emotion")
    fold_behaviour    repeated complaints, message rate, escalation cues ("behaviour")
    fold_trend        intent exposure (the sentiment trend is read from the EWMAs)
    fold_structure    events, waits, response delays, bot turns, SLA, agent fatigue
    fill_indicators   the indicators (layout.INDICATORS), one reader per family, into ``of[OF_<NAME>, i]``
    score_turn        points and reasons, level (hysteresis, floors), priority, actions

Each family's builder (``_build_emotion`` ...) holds its state update and its indicator
reader side by side. The state layout and every name used here (the output rows
``OF_*`` / ``OI_*`` included) are in :mod:`yujing.kernels.layout`; the indicator formulas
are in the README's indicator table and, as an independent plain-Python recomputation
from the full history, in :mod:`yujing.kernels.reference`.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from yujing.kernels.bits import popcount64 as popcount64_py
from yujing.kernels import layout as L

LN2 = math.log(2.0)
PREFETCH_AHEAD = 6   # turns between a session's prefetch and its update

Helpers = namedtuple("Helpers", "popcount64 decay ring_advance ring_add ring_sums push_bit")


def build(jit, prefetch_row):
    """Return ``(agent_steps, session_steps, fill_indicators)`` compiled with ``jit``;
    ``prefetch_row(arr, row)`` hints that ``arr[row]`` will be needed (a no-op on the GPU)."""
    h = _build_helpers(jit)
    fold_emotion, emotion_indicators = _build_emotion(jit, h)
    fold_behaviour, behaviour_indicators = _build_behaviour(jit, h)
    fold_trend, trend_indicators = _build_trend(jit, h)
    fold_structure, structure_indicators = _build_structure(jit)

    @jit
    def fill_indicators(sf, si, sc, sb, sw, s, pf, of, i):
        """Write session ``s``'s indicators (at its own clock) into ``of[:N_INDICATORS, i]``."""
        emotion_indicators(sf, sc, sb, sw, s, pf, of, i)
        behaviour_indicators(sf, si, sc, s, pf, of, i)
        trend_indicators(sf, s, of, i)
        structure_indicators(sf, si, sc, s, of, i)

    score_turn = _build_scoring(jit)
    agent_steps = _build_agent_steps(jit, h)
    session_steps = _build_steps(jit, prefetch_row, fold_emotion, fold_behaviour, fold_trend,
                                 fold_structure, fill_indicators, score_turn)
    return agent_steps, session_steps, fill_indicators


def _build_helpers(jit):
    """Bit counting, half-life decay, bucket rings and shift registers."""

    popcount64 = jit(popcount64_py)

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
    def push_bit(bits, bit, pf):
        """Shift ``bit`` into a register of the last N customer turns (N = P_NEG_TURNS_N)."""
        keep_mask = (np.int64(1) << np.int64(pf[L.P_NEG_TURNS_N])) - 1
        return ((np.int64(bits) << 1) | (1 if bit else 0)) & keep_mask

    return Helpers(popcount64, decay, ring_advance, ring_add, ring_sums, push_bit)


def _build_emotion(jit, h):
    """sentiment_ewma, neg_share_turns, neg_share_window, consecutive_negative,
    peak_negativity, negation_share, intensity, dissatisfaction."""
    popcount64, decay, ring_advance, ring_add, ring_sums, push_bit = h

    @jit
    def fold_emotion(sf, si, sc, sb, sw, s, ti, tf, pf, i, dt, customer_text):
        sf[s, L.F_PEAK_NEG] *= decay(dt, pf[L.P_HL_PEAK_MS])
        bucket_ms = np.int64(pf[L.P_BUCKET_MS])
        nb = L.WINDOW_BUCKETS
        head = ring_advance(sw, nb, s, si[s, L.I_WIN_HEAD], si[s, L.I_LAST_TS] // bucket_ms)
        si[s, L.I_WIN_HEAD] = head
        if not customer_text:
            return
        flags = ti[L.T_FLAGS, i]
        negative = (flags & L.TFLAG_NEGATIVE) != 0
        sent = tf[L.TF_SENTIMENT, i]
        # the sentiment EWMAs move only on turns that carry a sentiment
        if (flags & L.TFLAG_SENTIMENT) != 0:
            if (sb[s, L.B_FLAGS] & L.FLAG_HAS_SENT) == 0:
                sf[s, L.F_SENT_FAST] = sent
                sf[s, L.F_SENT_SLOW] = sent
                sb[s, L.B_FLAGS] = np.int64(sb[s, L.B_FLAGS]) | L.FLAG_HAS_SENT
            else:
                a = pf[L.P_ALPHA_FAST]
                sf[s, L.F_SENT_FAST] = a * sent + (1.0 - a) * sf[s, L.F_SENT_FAST]
                a = pf[L.P_ALPHA_SLOW]
                sf[s, L.F_SENT_SLOW] = a * sent + (1.0 - a) * sf[s, L.F_SENT_SLOW]
        if sc[s, L.C_CUSTOMER] == 0:
            sf[s, L.F_INTENSITY] = tf[L.TF_INTENSITY, i]
        else:
            a = pf[L.P_ALPHA_INTENSITY]
            sf[s, L.F_INTENSITY] = a * tf[L.TF_INTENSITY, i] + (1.0 - a) * sf[s, L.F_INTENSITY]
        # dissatisfaction: the latest customer text the model scored (in 255ths, layout.dissatisfaction_q)
        if (flags & L.TFLAG_DISSATISFACTION) != 0:
            q = math.floor(tf[L.TF_DISSATISFACTION, i] * L.DISSAT_SCALE + 0.5)
            if q < 0.0:
                q = 0.0
            elif q > L.DISSAT_SCALE:
                q = float(L.DISSAT_SCALE)
            sb[s, L.B_DISSAT] = np.int64(q)
        negativity = -sent if sent < 0.0 else 0.0
        if negativity > sf[s, L.F_PEAK_NEG]:
            sf[s, L.F_PEAK_NEG] = negativity
        sc[s, L.C_NEG_BITS] = push_bit(sc[s, L.C_NEG_BITS], negative, pf)
        if negative:
            sc[s, L.C_CONSEC_NEG] += 1
        else:
            sc[s, L.C_CONSEC_NEG] = 0
        ring_add(sw, nb, s, head, ti[L.T_TS, i] // bucket_ms, negative, L.U16_MAX)
        lam = pf[L.P_NEGATION_DECAY]
        sf[s, L.F_NEGATION_NUM] = lam * sf[s, L.F_NEGATION_NUM] + float(ti[L.T_NEG_WORDS, i])
        sf[s, L.F_NEGATION_DEN] = lam * sf[s, L.F_NEGATION_DEN] + float(ti[L.T_WORDS, i])

    @jit
    def emotion_indicators(sf, sc, sb, sw, s, pf, of, i):
        n_cust = sc[s, L.C_CUSTOMER]
        n_keep = np.int64(pf[L.P_NEG_TURNS_N])
        nb = L.WINDOW_BUCKETS
        of[L.OF_SENTIMENT_EWMA, i] = sf[s, L.F_SENT_FAST]
        n_window = n_cust if n_cust < n_keep else n_keep
        of[L.OF_NEG_SHARE_TURNS, i] = (float(popcount64(np.uint64(sc[s, L.C_NEG_BITS]))) / n_window
                                       if n_window > 0 else 0.0)
        total = ring_sums(sw, nb, s, False)
        of[L.OF_NEG_SHARE_WINDOW, i] = float(ring_sums(sw, nb, s, True)) / total if total > 0 else 0.0
        of[L.OF_CONSECUTIVE_NEGATIVE, i] = float(sc[s, L.C_CONSEC_NEG])
        of[L.OF_PEAK_NEGATIVITY, i] = sf[s, L.F_PEAK_NEG]
        den = sf[s, L.F_NEGATION_DEN]
        of[L.OF_NEGATION_SHARE, i] = sf[s, L.F_NEGATION_NUM] / den if den > 0.0 else 0.0
        of[L.OF_INTENSITY, i] = sf[s, L.F_INTENSITY]
        of[L.OF_DISSATISFACTION, i] = float(sb[s, L.B_DISSAT]) / L.DISSAT_SCALE

    return fold_emotion, emotion_indicators


def _build_behaviour(jit, h):
    """repeat_complaints, message_rate, escalation, session_minutes."""
    popcount64, decay, push_bit = h.popcount64, h.decay, h.push_bit

    @jit
    def is_repeat(sh, sc, s, ti, th, pf, i):
        """A near-duplicate of one of the last texts, or the same intent as the previous
        customer turn; counted when the turn is negative or its intent is in a complaint
        category."""
        n_before = sc[s, L.C_CUSTOMER]
        flags = ti[L.T_FLAGS, i]
        text_hash = th[i]
        similar = False
        if ti[L.T_WORDS, i] >= np.int64(pf[L.P_REPEAT_MIN_WORDS]) and text_hash != np.uint64(0):
            seen = n_before if n_before < L.SIMHASH_RING else L.SIMHASH_RING
            for k in range(seen):
                if popcount64(text_hash ^ sh[s, k]) <= np.uint64(pf[L.P_NEAR_DUP_BITS]):
                    similar = True
        if n_before > 0 and ti[L.T_INTENT, i] >= 0 and ti[L.T_INTENT, i] == sc[s, L.C_LAST_INTENT]:
            similar = True
        return similar and ((flags & L.TFLAG_NEGATIVE) != 0 or (flags & L.TFLAG_COMPLAINT) != 0)

    @jit
    def fold_behaviour(sf, sh, sc, sb, s, ti, tf, th, pf, i, dt, customer_text):
        sf[s, L.F_ESCALATION] *= decay(dt, pf[L.P_HL_ESCALATION_MS])
        sf[s, L.F_RATE] *= math.exp(-dt / pf[L.P_RATE_TAU_MS])
        if not customer_text:
            return
        sc[s, L.C_REP_BITS] = push_bit(sc[s, L.C_REP_BITS], is_repeat(sh, sc, s, ti, th, pf, i), pf)
        sh[s, sc[s, L.C_CUSTOMER] % L.SIMHASH_RING] = th[i]
        sc[s, L.C_LAST_INTENT] = ti[L.T_INTENT, i]
        sf[s, L.F_RATE] += 1.0
        if tf[L.TF_ESC_LEVEL, i] > sf[s, L.F_ESCALATION]:
            sf[s, L.F_ESCALATION] = tf[L.TF_ESC_LEVEL, i]
        sb[s, L.B_ESC_MASK] |= ti[L.T_ESC_MASK, i]

    @jit
    def behaviour_indicators(sf, si, sc, s, pf, of, i):
        reps = popcount64(np.uint64(sc[s, L.C_REP_BITS]))
        of[L.OF_REPEAT_COMPLAINTS, i] = float(reps) + 1.0 if reps > 0 else 0.0
        of[L.OF_MESSAGE_RATE, i] = sf[s, L.F_RATE] * 60000.0 / pf[L.P_RATE_TAU_MS]
        of[L.OF_ESCALATION, i] = sf[s, L.F_ESCALATION]
        of[L.OF_SESSION_MINUTES, i] = float(si[s, L.I_LAST_TS] - si[s, L.I_FIRST_TS]) / 60000.0

    return fold_behaviour, behaviour_indicators


def _build_trend(jit, h):
    """sentiment_trend (from the emotion EWMAs), intent_exposure."""
    decay = h.decay

    @jit
    def fold_trend(sf, s, tf, pf, i, dt, customer_text):
        sf[s, L.F_EXPOSURE] *= decay(dt, pf[L.P_HL_EXPOSURE_MS])
        if customer_text:
            sf[s, L.F_EXPOSURE] += tf[L.TF_INTENT_WEIGHT, i]

    @jit
    def trend_indicators(sf, s, of, i):
        of[L.OF_SENTIMENT_TREND, i] = sf[s, L.F_SENT_FAST] - sf[s, L.F_SENT_SLOW]
        of[L.OF_INTENT_EXPOSURE, i] = sf[s, L.F_EXPOSURE]

    return fold_trend, trend_indicators


def _build_structure(jit):
    """response_delay_sla, unanswered_wait_sla, transfers, bot_turns_unhandled,
    agent_fatigue."""

    @jit
    def fold_event(si, sc, sb, s, event, t_eff):
        if event == L.EVENT_TRANSFER:
            sc[s, L.C_TRANSFERS] += 1
        elif event == L.EVENT_HANDOFF:
            sc[s, L.C_BOT_UNHANDLED] = 0
            sb[s, L.B_FLAGS] = np.int64(sb[s, L.B_FLAGS]) & ~L.FLAG_BOT_MODE
        elif event == L.EVENT_HOLD:
            if si[s, L.I_WAIT_SINCE] == L.NO_WAIT:
                si[s, L.I_WAIT_SINCE] = t_eff

    @jit
    def fold_reply(sf, si, sc, sb, s, pf, speaker, t_eff):
        """An agent or bot message: it answers the wait, and a bot's keeps the bot mode."""
        state_flags = np.int64(sb[s, L.B_FLAGS])
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

    @jit
    def fold_structure(sf, si, sc, sb, s, ti, tf, pf, i, fatigue, customer_text, reply_text):
        t_eff = si[s, L.I_LAST_TS]
        fold_event(si, sc, sb, s, ti[L.T_EVENT, i], t_eff)
        if customer_text:
            if si[s, L.I_WAIT_SINCE] == L.NO_WAIT:
                si[s, L.I_WAIT_SINCE] = t_eff
        elif reply_text:
            fold_reply(sf, si, sc, sb, s, pf, ti[L.T_SPEAKER, i], t_eff)
        sf[s, L.F_SLA_MS] = tf[L.TF_SLA_MS, i]
        sf[s, L.F_FATIGUE] = fatigue

    @jit
    def structure_indicators(sf, si, sc, s, of, i):
        sla = sf[s, L.F_SLA_MS]
        of[L.OF_RESPONSE_DELAY_SLA, i] = sf[s, L.F_DELAY_EWMA] / sla
        since = si[s, L.I_WAIT_SINCE]
        of[L.OF_UNANSWERED_WAIT_SLA, i] = float(si[s, L.I_LAST_TS] - since) / sla if since != L.NO_WAIT else 0.0
        of[L.OF_TRANSFERS, i] = float(sc[s, L.C_TRANSFERS])
        of[L.OF_BOT_TURNS_UNHANDLED, i] = float(sc[s, L.C_BOT_UNHANDLED])
        of[L.OF_AGENT_FATIGUE, i] = sf[s, L.F_FATIGUE]

    return fold_structure, structure_indicators


def _build_scoring(jit):
    """The composite score and its reasons, the level, the priority and the actions."""

    @jit
    def points_and_reasons(sf, s, pf, of, oi, i):
        """``sum weight * clip(risk / saturation, 0, 1)`` capped at 100, and the three
        indicators adding the most points; returns the score."""
        total_pts = 0.0
        r0 = -1
        r1 = -1
        r2 = -1
        p0 = 0.0
        p1 = 0.0
        p2 = 0.0
        for j in range(L.N_INDICATORS):
            v = of[j, i]
            if j == L.OF_SENTIMENT_EWMA or j == L.OF_SENTIMENT_TREND:   # layout.NEGATIVE_IS_RISK
                v = -v
            elif j == L.OF_RESPONSE_DELAY_SLA or j == L.OF_UNANSWERED_WAIT_SLA:   # layout.BEYOND_SLA_IS_RISK
                v = v - 1.0
            elif j == L.OF_DISSATISFACTION:                                     # layout.BEYOND_EVEN_IS_RISK
                v = v - 0.5
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
        return score

    @jit
    def level_threshold(pf, level):
        """The score at which ``level`` (BLUE, YELLOW or RED) starts: the one place a level
        meets its threshold."""
        if level == L.LEVEL_BLUE:
            return pf[L.P_TH_BLUE]
        if level == L.LEVEL_YELLOW:
            return pf[L.P_TH_YELLOW]
        return pf[L.P_TH_RED]

    @jit
    def settle_level(sb, s, pf, score, may_fall):
        """The level the score reaches: it rises at once and drops one step at a time
        only when the score is P_HYSTERESIS below the current level's threshold, and only
        on a customer's turn (``may_fall``: an agent's apology or a bot's reply is no
        evidence that the customer calmed down, so it cannot lower the level); never
        below the session's floor."""
        raw = L.LEVEL_RED
        while raw > L.LEVEL_NONE and not score >= level_threshold(pf, raw):
            raw -= 1
        level = np.int64(sb[s, L.B_LEVEL])
        if raw >= level:
            level = raw
        elif may_fall:
            margin = pf[L.P_HYSTERESIS]
            while level > raw:
                if score < level_threshold(pf, level) - margin:
                    level -= 1
                else:
                    break
        if sb[s, L.B_FLOOR] > level:
            level = sb[s, L.B_FLOOR]
        sb[s, L.B_LEVEL] = level
        return level

    @jit
    def settle_priority(sb, s, level, tier_raise):
        """Level + the largest raise (sticky intent/cue raise, this turn's tier), capped."""
        priority = 0
        if level > L.LEVEL_NONE:
            lift = np.int64(sb[s, L.B_RAISE])
            if tier_raise > lift:
                lift = tier_raise
            priority = level + lift
            if priority > L.PRIORITY_MAX:
                priority = L.PRIORITY_MAX
        sb[s, L.B_PRIORITY] = priority
        return priority

    @jit
    def actions_of(state_flags, level):
        actions = 0
        if (state_flags & L.FLAG_BOT_MODE) != 0 and level >= L.LEVEL_YELLOW:
            actions |= L.ACTION_HANDOFF
        if level == L.LEVEL_RED:
            actions |= L.ACTION_SUPERVISOR
        return actions

    @jit
    def score_turn(sf, si, sc, sb, s, ti, pf, of, oi, i):
        """Score session ``s`` after turn ``i`` (its indicators are in ``of[:, i]``)."""
        if ti[L.T_RAISE, i] > sb[s, L.B_RAISE]:
            sb[s, L.B_RAISE] = ti[L.T_RAISE, i]
        if ti[L.T_FLOOR, i] > sb[s, L.B_FLOOR]:
            sb[s, L.B_FLOOR] = ti[L.T_FLOOR, i]
        score = points_and_reasons(sf, s, pf, of, oi, i)
        level = settle_level(sb, s, pf, score, ti[L.T_SPEAKER, i] == L.SPEAKER_CUSTOMER)
        oi[L.OI_LEVEL, i] = level
        oi[L.OI_PRIORITY, i] = settle_priority(sb, s, level, ti[L.T_TIER_RAISE, i])
        oi[L.OI_ACTIONS, i] = actions_of(sb[s, L.B_FLAGS], level)
        oi[L.OI_CUSTOMER, i] = sc[s, L.C_CUSTOMER]
        oi[L.OI_TURNS, i] = sc[s, L.C_TURNS]
        oi[L.OI_SESSION_TIME, i] = si[s, L.I_LAST_TS]

    return score_turn


def _build_agent_steps(jit, h):
    """The agent table: each agent's 2-hour window of customer turns, for agent_fatigue."""
    ring_advance, ring_add, ring_sums = h.ring_advance, h.ring_add, h.ring_sums

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

    return agent_steps


def _build_steps(jit, prefetch_row, fold_emotion, fold_behaviour, fold_trend, fold_structure,
                 fill_indicators, score_turn):
    """The session pass: start the turn, fold it family by family, read, score."""

    @jit
    def prefetch_session(sf, si, sh, sc, sb, sw, s):
        prefetch_row(sf, s)
        prefetch_row(si, s)
        prefetch_row(sh, s)
        prefetch_row(sc, s)
        prefetch_row(sb, s)
        prefetch_row(sw, s)

    @jit
    def init_session(sf, si, sh, sc, sb, sw, s, ts, pf):
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
        si[s, L.I_WIN_HEAD] = ts // np.int64(pf[L.P_BUCKET_MS])
        si[s, L.I_SLA_ALERTED] = L.NO_WAIT
        sc[s, L.C_LAST_INTENT] = -1

    @jit
    def start_turn(sf, si, sh, sc, sb, sw, s, ts, is_new, pf):
        """Initialise a new slot, count the turn and move the session clock; returns the
        time it moved (ms). The clock never goes back: an older turn is applied at it."""
        if is_new != 0:
            init_session(sf, si, sh, sc, sb, sw, s, ts, pf)
        last = si[s, L.I_LAST_TS]
        t_eff = ts if ts > last else last
        si[s, L.I_LAST_TS] = t_eff
        if ts < si[s, L.I_FIRST_TS]:
            si[s, L.I_FIRST_TS] = ts
        sc[s, L.C_TURNS] += 1
        return float(t_eff - last)

    @jit
    def fold_turn(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, i):
        """Fold turn ``i`` into its session, each family reading the customer count from
        before the turn; returns the session slot."""
        s = ti[L.T_SLOT, i]
        dt = start_turn(sf, si, sh, sc, sb, sw, s, ti[L.T_TS, i], ti[L.T_NEW, i], pf)
        speaker = ti[L.T_SPEAKER, i]
        has_text = (ti[L.T_FLAGS, i] & L.TFLAG_HAS_TEXT) != 0
        customer_text = speaker == L.SPEAKER_CUSTOMER and has_text
        reply_text = (speaker == L.SPEAKER_AGENT or speaker == L.SPEAKER_BOT) and has_text
        fold_emotion(sf, si, sc, sb, sw, s, ti, tf, pf, i, dt, customer_text)
        fold_behaviour(sf, sh, sc, sb, s, ti, tf, th, pf, i, dt, customer_text)
        fold_trend(sf, s, tf, pf, i, dt, customer_text)
        fold_structure(sf, si, sc, sb, s, ti, tf, pf, i, fatigue[i], customer_text, reply_text)
        if customer_text:
            sc[s, L.C_CUSTOMER] += 1
        return s

    @jit
    def session_steps(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, of, oi, order, lo, hi):
        """Fold turns ``order[lo:hi]`` into their sessions in that order, scoring each into
        ``of[:, i]`` / ``oi[:, i]``. The loop is inside (see ``agent_steps``)."""
        for j in range(lo, hi):
            i = order[j]
            if j + PREFETCH_AHEAD < hi:
                prefetch_session(sf, si, sh, sc, sb, sw, ti[L.T_SLOT, order[j + PREFETCH_AHEAD]])
            s = fold_turn(sf, si, sh, sc, sb, sw, ti, tf, th, pf, fatigue, i)
            fill_indicators(sf, si, sc, sb, sw, s, pf, of, i)
            score_turn(sf, si, sc, sb, s, ti, pf, of, oi, i)

    return session_steps
