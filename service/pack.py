"""The kernel's input arrays for one batch (``ti``, ``tf``, ``th``; their rows are named in
:mod:`yujing.kernels.layout`), from the turns, their features, the models' outputs and
the policy.

    lookups = policy_lookups(policy, items, feats, outputs)     # per position
    ti, tf, th = pack_turns(items, keep, slots, feats, outputs, lookups, policy)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yujing.kernels import layout as L
from yujing.service.featurize import ESCALATION_CATEGORIES

FORMAL_COMPLAINT_BIT = 1 << ESCALATION_CATEGORIES.index("formal_complaint")


@dataclass
class PolicyLookups:
    """The policy's values for each position of the batch."""

    intent_weight: np.ndarray    # float64: risk weight of the turn's intent, 0 without one
    intent_raise: np.ndarray     # int64: priority raise of the intent's category
    complaint: np.ndarray        # bool: the intent's category is a complaint
    esc_mask: np.ndarray         # int64: escalation-cue categories in the text
    esc_level: np.ndarray        # float64: level of the strongest cue
    esc_raise: np.ndarray        # int64
    esc_floor: np.ndarray        # int64
    channel: np.ndarray          # int64: proto enum
    tier: np.ndarray             # int64: proto enum
    tier_floor: np.ndarray       # int64: level floor of a negative complaint at this tier


def _intent_lookups(outputs, n: int):
    """(weight, raise, complaint) of each position's intent."""
    table = outputs.intent_table
    if table is None:
        return np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool)
    has_intent = outputs.intent_id >= 0
    safe = np.where(has_intent, outputs.intent_id, 0)
    return (np.where(has_intent, table.weight[safe], 0.0), np.where(has_intent, table.raise_[safe], 0),
            has_intent & table.complaint[safe])


def policy_lookups(policy, items, feats, outputs) -> PolicyLookups:
    """SLA inputs, intent weights and raises, cue levels, tier floors, by position."""
    n = len(items)
    weight, raise_, complaint = _intent_lookups(outputs, n)
    esc_mask = feats.escalation_mask.astype(np.int64)
    esc_level, esc_raise, esc_floor = policy.escalation_from_masks(esc_mask)
    channel = np.fromiter((it.turn.channel for it in items), np.int64, n)
    tier = np.fromiter((it.turn.customer_tier for it in items), np.int64, n)
    complaint_like = complaint | ((esc_mask & FORMAL_COMPLAINT_BIT) != 0)
    tier_floor = np.where(outputs.negative & complaint_like, policy.tier_complaint_floor[tier], 0)
    return PolicyLookups(weight, raise_, complaint, esc_mask, esc_level, esc_raise, esc_floor,
                         channel, tier, tier_floor)


def _turn_flags(kept, pos, outputs, lookups) -> np.ndarray:
    has_text = np.fromiter((bool(it.turn.text) for it in kept), bool, len(kept))
    return (np.where(has_text, L.TFLAG_HAS_TEXT, 0) | np.where(outputs.negative[pos], L.TFLAG_NEGATIVE, 0)
            | np.where(outputs.has_sentiment[pos], L.TFLAG_SENTIMENT, 0)
            | np.where(lookups.complaint[pos], L.TFLAG_COMPLAINT, 0)
            | (np.where(outputs.has_dissatisfaction[pos], L.TFLAG_DISSATISFACTION, 0)
               if outputs.has_dissatisfaction is not None else 0))


def pack_ti(kept, pos, customer, slots, feats, outputs, lookups, policy) -> np.ndarray:
    """int64 [TI_ROWS, m]: the integer inputs of the turns kept (positions ``pos``)."""
    m = len(kept)
    ti = np.zeros((L.TI_ROWS, m), np.int64)
    ti[L.T_SLOT] = slots.slots
    ti[L.T_NEW] = slots.new
    ti[L.T_AGENT] = slots.agent_slots
    ti[L.T_NEW_AGENT] = slots.agent_new
    ti[L.T_TS] = np.fromiter((it.ts_ms for it in kept), np.int64, m)
    ti[L.T_SPEAKER] = np.fromiter((it.turn.speaker for it in kept), np.int64, m)
    ti[L.T_EVENT] = np.fromiter((it.turn.event for it in kept), np.int64, m)
    ti[L.T_FLAGS] = _turn_flags(kept, pos, outputs, lookups)
    ti[L.T_INTENT] = outputs.intent_id[pos]
    ti[L.T_NEG_WORDS] = feats.negation_words[pos]
    ti[L.T_WORDS] = feats.words[pos]
    ti[L.T_TIER_RAISE] = policy.tier_raise[lookups.tier[pos]]
    # Only the customer's words raise the customer's risk: an agent quoting "file a formal
    # complaint" or writing "sorry, I cannot refund this" sets no cue, raise or floor.
    ti[L.T_ESC_MASK] = np.where(customer, lookups.esc_mask[pos], 0)
    ti[L.T_RAISE] = np.where(customer, np.maximum(lookups.intent_raise[pos], lookups.esc_raise[pos]), 0)
    ti[L.T_FLOOR] = np.where(customer, np.maximum(lookups.esc_floor[pos], lookups.tier_floor[pos]), 0)
    return ti


def turn_intensity(pos, customer, feats, outputs, policy) -> np.ndarray:
    """The per-turn intensity the ``intensity`` indicator averages: the text's own marks
    (!, ?, capitals, repeats) or the customer's emotion weighted by the policy (angry weighs
    more than anxious), whichever is higher."""
    marks = feats.intensity[pos]
    if outputs.emotion_probs is None or not len(pos):
        return marks
    weights = policy.emotion_weights(outputs.emotion_labels)        # [labels]
    emotional = np.where(customer, (outputs.emotion_probs[pos] * weights[None, :]).sum(axis=1), 0.0)
    return np.maximum(marks, np.clip(emotional, 0.0, 1.0))


def pack_tf(pos, customer, feats, outputs, lookups, policy) -> np.ndarray:
    """float64 [TFL_ROWS, m]: the real-valued inputs."""
    tf = np.zeros((L.TFL_ROWS, len(pos)))
    tf[L.TF_SENTIMENT] = outputs.sentiment[pos]
    tf[L.TF_INTENT_WEIGHT] = np.where(customer, lookups.intent_weight[pos], 0.0)
    tf[L.TF_INTENSITY] = turn_intensity(pos, customer, feats, outputs, policy)
    tf[L.TF_ESC_LEVEL] = np.where(customer, lookups.esc_level[pos], 0.0)
    tf[L.TF_SLA_MS] = policy.sla_ms[lookups.channel[pos], lookups.tier[pos]]
    if outputs.dissatisfaction is not None:   # the kernel reads it on customer turns only
        tf[L.TF_DISSATISFACTION] = np.clip(np.nan_to_num(outputs.dissatisfaction[pos]), 0.0, 1.0)
    return tf


def pack_turns(items, slots, feats, outputs, lookups, policy):
    """``(ti, tf, th)`` for the positions ``slots.keep`` of ``items`` (the turns that got a
    session slot), in that order."""
    pos = slots.positions
    kept = [items[p] for p in slots.keep]
    customer = np.fromiter((it.turn.speaker == L.SPEAKER_CUSTOMER for it in kept), bool, len(kept))
    ti = pack_ti(kept, pos, customer, slots, feats, outputs, lookups, policy)
    tf = pack_tf(pos, customer, feats, outputs, lookups, policy)
    th = np.ascontiguousarray(feats.simhash[pos])
    return ti, tf, th
