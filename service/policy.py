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
    _warned: set = field(default_factory=set)

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
        """Per-turn (level, raise, floor) of the strongest cues in each mask."""
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


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (default: the packaged one)."""
    path = Path(path) if path else DEFAULT_POLICY
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist", "policy") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "policy") from None
    r = _Reader(data, str(path))
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{path}: missing top-level version = \"...\"", "version")
    r.unknown_keys(data, ("version", "levels", "sentiment", "windows", "weights", "saturation",
                          "sla_seconds", "tiers", "escalation", "intents"), "top level")

    pf = np.zeros(L.P_ROWS, np.float64)
    lv = r.section("levels")
    r.unknown_keys(lv, ("blue", "yellow", "red", "hysteresis"), "levels")
    blue, yellow, red = (r.number(lv, k, "levels", 0, 100) for k in ("blue", "yellow", "red"))
    if not blue < yellow < red:
        raise ConfigError(f"{path}: levels must rise: blue {blue} < yellow {yellow} < red {red}", "levels")
    pf[L.P_TH_BLUE], pf[L.P_TH_YELLOW], pf[L.P_TH_RED] = blue, yellow, red
    pf[L.P_HYSTERESIS] = r.number(lv, "hysteresis", "levels", 0, blue)

    w = r.section("windows")
    spec = {  # key: (pf index, lo, hi, lo_open, scale)
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
    r.unknown_keys(w, spec, "windows")
    for key, (idx, lo, hi, lo_open, scale) in spec.items():
        pf[idx] = r.number(w, key, "windows", lo, hi, lo_open) * scale
    if pf[L.P_NEG_TURNS_N] != int(pf[L.P_NEG_TURNS_N]):
        raise ConfigError(f"{path}: windows.neg_turns must be a whole number", "windows.neg_turns")
    if pf[L.P_BUCKET_MS] < 1 or pf[L.P_AGENT_BUCKET_MS] < 1:
        raise ConfigError(f"{path}: window buckets must be at least 1 ms", "windows")
    pf[L.P_BUCKET_MS] = round(pf[L.P_BUCKET_MS])
    pf[L.P_AGENT_BUCKET_MS] = round(pf[L.P_AGENT_BUCKET_MS])

    for sect, base, lo, lo_open in (("weights", L.P_WEIGHTS, 0, False), ("saturation", L.P_SATURATION, 0, True)):
        t = r.section(sect)
        r.unknown_keys(t, L.INDICATORS, sect)
        for i, name in enumerate(L.INDICATORS):
            pf[base + i] = r.number(t, name, sect, lo, 1000, lo_open)

    sent = r.section("sentiment")
    neg_label, pos_label = sent.get("negative_label"), sent.get("positive_label")
    if not isinstance(neg_label, str) or not isinstance(pos_label, str) or neg_label == pos_label:
        raise ConfigError(f"{path}: [sentiment] needs distinct negative_label and positive_label", "sentiment")

    sla_t = r.section("sla_seconds")
    r.unknown_keys(sla_t, CHANNEL_NAMES, "sla_seconds")
    sla_by_name = {}
    for ch in CHANNEL_NAMES:
        row = sla_t.get(ch)
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: missing sla_seconds.{ch}", f"sla_seconds.{ch}")
        r.unknown_keys(row, TIER_NAMES, f"sla_seconds.{ch}")
        vals = [r.number(row, t, f"sla_seconds.{ch}", 0, 30 * 86400, True) for t in TIER_NAMES]
        if any(b > a for a, b in zip(vals, vals[1:])):
            raise ConfigError(f"{path}: sla_seconds.{ch} must not grow with the tier "
                              f"(STANDARD >= GOLD >= DIAMOND >= VIP): {vals}", f"sla_seconds.{ch}")
        sla_by_name[ch] = dict(zip(TIER_NAMES, vals))
    sla_ms = np.array([[sla_by_name[ch][t] * 1000.0 for t in TIERS] for ch in CHANNELS])

    tiers = r.section("tiers")
    r.unknown_keys(tiers, ("raise", "complaint_floor"), "tiers")
    raises_t, floors_t = tiers.get("raise", {}), tiers.get("complaint_floor", {})
    t_raise = [int(r.number(raises_t, t, "tiers.raise", 0, 4)) for t in TIER_NAMES]
    if any(b < a for a, b in zip(t_raise, t_raise[1:])):
        raise ConfigError(f"{path}: tiers.raise must not fall with the tier: {t_raise}", "tiers.raise")
    t_floor = []
    for t in TIER_NAMES:
        if t not in floors_t:
            raise ConfigError(f"{path}: missing tiers.complaint_floor.{t}", "tiers.complaint_floor")
        t_floor.append(r.level(floors_t[t], f"tiers.complaint_floor.{t}"))
    if any(b < a for a, b in zip(t_floor, t_floor[1:])):
        raise ConfigError(f"{path}: tiers.complaint_floor must not fall with the tier", "tiers.complaint_floor")
    by_tier = dict(zip(TIER_NAMES, zip(t_raise, t_floor)))
    tier_raise = np.array([by_tier[t][0] for t in TIERS], np.int64)
    tier_floor = np.array([by_tier[t][1] for t in TIERS], np.int64)

    cues = _escalation_categories()
    esc = r.section("escalation")
    r.unknown_keys(esc, cues, "escalation")
    esc_level, esc_raise, esc_floor = [], [], []
    for cue in cues:
        row = esc.get(cue)
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: missing escalation.{cue}", f"escalation.{cue}")
        r.unknown_keys(row, ("level", "raise", "floor"), f"escalation.{cue}")
        esc_level.append(r.number(row, "level", f"escalation.{cue}", 0, 1))
        esc_raise.append(int(r.number(row, "raise", f"escalation.{cue}", 0, 4)))
        esc_floor.append(r.level(row.get("floor", "NONE"), f"escalation.{cue}.floor"))

    intents = r.section("intents")
    r.unknown_keys(intents, ("default_category", "default_weight", "categories", "labels"), "intents")
    categories = {}
    for name, row in intents.get("categories", {}).items():
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: intents.categories.{name} must be a table", f"intents.categories.{name}")
        r.unknown_keys(row, ("raise", "complaint"), f"intents.categories.{name}")
        complaint = row.get("complaint", False)
        if not isinstance(complaint, bool):
            raise ConfigError(f"{path}: intents.categories.{name}.complaint must be true or false",
                              f"intents.categories.{name}.complaint")
        categories[name] = (int(r.number(row, "raise", f"intents.categories.{name}", 0, 4)), complaint)
    default_cat = intents.get("default_category")
    if default_cat not in categories:
        raise ConfigError(f"{path}: intents.default_category {default_cat!r} is not in [intents.categories]",
                          "intents.default_category")
    default_w = r.number(intents, "default_weight", "intents", 0, 1)
    labels = {}
    for label, row in intents.get("labels", {}).items():
        where = f"intents.labels.{label}"
        if not (isinstance(row, list) and len(row) == 2 and row[0] in categories):
            raise ConfigError(f"{path}: {where} must be [category, weight] with a category from "
                              f"[intents.categories], got {row!r}", where)
        labels[label] = (row[0], r.number({"weight": row[1]}, "weight", where, 0, 1))

    return Policy(version=version, path=str(path), pf=pf, sla_ms=sla_ms, tier_raise=tier_raise,
                  tier_complaint_floor=tier_floor, esc_level=np.array(esc_level),
                  esc_raise=np.array(esc_raise, np.int64), esc_floor=np.array(esc_floor, np.int64),
                  negative_label=neg_label, positive_label=pos_label,
                  intent_default_category=default_cat, intent_default_weight=default_w,
                  intent_categories=categories, intent_labels=labels)
