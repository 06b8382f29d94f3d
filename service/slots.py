"""Session and agent slots for one batch (:class:`yujing.service.session_table.SessionTable`):
a turn refused here (table full) leaves the batch before any state moves."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchSlots:
    keep: list                       # positions in the batch that got a session slot
    errors: dict                     # refused position -> TableFull
    slots: np.ndarray = None         # int64 [len(keep)]: session slot
    new: np.ndarray = None           # int64: 1 where the slot was just allocated
    agent_slots: np.ndarray = None   # int64: agent slot, -1 for none
    agent_new: np.ndarray = None
    positions: np.ndarray = None     # int64 [len(keep)]: ``keep`` as an array


def resolve_slots(table, items) -> BatchSlots:
    """Slots for ``items`` (session keys, then the agents of the turns kept), at the latest
    server clock of the batch."""
    now = max(it.now_ms for it in items)
    slots, new, errors = table.resolve([it.key for it in items], now)
    keep = [p for p in range(len(items)) if p not in errors]
    out = BatchSlots(keep=keep, errors=errors)
    if not keep:
        return out
    agent_keys = [(items[p].key[0], items[p].turn.agent_id) if items[p].turn.agent_id else None for p in keep]
    out.agent_slots, out.agent_new = table.resolve_agents(agent_keys, now)
    out.slots, out.new = slots[keep], new[keep]
    out.positions = np.asarray(keep, np.int64)
    return out
