"""Embedded storage for the service.

:mod:`yujing.service.storage.segment_log`: :class:`SegmentLog`, a checksummed, segmented,
append-only record log (one writer, group commit, three durability modes, recovery of a
torn tail at open, retention by time and bytes). It backs the durable alert log and,
later, the turn log used for crash recovery.
"""
from yujing.service.storage.segment_log import (
    LogCorrupt,
    LogError,
    LogLocked,
    Record,
    SegmentLog,
    UnsupportedFormat,
)

__all__ = ["LogCorrupt", "LogError", "LogLocked", "Record", "SegmentLog", "UnsupportedFormat"]
