"""Queue trend counters: one micro-batch's counting and rule evaluation as one Numba kernel.

:func:`observe_batch` is the array part of ``TrendTracker.observe``
(``yujing.service.alerts.trends``, whose module docstring is the spec): it moves the
touched rows' rings forward, counts the turns that are not older than the ring, updates
each row's first bucket and clock, refreshes the cached segment sums of the rows whose
current bucket moved, evaluates NEGATIVE_SURGE, VOLUME_SPIKE and COMPLAINT_RATE_UP over the
touched rows and latches them. It does per row, in plain loops, what the numpy reference
(``yujing.service.alerts.trends_reference``) does with array calls over the whole batch,
in the same order, so the state and the rules' outcome are the same bit for bit
(``tests/test_trends_compiled.py``); the caller turns the few fired (row, rule) pairs into
events from the window sums this returns. Row lookup (strings) and the repeated-complaint
clusters stay in Python; :func:`similar_complaints` is the scan of a queue's recent
complaints that decides whether a complaint opens one.

The tracker's state arrays (one entry per row) are updated in place::

    counts[R, NC, nb] int32   the ring of bucket counters (bucket b at b % nb)
    last[R], first[R]         newest bucket held / oldest bucket seen
    clock[R]                  latest turn time, ms
    parent[R]                 the queue row (itself for a queue row)
    active[R, 3] bool, false_since[R, 3]    the rules' latches
    seg[R, NC, S], seg_b[R]   cached sums of the age segments between ``edges``, as of bucket seg_b
"""
from __future__ import annotations

import numpy as np
from numba import njit

from yujing.kernels.bits import popcount64 as popcount64_py

# the counters, in the order of yujing.service.alerts.trends.COUNTERS
TURNS, CUSTOMER, NEGATIVE, COMPLAINTS, NEW_SESSIONS, ESCALATIONS = range(6)
NC = 6
NEVER = -(2 ** 62)          # `last` of a row that holds nothing yet
FAR = 2 ** 62               # `first` of such a row
UNSET = -(2 ** 63)          # no cached sums / no false-since time
# the window sums returned per row: [row, window, counter]
CUR1, BASE1, CUR3, BASE3, CUR24, PREV24 = range(6)
N_WINDOWS = 6

# the integer parameters (``ip``) and the float ones (``fp``)
(P_BUCKET_MS, P_NB, P_W3, P_SPAN, P_WARM, P_WARM24, P_NEG_MIN, P_VOL_MIN, P_COMP_MIN, P_COMP_CUST_MIN,
 P_CATEGORY_ALERTS) = range(11)
N_IP = 11
F_NEG_RATIO, F_NEG_FLOOR, F_VOL_RATIO, F_COMP_RATIO, F_COMP_FLOOR = range(5)
N_FP = 5


@njit(cache=True, nogil=True)
def _div(a, b):
    """a / b as floats, 0 where b is 0 (the reference's ``_div``)."""
    return float(a) / float(b) if b != 0 else 0.0


@njit(cache=True, nogil=True)
def observe_batch(counts, last, first, clock, parent, active, false_since, seg, seg_b,
                  turn_rows, ts, customer, negative, complaint, new_session, escalation,
                  edges, win_lo, win_hi, cooldown, ip, fp):
    """Count a batch and evaluate the rows it touched.

    Per turn ``i``: ``turn_rows[i]`` its queue row and its category row (-1: none), int64
    [n, 2]; ``ts`` its time (ms) and the bool columns (1-D; all C-contiguous). ``edges``
    are the age segment bounds (buckets), window ``w`` sums the segments
    ``win_lo[w] .. win_hi[w] - 1``; ``cooldown[j]`` is rule j's release time in buckets;
    ``ip``/``fp`` the parameters (``P_*``, ``F_*``).

    Returns ``(ur, fire, sums, hist, now_ms, n_fired, late, ts_max, n_complaints)``: the
    touched rows ascending, rule j fired for ``ur[u]`` (bool [U, 3]), their window sums
    (int64 [U, N_WINDOWS, NC]) and history in buckets as of their queue's clock ``now_ms``
    (only filled for evaluated rows), the number of fired pairs, the turns dropped as older
    than the ring, the latest turn time and the number of complaints (customer turns)."""
    n = ts.shape[0]
    bucket_ms, nb = ip[P_BUCKET_MS], ip[P_NB]
    # the entries: every turn in its queue row, then the turns with a category row in that
    m = n
    for i in range(n):
        if turn_rows[i, 1] >= 0:
            m += 1
    rows = np.empty(m, np.int64)
    src = np.empty(m, np.int64)
    k = n
    for i in range(n):
        rows[i] = turn_rows[i, 0]
        src[i] = i
        if turn_rows[i, 1] >= 0:
            rows[k] = turn_rows[i, 1]
            src[k] = i
            k += 1
    # the touched rows, ascending; per row the newest and oldest bucket and the latest time
    srt = np.sort(rows)
    ur = np.empty(m, np.int64)
    nu = 0
    for e in range(m):
        if nu == 0 or ur[nu - 1] != srt[e]:
            ur[nu] = srt[e]
            nu += 1
    ur = ur[:nu]
    inv = np.searchsorted(ur, rows)
    bmax = np.full(nu, NEVER, np.int64)
    bmin = np.full(nu, FAR, np.int64)
    tmax = np.full(nu, -1, np.int64)
    for e in range(m):
        u, t = inv[e], ts[src[e]]
        b = t // bucket_ms
        bmax[u] = max(bmax[u], b)
        bmin[u] = min(bmin[u], b)
        tmax[u] = max(tmax[u], t)
    # move each ring forward to its newest bucket, zeroing the buckets it skips
    for u in range(nu):
        r, lr = ur[u], last[ur[u]]
        if lr == NEVER:
            last[r] = bmax[u]
            continue
        steps = min(max(bmax[u] - lr, 0), nb)
        for s in range(steps):
            slot = (lr + 1 + s) % nb
            for c in range(NC):
                counts[r, c, slot] = 0
        last[r] = max(lr, bmax[u])
    # count the turns the ring still holds; a turn in another bucket than the one the
    # cached sums are as of makes them stale
    late = 0
    n_complaints = 0
    ts_max = ts[0]
    for e in range(m):
        i, r = src[e], rows[e]
        b = ts[i] // bucket_ms
        cust = customer[i]
        if e < n:
            ts_max = max(ts_max, ts[i])
            n_complaints += cust and complaint[i]
        if b <= last[r] - nb:
            if e < n:
                late += 1
            continue
        slot = b % nb
        counts[r, TURNS, slot] += 1
        counts[r, CUSTOMER, slot] += cust
        counts[r, NEGATIVE, slot] += cust and negative[i]
        counts[r, COMPLAINTS, slot] += cust and complaint[i]
        counts[r, NEW_SESSIONS, slot] += new_session[i]
        counts[r, ESCALATIONS, slot] += escalation[i]
        if b != seg_b[r]:
            seg_b[r] = UNSET
    for u in range(nu):
        first[ur[u]] = min(first[ur[u]], bmin[u])
    for u in range(nu):          # a category row's history starts with its queue's
        r = ur[u]
        first[r] = min(first[r], first[parent[r]])
    for u in range(nu):
        clock[ur[u]] = max(clock[ur[u]], tmax[u])

    # the rules, per touched row as of its queue's clock
    fire = np.zeros((nu, 3), np.bool_)
    sums = np.zeros((nu, N_WINDOWS, NC), np.int64)
    hist = np.zeros(nu, np.int64)
    now_ms = np.zeros(nu, np.int64)
    n_seg = edges.shape[0] - 1
    part = np.empty(n_seg, np.int64)
    w3, span = ip[P_W3], ip[P_SPAN]
    n_fired = 0
    for u in range(nu):
        r = ur[u]
        q = parent[r]
        if ip[P_CATEGORY_ALERTS] == 0 and q != r:
            continue
        nowb = last[q]
        now_ms[u] = clock[q]
        lr = last[r]
        if seg_b[r] != nowb:
            for c in range(NC):
                seg[r, c, 0] = 0
                for s in range(1, n_seg):
                    acc = 0
                    for a in range(edges[s], edges[s + 1]):
                        absb = nowb - a
                        if absb <= lr and absb > lr - nb:
                            acc += counts[r, c, absb % nb]
                    seg[r, c, s] = acc
            seg_b[r] = nowb
        for c in range(NC):
            for s in range(n_seg):
                part[s] = seg[r, c, s]
            part[0] = counts[r, c, nowb % nb] if lr == nowb else 0
            for w in range(N_WINDOWS):
                acc = 0
                for s in range(win_lo[w], win_hi[w]):
                    acc += part[s]
                sums[u, w, c] = acc
        h = max(nowb - first[r] + 1, 0)
        hist[u] = h
        armed = h >= ip[P_WARM]
        # NEGATIVE_SURGE
        share = _div(sums[u, CUR1, NEGATIVE], sums[u, CUR1, CUSTOMER])
        bshare = _div(sums[u, BASE1, NEGATIVE], sums[u, BASE1, CUSTOMER])
        neg = (armed and sums[u, CUR1, CUSTOMER] >= ip[P_NEG_MIN] and sums[u, BASE1, CUSTOMER] > 0
               and share >= fp[F_NEG_RATIO] * max(bshare, fp[F_NEG_FLOOR]) and share > 0)
        # VOLUME_SPIKE
        vol = sums[u, CUR3, CUSTOMER]
        bvol = _div(sums[u, BASE3, CUSTOMER], min(max(h - w3, 0), span)) * w3
        spike = (armed and h - w3 > 0 and vol >= ip[P_VOL_MIN]
                 and vol >= fp[F_VOL_RATIO] * max(bvol, 1.0))
        # COMPLAINT_RATE_UP
        rate = _div(sums[u, CUR24, COMPLAINTS], sums[u, CUR24, CUSTOMER])
        prate = _div(sums[u, PREV24, COMPLAINTS], sums[u, PREV24, CUSTOMER])
        comp = (h >= ip[P_WARM24] and sums[u, CUR24, COMPLAINTS] >= ip[P_COMP_MIN]
                and sums[u, CUR24, CUSTOMER] >= ip[P_COMP_CUST_MIN]
                and sums[u, PREV24, CUSTOMER] >= max(ip[P_COMP_CUST_MIN], 1)
                and rate >= fp[F_COMP_RATIO] * max(prate, fp[F_COMP_FLOOR]) and rate > 0)
        # one alert per surge: fire on a rising condition, release once the condition
        # has been false for the rule's cooldown
        for j in range(3):
            cond = neg if j == 0 else (spike if j == 1 else comp)
            act, fs = active[r, j], false_since[r, j]
            f = cond and not act
            if cond:
                fs = UNSET
            elif act and fs == UNSET:
                fs = nowb
            release = (not cond) and act and fs != UNSET and nowb - fs >= cooldown[j]
            active[r, j] = (act or f) and not release
            false_since[r, j] = UNSET if release else fs
            fire[u, j] = f
            n_fired += f
    return ur, fire, sums, hist, now_ms, n_fired, late, ts_max, n_complaints


# inlined into similar_complaints (cached with it): no cache entry of its own beside the
# session kernel's compilation of the same function
_popcount = njit(nogil=True, inline="always")(popcount64_py)


@njit(cache=True, nogil=True)
def similar_complaints(ts, sess, intent, sim, n, t, it, sh, win, bits):
    """Among a queue's last ``n`` complaints (the first ``n`` entries of the ring arrays),
    those within ``win`` ms of time ``t`` that are similar to a complaint of intent ``it``
    (-1: none) and SimHash ``sh`` (0: none): the same intent, or both SimHashes non-zero
    and within ``bits`` (Hamming). Returns (the number of different sessions among them,
    their number)."""
    picked = np.empty(n, np.int64)
    count = 0
    for k in range(n):
        if abs(ts[k] - t) > win:
            continue
        if (it >= 0 and intent[k] == it) or (sh != 0 and sim[k] != 0 and _popcount(sim[k] ^ sh) <= bits):
            picked[count] = sess[k]
            count += 1
    if count == 0:
        return 0, 0
    srt = np.sort(picked[:count])
    distinct = 1
    for k in range(1, count):
        distinct += srt[k] != srt[k - 1]
    return distinct, count
