"""The plain numpy definition of ``TrendTracker.observe`` (yujing.service.alerts.trends; its
module docstring is the spec): the whole micro-batch at once as numpy array calls
(np.unique, np.add.at, fancy-index gathers), as the service ran it before the counting and
the rules moved into one compiled kernel (yujing.kernels.trends). The service does not call
it; ``tests/test_trends_compiled.py`` drives both with the same long random stream and holds
their events and state equal, and ``python -m yujing.loadtest.bench.trends`` times them side
by side. Rows, the repeated-complaint memory, the figures of ``health``/``gauges`` and the
cached segment sums are shared with the service's tracker (this class only replaces the
turns' row lookup, the per-batch update, the rule evaluation and the repeated-complaint
scan)."""
from __future__ import annotations

import numpy as np

from yujing.service.alerts.events import AlertEvent
from yujing.service.alerts.trends import (COMPLAINTS, CUSTOMER, ESCALATIONS, NC, NEGATIVE, NEW_SESSIONS,
                                          TURNS, _FAR, _NEVER, _UNSET, TrendTracker, _div, _Recent)

_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount64(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[x.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)


class ReferenceTrendTracker(TrendTracker):
    """``TrendTracker`` with the numpy ``observe`` (the reference the compiled one equals)."""

    def _rows_of(self, tenants, queues, categories, n: int):
        qrow = np.empty(n, np.int64)
        crow = np.empty(n, np.int64)
        seen = {}
        ignore = self._ignore
        for i, k in enumerate(zip(tenants, queues, categories)):
            rc = seen.get(k)
            if rc is None:
                q = self._queue_row(k[0], k[1])
                rc = seen[k] = (q, self._category_row(q, k[2]) if k[2] and k[2] not in ignore else -1)
            qrow[i], crow[i] = rc
        return qrow, crow

    def observe(self, tenants, queues, categories, ts_ms, customer, negative, complaint,
                new_session, escalation, session_hash, intent_id, simhash) -> list[AlertEvent]:
        """:meth:`TrendTracker.observe` (same arguments, same alerts) in numpy over the batch:
        the definition the compiled path is tested against."""
        ts = np.asarray(ts_ms, np.int64).reshape(-1)
        n = ts.shape[0]
        if n == 0:
            return []
        cust = np.asarray(customer, bool).reshape(-1)
        compl = cust & np.asarray(complaint, bool).reshape(-1)
        vals = np.empty((n, NC), np.int32)
        vals[:, TURNS] = 1
        vals[:, CUSTOMER] = cust
        vals[:, NEGATIVE] = cust & np.asarray(negative, bool).reshape(-1)
        vals[:, COMPLAINTS] = compl
        vals[:, NEW_SESSIONS] = np.asarray(new_session, bool).reshape(-1)
        vals[:, ESCALATIONS] = np.asarray(escalation, bool).reshape(-1)
        with self._lock:
            qrow, crow = self._rows_of(tenants, queues, categories, n)
            has_c = crow >= 0
            rows = np.concatenate([qrow, crow[has_c]])
            b = ts // self.bucket_ms
            bb = np.concatenate([b, b[has_c]])
            tt = np.concatenate([ts, ts[has_c]])
            vv = np.concatenate([vals, vals[has_c]])
            ur, inv = np.unique(rows, return_inverse=True)
            bmax = np.full(ur.shape[0], _NEVER, np.int64)
            np.maximum.at(bmax, inv, bb)
            bmin = np.full(ur.shape[0], _FAR, np.int64)
            np.minimum.at(bmin, inv, bb)
            tmax = np.full(ur.shape[0], -1, np.int64)
            np.maximum.at(tmax, inv, tt)
            self._advance(ur, bmax)
            ok = bb > self._last[rows] - self.nb
            self.late_dropped += int(n - ok[:n].sum())
            r_ok = rows[ok]
            np.add.at(self._counts, (r_ok[:, None], np.arange(NC)[None, :], (bb[ok] % self.nb)[:, None]), vv[ok])
            # a turn in a bucket before the one the cached sums are as of makes them stale
            self._seg_b[r_ok[bb[ok] != self._seg_b[r_ok]]] = _UNSET
            self._first[ur] = np.minimum(self._first[ur], bmin)
            self._first[ur] = np.minimum(self._first[ur], self._first[self._parent[ur]])
            self._clock[ur] = np.maximum(self._clock[ur], tmax)
            self._stream_ms = max(self._stream_ms, int(ts.max()))
            events = []
            if compl.any():
                events += self._repeated(np.flatnonzero(compl), qrow, categories, ts,
                                         np.asarray(session_hash, np.int64).reshape(-1),
                                         np.asarray(intent_id, np.int64).reshape(-1),
                                         np.asarray(simhash, np.uint64).reshape(-1))
            if not self.policy.category_alerts:
                ur = ur[self._parent[ur] == ur]
            events += self._evaluate(ur)
        events.sort(key=lambda e: e.event_time_ms)
        return events

    def _advance(self, ur: np.ndarray, bmax: np.ndarray):
        """Move each row's ring forward to bucket ``bmax``, zeroing the buckets it skips."""
        last = self._last[ur]
        new = last == _NEVER
        steps = np.where(new, 0, np.clip(bmax - last, 0, self.nb))
        self._last[ur] = np.where(new, bmax, np.maximum(last, bmax))
        if steps.any():
            rr, kk = np.nonzero(np.arange(self.nb)[None, :] < steps[:, None])
            self._counts[ur[rr], :, (last[rr] + 1 + kk) % self.nb] = 0

    def _baseline_volume(self, base: np.ndarray, hist: np.ndarray, w: int) -> np.ndarray:
        """Mean per window of ``w`` buckets over the span before the window ([R, NC])."""
        avail = np.clip(hist - w, 0, self.span)
        return _div(base, avail[:, None]) * w

    # -- rules -------------------------------------------------------------------------
    def _evaluate(self, ur: np.ndarray) -> list[AlertEvent]:
        if ur.size == 0:
            return []
        p = self.policy
        par = self._parent[ur]
        nowb = self._last[par]
        now_ms = self._clock[par]
        f = self._figures(ur, nowb, cached=True)
        armed = f.hist >= self.warm_b
        # NEGATIVE_SURGE
        share = _div(f.cur1[:, NEGATIVE], f.cur1[:, CUSTOMER])
        bshare = _div(f.base1[:, NEGATIVE], f.base1[:, CUSTOMER])
        neg_ratio = _div(share, np.maximum(bshare, p.negative_share_floor))
        neg = armed & (f.cur1[:, CUSTOMER] >= p.negative_min_customer_turns) & (f.base1[:, CUSTOMER] > 0) \
            & (share >= p.negative_surge_ratio * np.maximum(bshare, p.negative_share_floor)) & (share > 0)
        # VOLUME_SPIKE
        vol = f.cur3[:, CUSTOMER]
        bvol = self._baseline_volume(f.base3, f.hist, self.w3)[:, CUSTOMER]
        vol_ratio = vol / np.maximum(bvol, 1.0)
        spike = armed & (np.clip(f.hist - self.w3, 0, None) > 0) & (vol >= p.volume_min_customer_turns) \
            & (vol >= p.volume_spike_ratio * np.maximum(bvol, 1.0))
        # COMPLAINT_RATE_UP
        rate = _div(f.cur24[:, COMPLAINTS], f.cur24[:, CUSTOMER])
        prate = _div(f.prev24[:, COMPLAINTS], f.prev24[:, CUSTOMER])
        rate_ratio = _div(rate, np.maximum(prate, p.complaint_rate_floor))
        comp = (f.hist >= self.warm24_b) & (f.cur24[:, COMPLAINTS] >= p.complaint_min_complaints) \
            & (f.cur24[:, CUSTOMER] >= p.complaint_min_customer_turns) \
            & (f.prev24[:, CUSTOMER] >= max(p.complaint_min_customer_turns, 1)) \
            & (rate >= p.complaint_rate_ratio * np.maximum(prate, p.complaint_rate_floor)) & (rate > 0)

        events = []
        for j, cond in enumerate((neg, spike, comp)):
            fire = self._latch(ur, j, cond, nowb)
            for i in np.flatnonzero(fire).tolist():
                if j == 0:
                    figs = share[i], bshare[i], neg_ratio[i], f.cur1[i, NEGATIVE], f.cur1[i, CUSTOMER]
                elif j == 1:
                    figs = vol[i], bvol[i], vol_ratio[i], vol[i], vol[i]
                else:
                    figs = rate[i], prate[i], rate_ratio[i], f.cur24[i, COMPLAINTS], f.cur24[i, CUSTOMER]
                events.append(self._rate_event(j, int(ur[i]), int(now_ms[i]), *figs))
        return events

    def _latch(self, ur: np.ndarray, j: int, cond: np.ndarray, nowb: np.ndarray) -> np.ndarray:
        """One alert per surge: fire on a rising condition; release a fired row once its
        condition has been false for the rule's cooldown."""
        active = self._active[ur, j]
        fs = self._false_since[ur, j]
        fire = cond & ~active
        fs = np.where(cond, _UNSET, fs)
        fs = np.where(~cond & active & (fs == _UNSET), nowb, fs)
        release = ~cond & active & (fs != _UNSET) & (nowb - fs >= self.cooldown_b[j])
        self._active[ur, j] = (active | fire) & ~release
        self._false_since[ur, j] = np.where(release, _UNSET, fs)
        return fire

    def _repeated(self, idx, qrow, categories, ts, sess, intent, sim) -> list[AlertEvent]:
        p = self.policy
        skip = self._ignore
        bits, win = p.near_dup_bits, self.repeat_ms
        events = []
        for i in idx[np.argsort(ts[idx], kind="stable")].tolist():
            r = int(qrow[i])
            rec = self._recent.get(r)
            if rec is None:
                rec = self._recent[r] = _Recent(p.repeated_recent)
            t, s, sh = int(ts[i]), int(sess[i]), np.uint64(sim[i])
            cat = categories[i] if categories[i] not in skip else ""
            it = int(intent[i]) if intent[i] >= 0 and cat else -1
            rec.append(t, s, it, sh)
            rec.clusters = [c for c in rec.clusters if t - c[2] <= win]
            hit = None
            for c in rec.clusters:
                if (it >= 0 and c[0] == it) or (sh != 0 and c[1] != 0
                                                and bin(int(sh) ^ int(c[1])).count("1") <= bits):
                    hit = c
                    break
            if hit is not None:
                hit[2] = max(hit[2], t)
                continue
            m = slice(0, rec.n)
            near = np.abs(rec.ts[m] - t) <= win
            similar = np.zeros(rec.n, bool)
            if it >= 0:
                similar |= rec.intent[m] == it
            if sh != 0:
                similar |= (rec.sim[m] != 0) & (_popcount64(rec.sim[m] ^ sh) <= bits)
            similar &= near
            n_sessions = int(np.unique(rec.sess[m][similar]).shape[0])
            if n_sessions < p.repeated_complaints:
                continue
            rec.clusters.append([it, int(sh), t])
            del rec.clusters[:-64]
            events.append(self._repeated_event(r, cat, t, it, n_sessions, int(similar.sum())))
        return events
