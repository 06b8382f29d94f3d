"""The risk policy: a versioned TOML file, validated at load, turned into the arrays
the kernels read (thresholds, windows, weights, saturations) and the lookup tables the
batcher applies per turn (SLA by channel and tier, tier and cue raises and floors,
intent categories and weights).

    >>> from yujing.service.policy import load_policy
    >>> p = load_policy()          # the packaged default (service/policy_default.toml)
    >>> p.version.startswith("default")
    True
"""
from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yujing.kernels import layout as L
from yujing.service.alerts.policy import AlertPolicy
from yujing.service.alerts.trends import TrendPolicy
from yujing.service.errors import ConfigError

log = logging.getLogger(__name__)
from yujing.service.paths import DEFAULT_POLICY  # noqa: E402

CHANNELS = ("CHAT", "VOICE", "CHAT", "EMAIL", "SOCIAL", "APP")   # by proto enum number
TIERS = ("STANDARD", "STANDARD", "GOLD", "DIAMOND", "VIP")      # by proto enum number
TIER_NAMES = ("STANDARD", "GOLD", "DIAMOND", "VIP")
CHANNEL_NAMES = ("VOICE", "CHAT", "APP", "SOCIAL", "EMAIL")
LEVEL_NAMES = ("NONE", "BLUE", "YELLOW", "RED")


def _escalation_categories() -> tuple[str, ...]:
    from yujing.service.featurize import ESCALATION_CATEGORIES

    return tuple(ESCALATION_CATEGORIES)


@dataclass
class IntentTable:
    """The policy's view of one intent model's label set (same order as its labels)."""

    labels: tuple[str, ...]
    category: tuple[str, ...]
    weight: np.ndarray       # float64 [n_labels]
    raise_: np.ndarray       # int64 [n_labels]
    complaint: np.ndarray    # bool [n_labels]


@dataclass
class Policy:
    version: str
    path: str
    pf: np.ndarray                       # float64 [P_ROWS], the kernels' parameters
    sla_ms: np.ndarray                   # float64 [6 channel enums, 5 tier enums]
    tier_raise: np.ndarray               # int64 [5 tier enums]
    tier_complaint_floor: np.ndarray     # int64 [5 tier enums], level 0-3
    esc_level: np.ndarray                # float64 [n cue categories]
    esc_raise: np.ndarray                # int64
    esc_floor: np.ndarray                # int64
    negative_label: str
    positive_label: str
    intent_default_category: str
    intent_default_weight: float
    intent_categories: dict = field(default_factory=dict)   # name -> (raise, complaint)
    intent_labels: dict = field(default_factory=dict)       # label -> (category, weight)
    emotion: dict = field(default_factory=dict)             # emotion label -> intensity in [0, 1]
    alerts: AlertPolicy = field(default_factory=AlertPolicy)  # [alerts]: deadlines, chain, thresholds
    trend: TrendPolicy = field(default_factory=TrendPolicy)   # [trend]: queue windows, baselines, rules
    _warned: set = field(default_factory=set)
    # escalation_from_masks' tables, built on first use
    _esc_tables: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def emotion_weights(self, labels) -> np.ndarray:
        """The intensity each of an emotion model's labels stands for (0 for a label the
        policy does not list): the ``intensity`` indicator takes the larger of a text's
        typographic intensity and sum_label P(label) * weight."""
        return np.array([self.emotion.get(lab, 0.0) for lab in labels], dtype=np.float64)

    def weights(self) -> dict[str, float]:
        return {n: float(self.pf[L.P_WEIGHTS + i]) for i, n in enumerate(L.INDICATORS)}

    def intent_table(self, labels) -> IntentTable:
        """Categories and weights for a model's labels; unknown labels warn once."""
        cats, weights, raises, complaint = [], [], [], []
        for label in labels:
            if label in self.intent_labels:
                cat, w = self.intent_labels[label]
            else:
                cat, w = self.intent_default_category, self.intent_default_weight
                if label not in self._warned:
                    self._warned.add(label)
                    log.warning("policy %s: intent label %r is not in [intents.labels]; "
                                "using category %r, weight %.2f", self.version, label, cat, w)
            r, c = self.intent_categories[cat]
            cats.append(cat)
            weights.append(w)
            raises.append(r)
            complaint.append(c)
        return IntentTable(tuple(labels), tuple(cats), np.asarray(weights, np.float64),
                           np.asarray(raises, np.int64), np.asarray(complaint, bool))

    def escalation_from_masks(self, masks: np.ndarray):
        """Per-turn (level, raise, floor) of the strongest cues in each mask: looked up in
        tables of every mask value (:meth:`escalation_by_mask`, built once)."""
        tables = self._esc_tables
        if tables is None:
            tables = self._esc_tables = self.escalation_by_mask(np.arange(1 << self.esc_level.shape[0]))
        level, raise_, floor = tables
        return level[masks], raise_[masks], floor[masks]

    def escalation_by_mask(self, masks: np.ndarray):
        """The definition: per mask, the largest level, raise and floor of its cue
        categories (bit i = category i; 0 without a cue)."""
        n = masks.shape[0]
        level = np.zeros(n, np.float64)
        raise_ = np.zeros(n, np.int64)
        floor = np.zeros(n, np.int64)
        for bit in range(self.esc_level.shape[0]):
            hit = (masks >> bit) & 1 == 1
            if hit.any():
                np.maximum(level, np.where(hit, self.esc_level[bit], 0.0), out=level)
                np.maximum(raise_, np.where(hit, self.esc_raise[bit], 0), out=raise_)
                np.maximum(floor, np.where(hit, self.esc_floor[bit], 0), out=floor)
        return level, raise_, floor


class _Reader:
    """Typed access to the parsed TOML with error messages that name the key."""

    def __init__(self, data: dict, path: str):
        self.data, self.path = data, path

    def section(self, name: str) -> dict:
        v = self.data.get(name)
        if not isinstance(v, dict):
            raise ConfigError(f"{self.path}: missing table [{name}]", name)
        return v

    def number(self, table: dict, key: str, where: str, lo=-math.inf, hi=math.inf,
               lo_open=False) -> float:
        if key not in table:
            raise ConfigError(f"{self.path}: missing {where}.{key}", f"{where}.{key}")
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{self.path}: {where}.{key} must be a number, got {v!r}", f"{where}.{key}")
        if v < lo or v > hi or (lo_open and v == lo):
            rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
            raise ConfigError(f"{self.path}: {where}.{key} = {v} is outside {rng}", f"{where}.{key}")
        return float(v)

    def level(self, v, where: str) -> int:
        if v not in LEVEL_NAMES:
            raise ConfigError(f"{self.path}: {where} = {v!r}; expected one of {LEVEL_NAMES}", where)
        return LEVEL_NAMES.index(v)

    def unknown_keys(self, table: dict, allowed, where: str):
        extra = sorted(set(table) - set(allowed))
        if extra:
            raise ConfigError(f"{self.path}: unknown key(s) in [{where}]: {', '.join(extra)}", where)


_TOP_LEVEL = ("version", "levels", "sentiment", "windows", "weights", "saturation",
              "sla_seconds", "tiers", "escalation", "intents", "emotion", "alerts", "trend")
_WINDOWS = {  # key: (pf index, lo, hi, lo_open, scale to the kernel's unit)
    "alpha_fast": (L.P_ALPHA_FAST, 0, 1, True, 1.0),
    "alpha_slow": (L.P_ALPHA_SLOW, 0, 1, True, 1.0),
    "neg_turns": (L.P_NEG_TURNS_N, 1, 30, False, 1.0),
    "window_minutes": (L.P_BUCKET_MS, 0, 24 * 60, True, 60000.0 / L.WINDOW_BUCKETS),
    "peak_half_life_s": (L.P_HL_PEAK_MS, 0, math.inf, True, 1000.0),
    "escalation_half_life_s": (L.P_HL_ESCALATION_MS, 0, math.inf, True, 1000.0),
    "exposure_half_life_s": (L.P_HL_EXPOSURE_MS, 0, math.inf, True, 1000.0),
    "rate_tau_s": (L.P_RATE_TAU_MS, 0, math.inf, True, 1000.0),
    "alpha_delay": (L.P_ALPHA_DELAY, 0, 1, True, 1.0),
    "negation_decay": (L.P_NEGATION_DECAY, 0, 1, False, 1.0),
    "alpha_intensity": (L.P_ALPHA_INTENSITY, 0, 1, True, 1.0),
    "near_duplicate_bits": (L.P_NEAR_DUP_BITS, 0, 64, False, 1.0),
    "repeat_min_words": (L.P_REPEAT_MIN_WORDS, 0, 10000, False, 1.0),
    "agent_bucket_minutes": (L.P_AGENT_BUCKET_MS, 0, 24 * 60, True, 60000.0),
}


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (default: the packaged one): read the TOML, check
    each section (in file order of importance, the first problem is reported), then pack
    the arrays the kernels and the batcher use."""
    path = Path(path) if path else DEFAULT_POLICY
    r = _Reader(_read_toml(path), str(path))
    version = _check_top_level(r)
    levels = _check_levels(r)
    windows = _check_windows(r)
    weights = _check_indicator_values(r, "weights", lo_open=False)
    saturation = _check_indicator_values(r, "saturation", lo_open=True)
    neg_label, pos_label = _check_sentiment(r)
    sla = _check_sla(r)
    tiers = _check_tiers(r)
    escalation = _check_escalation(r)
    categories, default_cat, default_w, labels = _check_intents(r)
    emotion = _check_emotion(r)
    alerts = AlertPolicy.from_section(r.data.get("alerts"), r.path)
    trend = TrendPolicy.from_section(r.data.get("trend"), f"{r.path} [trend]")
    return Policy(version=version, path=str(path), pf=_pack_pf(levels, windows, weights, saturation),
                  sla_ms=_pack_sla_ms(sla), tier_raise=_pack_by_tier(tiers, 0),
                  tier_complaint_floor=_pack_by_tier(tiers, 1),
                  esc_level=np.array([e[0] for e in escalation]),
                  esc_raise=np.array([e[1] for e in escalation], np.int64),
                  esc_floor=np.array([e[2] for e in escalation], np.int64),
                  negative_label=neg_label, positive_label=pos_label,
                  intent_default_category=default_cat, intent_default_weight=default_w,
                  intent_categories=categories, intent_labels=labels, emotion=emotion, alerts=alerts, trend=trend)


# -- reading --------------------------------------------------------------------------
def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist", "policy") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "policy") from None


# -- validating, one section each: plain values in the policy's own units ---------------
def _check_top_level(r: _Reader) -> str:
    version = r.data.get("version")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{r.path}: missing top-level version = \"...\"", "version")
    r.unknown_keys(r.data, _TOP_LEVEL, "top level")
    return version


def _check_levels(r: _Reader) -> dict:
    """[levels]: blue < yellow < red in [0, 100], hysteresis in [0, blue]."""
    lv = r.section("levels")
    r.unknown_keys(lv, ("blue", "yellow", "red", "hysteresis"), "levels")
    blue, yellow, red = (r.number(lv, k, "levels", 0, 100) for k in ("blue", "yellow", "red"))
    if not blue < yellow < red:
        raise ConfigError(f"{r.path}: levels must rise: blue {blue} < yellow {yellow} < red {red}", "levels")
    return {"blue": blue, "yellow": yellow, "red": red, "hysteresis": r.number(lv, "hysteresis", "levels", 0, blue)}


def _check_windows(r: _Reader) -> dict:
    """[windows], scaled to the kernel's units (ms, bucket widths): pf index -> value."""
    w = r.section("windows")
    r.unknown_keys(w, _WINDOWS, "windows")
    out = {idx: r.number(w, key, "windows", lo, hi, lo_open) * scale
           for key, (idx, lo, hi, lo_open, scale) in _WINDOWS.items()}
    if out[L.P_NEG_TURNS_N] != int(out[L.P_NEG_TURNS_N]):
        raise ConfigError(f"{r.path}: windows.neg_turns must be a whole number", "windows.neg_turns")
    if out[L.P_BUCKET_MS] < 1 or out[L.P_AGENT_BUCKET_MS] < 1:
        raise ConfigError(f"{r.path}: window buckets must be at least 1 ms", "windows")
    out[L.P_BUCKET_MS] = round(out[L.P_BUCKET_MS])
    out[L.P_AGENT_BUCKET_MS] = round(out[L.P_AGENT_BUCKET_MS])
    return out


def _check_indicator_values(r: _Reader, sect: str, lo_open: bool) -> list[float]:
    """[weights] or [saturation]: one number in [0, 1000] per indicator, in layout order."""
    t = r.section(sect)
    r.unknown_keys(t, L.INDICATORS, sect)
    return [r.number(t, name, sect, 0, 1000, lo_open) for name in L.INDICATORS]


def _check_sentiment(r: _Reader) -> tuple[str, str]:
    sent = r.section("sentiment")
    neg_label, pos_label = sent.get("negative_label"), sent.get("positive_label")
    if not isinstance(neg_label, str) or not isinstance(pos_label, str) or neg_label == pos_label:
        raise ConfigError(f"{r.path}: [sentiment] needs distinct negative_label and positive_label", "sentiment")
    return neg_label, pos_label


def _check_sla(r: _Reader) -> dict:
    """[sla_seconds]: channel -> tier -> seconds, not growing with the tier."""
    sla_t = r.section("sla_seconds")
    r.unknown_keys(sla_t, CHANNEL_NAMES, "sla_seconds")
    sla_by_name = {}
    for ch in CHANNEL_NAMES:
        row = sla_t.get(ch)
        if not isinstance(row, dict):
            raise ConfigError(f"{r.path}: missing sla_seconds.{ch}", f"sla_seconds.{ch}")
        r.unknown_keys(row, TIER_NAMES, f"sla_seconds.{ch}")
        vals = [r.number(row, t, f"sla_seconds.{ch}", 0, 30 * 86400, True) for t in TIER_NAMES]
        if any(b > a for a, b in zip(vals, vals[1:])):
            raise ConfigError(f"{r.path}: sla_seconds.{ch} must not grow with the tier "
                              f"(STANDARD >= GOLD >= DIAMOND >= VIP): {vals}", f"sla_seconds.{ch}")
        sla_by_name[ch] = dict(zip(TIER_NAMES, vals))
    return sla_by_name


def _check_tiers(r: _Reader) -> dict:
    """[tiers]: tier -> (priority raise, complaint floor level), neither falling with the tier."""
    tiers = r.section("tiers")
    r.unknown_keys(tiers, ("raise", "complaint_floor"), "tiers")
    raises_t, floors_t = tiers.get("raise", {}), tiers.get("complaint_floor", {})
    t_raise = [int(r.number(raises_t, t, "tiers.raise", 0, 4)) for t in TIER_NAMES]
    if any(b < a for a, b in zip(t_raise, t_raise[1:])):
        raise ConfigError(f"{r.path}: tiers.raise must not fall with the tier: {t_raise}", "tiers.raise")
    t_floor = []
    for t in TIER_NAMES:
        if t not in floors_t:
            raise ConfigError(f"{r.path}: missing tiers.complaint_floor.{t}", "tiers.complaint_floor")
        t_floor.append(r.level(floors_t[t], f"tiers.complaint_floor.{t}"))
    if any(b < a for a, b in zip(t_floor, t_floor[1:])):
        raise ConfigError(f"{r.path}: tiers.complaint_floor must not fall with the tier", "tiers.complaint_floor")
    return dict(zip(TIER_NAMES, zip(t_raise, t_floor)))


def _check_escalation(r: _Reader) -> list[tuple[float, int, int]]:
    """[escalation]: (level, raise, floor) per cue category, in featurize's order."""
    cues = _escalation_categories()
    esc = r.section("escalation")
    r.unknown_keys(esc, cues, "escalation")
    out = []
    for cue in cues:
        row = esc.get(cue)
        if not isinstance(row, dict):
            raise ConfigError(f"{r.path}: missing escalation.{cue}", f"escalation.{cue}")
        r.unknown_keys(row, ("level", "raise", "floor"), f"escalation.{cue}")
        out.append((r.number(row, "level", f"escalation.{cue}", 0, 1),
                    int(r.number(row, "raise", f"escalation.{cue}", 0, 4)),
                    r.level(row.get("floor", "NONE"), f"escalation.{cue}.floor")))
    return out


def _check_intent_categories(r: _Reader, intents: dict) -> dict:
    categories = {}
    for name, row in intents.get("categories", {}).items():
        if not isinstance(row, dict):
            raise ConfigError(f"{r.path}: intents.categories.{name} must be a table", f"intents.categories.{name}")
        r.unknown_keys(row, ("raise", "complaint"), f"intents.categories.{name}")
        complaint = row.get("complaint", False)
        if not isinstance(complaint, bool):
            raise ConfigError(f"{r.path}: intents.categories.{name}.complaint must be true or false",
                              f"intents.categories.{name}.complaint")
        categories[name] = (int(r.number(row, "raise", f"intents.categories.{name}", 0, 4)), complaint)
    return categories


def _check_emotion(r: _Reader) -> dict:
    """[emotion] (optional): label = intensity in [0, 1], e.g. angry = 1.0, anxious = 0.5."""
    t = r.data.get("emotion", {})
    if not isinstance(t, dict):
        raise ConfigError(f"{r.path}: [emotion] must be a table of label = intensity", "emotion")
    return {k: r.number(t, k, "emotion", 0.0, 1.0) for k in t}


def _check_intents(r: _Reader):
    """[intents]: ``(categories, default category, default weight, labels)``."""
    intents = r.section("intents")
    r.unknown_keys(intents, ("default_category", "default_weight", "categories", "labels"), "intents")
    categories = _check_intent_categories(r, intents)
    default_cat = intents.get("default_category")
    if default_cat not in categories:
        raise ConfigError(f"{r.path}: intents.default_category {default_cat!r} is not in [intents.categories]",
                          "intents.default_category")
    default_w = r.number(intents, "default_weight", "intents", 0, 1)
    labels = {}
    for label, row in intents.get("labels", {}).items():
        where = f"intents.labels.{label}"
        if not (isinstance(row, list) and len(row) == 2 and row[0] in categories):
            raise ConfigError(f"{r.path}: {where} must be [category, weight] with a category from "
                              f"[intents.categories], got {row!r}", where)
        labels[label] = (row[0], r.number({"weight": row[1]}, "weight", where, 0, 1))
    return categories, default_cat, default_w, labels


# -- packing: the arrays the kernels and the per-turn look-ups index -------------------
def _pack_pf(levels: dict, windows: dict, weights: list, saturation: list) -> np.ndarray:
    """float64 [P_ROWS], laid out by :mod:`yujing.kernels.layout` (``P_*``)."""
    pf = np.zeros(L.P_ROWS, np.float64)
    pf[L.P_TH_BLUE], pf[L.P_TH_YELLOW], pf[L.P_TH_RED] = levels["blue"], levels["yellow"], levels["red"]
    pf[L.P_HYSTERESIS] = levels["hysteresis"]
    for idx, v in windows.items():
        pf[idx] = v
    pf[L.P_WEIGHTS:L.P_WEIGHTS + L.N_INDICATORS] = weights
    pf[L.P_SATURATION:L.P_SATURATION + L.N_INDICATORS] = saturation
    return pf


def _pack_sla_ms(sla_by_name: dict) -> np.ndarray:
    """float64 [channel enum, tier enum] in ms."""
    return np.array([[sla_by_name[ch][t] * 1000.0 for t in TIERS] for ch in CHANNELS])


def _pack_by_tier(by_tier: dict, field: int) -> np.ndarray:
    """int64 [tier enum] of one field of ``_check_tiers``' values (0 raise, 1 floor)."""
    return np.array([by_tier[t][field] for t in TIERS], np.int64)
