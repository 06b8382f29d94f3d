"""The state layout: every column of the session and agent tables, the per-turn input
and output arrays, and the policy-parameter vector. Written down here once; the CPU
kernels, the GPU kernels, the session table and the reference all index by these names.

Session table: a struct of arrays with one array per dtype group, each group stored
session-major (``sf[slot, F_SENT_FAST]``), capacity C:

    array  dtype    fields               bytes/session
    sf     float64  F_* (13)             104
    si     int64    I_* (5)              40
    sh     uint64   SIMHASH_RING (4)     32
    sc     int32    C_* (8)              32
    sb     uint8    B_* (7)              7
    sw     uint16   2 * WINDOW_BUCKETS   40
                                         ---
                                         255  (<= 256, asserted below)

Why grouped by dtype and not one array per field: a turn updates one session at a
random slot, so what costs is the number of cache lines (and pages) one update
touches. One array per field spreads a session over 56 lines on 56 pages, and with a
power-of-two capacity all the columns of a group fall into the same cache set; grouped,
a session touches about 8.5 lines (8.56 on average over random slots). Measured side by
side on this project's CPU at 1,048,576 sessions: 1.6x more updates/s grouped
(BENCHMARKS.md, with the 246-byte layout before I_SLA_ALERTED). On a GPU, one thread per
session reads its group contiguously instead of 8 bytes from each of 56 sectors.
Batch-wide passes (TTL sweeps) read one group at a stride, which is cheap by comparison.

Agent table (capacity A): ``ai`` int64 [A, AI_ROWS], ``aw`` int32 [A, 2 * AGENT_BUCKETS].

Units: timestamps are milliseconds since the epoch (int64); durations in state are ms;
sentiment is in [-1, 1] (P(pos) - P(neg)).
"""
from __future__ import annotations

import math

import numpy as np

# --- session table: float64 fields (columns of sf) ----------------------------------
F_SENT_FAST = 0      # customer sentiment EWMA, alpha_fast per customer turn
F_SENT_SLOW = 1      # customer sentiment EWMA, alpha_slow per customer turn
F_PEAK_NEG = 2       # decayed peak negativity max(0, -sentiment), half-life hl_peak
F_RATE = 3           # customer messages, decayed with time constant rate_tau (count)
F_DELAY_EWMA = 4     # EWMA of response delays (ms), alpha_delay per response
F_NEGATION_NUM = 5   # decayed sum of negation tokens over customer turns
F_NEGATION_DEN = 6   # decayed sum of tokens over customer turns
F_INTENSITY = 7      # EWMA of per-turn intensity, alpha_intensity per customer turn
F_ESCALATION = 8     # decayed max escalation-cue level, half-life hl_escalation
F_EXPOSURE = 9       # decayed sum of intent risk weights, half-life hl_exposure
F_SCORE = 10         # the last composite score
F_SLA_MS = 11        # the SLA (ms) of the latest turn's tier and channel
F_FATIGUE = 12       # the agent fatigue seen by the latest turn
SF_ROWS = 13

# --- int64 fields (si) -------------------------------------------------------------
I_FIRST_TS = 0       # timestamp of the first turn
I_LAST_TS = 1        # the session clock: the latest turn timestamp seen
I_WAIT_SINCE = 2     # timestamp of the first unanswered customer turn, NO_WAIT if none
I_WIN_HEAD = 3       # bucket number (ts // bucket_ms) of the newest window bucket
I_SLA_ALERTED = 4    # the I_WAIT_SINCE whose SLA breach the scheduler scan already reported,
                     # NO_WAIT if none (kernels/scan.py); the turn update only resets it
SI_ROWS = 5
# The server clock of a session's last turn (for TTL expiry and eviction) is host state,
# not kernel state: service/session_table.py keeps it beside the slot index, where the
# scans run (and on the GPU backend, on the host, without a device round trip).
NO_WAIT = -1

# --- uint64 fields (sh): SimHash of the last customer texts (ring, position = n_customer % R)
SIMHASH_RING = 4

# --- int32 fields (sc) -------------------------------------------------------------
C_TURNS = 0          # all turns applied
C_CUSTOMER = 1       # customer message turns applied
C_CONSEC_NEG = 2     # consecutive negative customer turns (run length)
C_NEG_BITS = 3       # bit k = customer turn (latest - k) was negative
C_REP_BITS = 4       # bit k = customer turn (latest - k) repeated an earlier complaint
C_LAST_INTENT = 5    # intent id of the latest customer turn, -1 before any
C_TRANSFERS = 6      # TRANSFER events
C_BOT_UNHANDLED = 7  # bot turns since the last human agent turn or HANDOFF
SC_ROWS = 8

# --- uint8 fields (sb) -------------------------------------------------------------
B_LEVEL = 0          # 0 none, 1 blue, 2 yellow, 3 red (with hysteresis)
B_PRIORITY = 1       # 0 none, 1 P3, 2 P2, 3 P1, 4 P0
B_FLAGS = 2          # FLAG_* bits
B_ESC_MASK = 3       # OR of the escalation-cue categories seen (yujing.service.featurize)
B_RAISE = 4          # sticky priority raise from intent categories and cues
B_FLOOR = 5          # sticky minimum level from cues and tier rules
B_DISSAT = 6         # the dissatisfaction model's P(dissatisfied) of the latest customer text it
                     # scored, in 255ths (dissatisfaction_q): a byte, so a session stays in 256
SB_ROWS = 7
DISSAT_SCALE = 255
FLAG_BOT_MODE = 1    # the last non-customer turn was a bot's (no human yet)
FLAG_HAS_DELAY = 2   # F_DELAY_EWMA holds at least one response delay
FLAG_HAS_SENT = 4    # F_SENT_FAST / F_SENT_SLOW hold at least one sentiment

# --- uint16 fields (sw): the time window, rows [0, WB) totals, [WB, 2WB) negatives ------------
WINDOW_BUCKETS = 10
SW_ROWS = 2 * WINDOW_BUCKETS
U16_MAX = 65535

SESSION_DTYPES = (
    ("sf", np.float64, SF_ROWS),
    ("si", np.int64, SI_ROWS),
    ("sh", np.uint64, SIMHASH_RING),
    ("sc", np.int32, SC_ROWS),
    ("sb", np.uint8, SB_ROWS),
    ("sw", np.uint16, SW_ROWS),
)
BYTES_PER_SESSION = sum(np.dtype(dt).itemsize * rows for _, dt, rows in SESSION_DTYPES)
assert BYTES_PER_SESSION <= 256, BYTES_PER_SESSION

# --- agent table -------------------------------------------------------------------------
AI_HEAD = 0          # bucket number of the newest agent bucket
AI_ROWS = 1
AGENT_BUCKETS = 12   # 12 x agent_bucket_ms (default 10 min) = the 2-hour fatigue window
AW_ROWS = 2 * AGENT_BUCKETS   # [0, AB) customer turns handled, [AB, 2AB) negative ones
AGENT_DTYPES = (("ai", np.int64, AI_ROWS), ("aw", np.int32, AW_ROWS))


def dissatisfaction_q(p: float) -> int:
    """P(dissatisfied) as the session table keeps it (B_DISSAT): round(255 p), clipped to a
    byte; the indicator reads q / 255. The kernels spell the same rule in compiled code."""
    q = math.floor(p * DISSAT_SCALE + 0.5)
    return 0 if q < 0 else (DISSAT_SCALE if q > DISSAT_SCALE else int(q))


def layout_version() -> str:
    """A name for this exact layout (every array's name, dtype and rows, and the window
    sizes): a snapshot of the tables is restored only into the layout that wrote it."""
    import hashlib

    spec = repr((SESSION_DTYPES, AGENT_DTYPES, WINDOW_BUCKETS, AGENT_BUCKETS, SIMHASH_RING))
    return "layout-" + hashlib.sha256(spec.encode()).hexdigest()[:12]

# --- per-turn input (a batch of B turns, in arrival order) --------------------------------
T_SLOT = 0           # session slot
T_AGENT = 1          # agent slot, -1 when the turn names no agent
T_TS = 2             # turn timestamp (ms)
T_SPEAKER = 3        # SPEAKER_*
T_EVENT = 4          # EVENT_*
T_FLAGS = 5          # TF_* bits
T_INTENT = 6         # intent label id
T_ESC_MASK = 7       # escalation-cue categories in this text
T_NEG_WORDS = 8      # negation tokens in this text
T_WORDS = 9          # tokens in this text
T_RAISE = 10         # priority raise from this turn's intent category and cues (sticky)
T_TIER_RAISE = 11    # priority raise from the customer tier (this turn only)
T_FLOOR = 12         # minimum level from this turn's cues / tier rule (sticky)
T_NEW = 13           # 1: the session slot was just allocated, initialise it first
T_NEW_AGENT = 14     # 1: the agent slot was just allocated, initialise it first
TI_ROWS = 15

TF_SENTIMENT = 0     # P(pos) - P(neg), in [-1, 1]
TF_INTENT_WEIGHT = 1 # the policy's risk weight of the intent, [0, 1]
TF_INTENSITY = 2     # yujing.service.featurize intensity, [0, 1]
TF_ESC_LEVEL = 3     # the policy's level of the strongest cue in this text, [0, 1]
TF_SLA_MS = 4        # response-time SLA for this turn's tier and channel (ms)
TF_DISSATISFACTION = 5  # the dissatisfaction model's P(dissatisfied) of this text, [0, 1]
TFL_ROWS = 6

TFLAG_HAS_TEXT = 1   # the turn carries text (a message, not only an event)
TFLAG_NEGATIVE = 2   # the sentiment model's label is negative
TFLAG_COMPLAINT = 4  # the intent's category counts as a complaint (a same-intent repeat counts)
TFLAG_SENTIMENT = 8  # TF_SENTIMENT is a model's sentiment of this text (not set when the text's
                     # language is not one the model was trained on: unknown is not neutral)
TFLAG_DISSATISFACTION = 16  # TF_DISSATISFACTION is the dissatisfaction model's output for this
                            # text (the same rule: not set for a language it does not know)

SPEAKER_CUSTOMER = 1
SPEAKER_AGENT = 2
SPEAKER_BOT = 3
EVENT_NONE = 0
EVENT_TRANSFER = 1
EVENT_HOLD = 2
EVENT_RESUME = 3
EVENT_HANDOFF = 4
EVENT_HANGUP = 5

# --- indicators (order = row of the indicator output; the table in README) ---------------
INDICATORS = (
    "sentiment_ewma",          # 0  EWMA(alpha_fast) of customer sentiment, [-1, 1]
    "neg_share_turns",         # 1  negative share of the last N customer turns, [0, 1]
    "neg_share_window",        # 2  negative share of customer turns in the last T min
    "sentiment_trend",         # 3  fast EWMA - slow EWMA, [-2, 2]
    "consecutive_negative",    # 4  run of negative customer turns
    "peak_negativity",         # 5  decayed peak of max(0, -sentiment), [0, 1]
    "repeat_complaints",       # 6  similar complaints among the last N customer turns
    "message_rate",            # 7  customer messages per minute (decayed count / tau)
    "response_delay_sla",      # 8  response-delay EWMA / SLA of tier and channel
    "unanswered_wait_sla",     # 9  current unanswered wait / SLA
    "negation_share",          # 10 negation tokens / tokens, decayed per turn, [0, 1]
    "intensity",               # 11 EWMA of intensity (!, ?, CAPS, repeats), [0, 1]
    "escalation",              # 12 decayed strongest escalation cue, [0, 1]
    "intent_exposure",         # 13 decayed sum of intent risk weights
    "transfers",               # 14 TRANSFER events
    "session_minutes",         # 15 (session clock - first turn) / 60 s
    "bot_turns_unhandled",     # 16 bot turns with no human yet
    "agent_fatigue",           # 17 negative customer turns the agent took in 2 h
    "dissatisfaction",         # 18 P(dissatisfied) of the latest customer text, [0, 1]
)
N_INDICATORS = len(INDICATORS)
IND = {name: i for i, name in enumerate(INDICATORS)}
# Indicators whose risk is their negative part (score uses max(0, -value)).
NEGATIVE_IS_RISK = ("sentiment_ewma", "sentiment_trend")
# Indicators in multiples of the SLA whose risk is the part beyond it (value - 1): an answer
# within the SLA is no risk.
BEYOND_SLA_IS_RISK = ("response_delay_sla", "unanswered_wait_sla")
# Probabilities under equal priors whose risk is the part beyond even odds (value - 0.5): words
# no more typical of dissatisfied customers than of the others are no risk.
BEYOND_EVEN_IS_RISK = ("dissatisfaction",)


def indicator_risk(name: str, value: float) -> float:
    """The risk part of an indicator's value, before saturation (the score's formula:
    points = weight * clip(risk / saturation, 0, 1)). The kernels spell the same rule
    in compiled code (turn_update.score_points)."""
    if name in NEGATIVE_IS_RISK:
        return -value
    if name in BEYOND_SLA_IS_RISK:
        return value - 1.0
    if name in BEYOND_EVEN_IS_RISK:
        return value - 0.5
    return value


def saturated_risk(name: str, value: float, saturation: float) -> float:
    """clip(risk / saturation, 0, 1): the share of an indicator's weight it scores."""
    return min(1.0, max(0.0, indicator_risk(name, value) / saturation))

# --- per-turn output -----------------------------------------------------------------
# of: float64 [OF_ROWS, B]: indicators, then the score, then the top-3 reason points.
# One row per indicator, OF_<NAME> (its dimension, as in the README, beside it):
OF_SENTIMENT_EWMA = 0           # emotion
OF_NEG_SHARE_TURNS = 1          # emotion
OF_NEG_SHARE_WINDOW = 2         # emotion
OF_SENTIMENT_TREND = 3          # trend
OF_CONSECUTIVE_NEGATIVE = 4     # emotion
OF_PEAK_NEGATIVITY = 5          # emotion
OF_REPEAT_COMPLAINTS = 6        # behaviour
OF_MESSAGE_RATE = 7             # behaviour
OF_RESPONSE_DELAY_SLA = 8       # structure
OF_UNANSWERED_WAIT_SLA = 9      # structure
OF_NEGATION_SHARE = 10          # emotion
OF_INTENSITY = 11               # emotion
OF_ESCALATION = 12              # behaviour
OF_INTENT_EXPOSURE = 13         # trend
OF_TRANSFERS = 14               # structure
OF_SESSION_MINUTES = 15         # behaviour
OF_BOT_TURNS_UNHANDLED = 16     # structure
OF_AGENT_FATIGUE = 17           # structure
OF_DISSATISFACTION = 18         # emotion
assert all(globals()["OF_" + name.upper()] == i for i, name in enumerate(INDICATORS)), "OF_* rows != INDICATORS"
OF_SCORE = N_INDICATORS
OF_REASON_POINTS = N_INDICATORS + 1   # 3 rows
OF_TOTAL_POINTS = N_INDICATORS + 4    # sum of points before the 100 cap
OF_ROWS = N_INDICATORS + 5
# oi: int64 [OI_ROWS, B]
OI_LEVEL = 0
OI_PRIORITY = 1
OI_ACTIONS = 2        # ACTION_* bits
OI_REASON_IDX = 3     # 3 rows: indicator index, -1 when fewer reasons
OI_CUSTOMER = 6
OI_TURNS = 7
OI_SESSION_TIME = 8
OI_ROWS = 9
ACTION_HANDOFF = 1
ACTION_SUPERVISOR = 2
# OI_LEVEL values (the policy's thresholds P_TH_BLUE/YELLOW/RED; the proto Level is this + 1)
LEVEL_NONE = 0
LEVEL_BLUE = 1
LEVEL_YELLOW = 2
LEVEL_RED = 3
# OI_PRIORITY values: 0 none, 1 P3, 2 P2, 3 P1, 4 P0 (the proto Priority is this + 1)
PRIORITY_MAX = 4
TOP_REASONS = 3

# --- policy parameter vector pf (float64) ---------------------------------------------
P_ALPHA_FAST = 0
P_ALPHA_SLOW = 1
P_NEG_TURNS_N = 2        # N of neg_share_turns and repeat_complaints, 1..32
P_BUCKET_MS = 3          # window_ms / WINDOW_BUCKETS
P_HL_PEAK_MS = 4
P_HL_ESCALATION_MS = 5
P_HL_EXPOSURE_MS = 6
P_RATE_TAU_MS = 7
P_ALPHA_DELAY = 8
P_NEGATION_DECAY = 9     # per customer turn
P_ALPHA_INTENSITY = 10
P_NEAR_DUP_BITS = 11
P_REPEAT_MIN_WORDS = 12
P_AGENT_BUCKET_MS = 13
P_HYSTERESIS = 14
P_TH_BLUE = 15
P_TH_YELLOW = 16
P_TH_RED = 17
P_WEIGHTS = 18                       # N_INDICATORS weights (points)
P_SATURATION = P_WEIGHTS + N_INDICATORS  # N_INDICATORS saturation values
P_ROWS = P_SATURATION + N_INDICATORS


def new_session_arrays(capacity: int, xp=np) -> dict:
    """Zeroed session-table arrays, ``[capacity, fields]`` each (``xp`` is numpy or cupy)."""
    return {name: xp.zeros((capacity, rows), dtype=dt) for name, dt, rows in SESSION_DTYPES}


def new_agent_arrays(capacity: int, xp=np) -> dict:
    return {name: xp.zeros((capacity, rows), dtype=dt) for name, dt, rows in AGENT_DTYPES}
