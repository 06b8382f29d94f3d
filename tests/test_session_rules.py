"""Which turns raise a session or agent alert (service/alerts/session_rules.py): on a
change, never on a state; a slot that starts a new session starts clean."""
import numpy as np

from yujing.kernels import layout as L
from yujing.service.alerts.session_rules import FATIGUE, HANDOFF, RISE, SessionMarks


def _mark(m, slots, levels, actions=None, new=None, agents=None, agents_new=None, fatigue=None, turns=20.0):
    n = len(slots)
    oi = np.zeros((L.OI_ROWS, n), np.int64)
    oi[L.OI_LEVEL] = levels
    oi[L.OI_ACTIONS] = actions if actions is not None else 0
    z = np.zeros(n, np.int64)
    return m.mark(np.asarray(slots, np.int64), np.asarray(new if new is not None else z, np.int64), oi,
                  np.asarray(agents if agents is not None else np.full(n, -1), np.int64),
                  np.asarray(agents_new if agents_new is not None else z, np.int64),
                  np.asarray(fatigue if fatigue is not None else np.zeros(n), np.float64), turns)


def test_one_rise_per_level_step_and_again_after_a_fall():
    m = SessionMarks(8, 4)
    levels = [0, 1, 1, 2, 2, 3, 3, 2, 3, 1, 2]
    marks = _mark(m, [5] * len(levels), levels)
    assert marks[RISE].tolist() == [0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1]
    # the next batch continues from what the slot remembers
    assert _mark(m, [5, 5], [2, 3])[RISE].tolist() == [0, 1]


def test_sessions_are_independent_and_a_new_session_on_a_slot_starts_clean():
    m = SessionMarks(8, 4)
    marks = _mark(m, [1, 2, 1, 2], [2, 1, 2, 1])
    assert marks[RISE].tolist() == [1, 1, 0, 0]
    marks = _mark(m, [1], [2], new=[1])          # slot 1 reused by another session at YELLOW
    assert marks[RISE].tolist() == [1]


def test_handoff_once_while_needed_again_after_a_human_took_over():
    m = SessionMarks(4, 4)
    h = L.ACTION_HANDOFF
    marks = _mark(m, [0] * 5, [2, 2, 2, 2, 2], actions=[h, h, 0, h, h])
    assert marks[HANDOFF].tolist() == [1, 0, 0, 1, 0]


def test_agent_fatigue_once_until_it_falls_below_half():
    m = SessionMarks(4, 4)
    f = [5, 20, 25, 12, 9, 21, 30]
    marks = _mark(m, [0] * 7, [0] * 7, agents=[3] * 7, fatigue=f, turns=20.0)
    assert marks[FATIGUE].tolist() == [0, 1, 0, 0, 0, 1, 0]
    marks = _mark(m, [1], [0], agents=[3], agents_new=[1], fatigue=[20.0])   # a new agent on slot 3
    assert marks[FATIGUE].tolist() == [1]
    assert _mark(m, [1], [0], agents=[-1], fatigue=[50.0])[FATIGUE].tolist() == [0]
