"""Every error the service raises on purpose, and its gRPC status.

    YujingError
    ├── InvalidTurn        INVALID_ARGUMENT    a field is missing, too long, or unknown
    ├── TableFull          RESOURCE_EXHAUSTED  no free slot and nothing idle to evict
    ├── Overloaded         RESOURCE_EXHAUSTED  too many turns accepted and not yet answered
    ├── SessionNotFound    NOT_FOUND           GetSession / EndSession on an unknown session
    ├── ShuttingDown       UNAVAILABLE         the server is draining
    └── ConfigError        (start-up only)     a bad configuration or policy file

A refused turn changes no state: every check that can refuse runs before the turn
touches the session table.
"""
from __future__ import annotations

import grpc


class YujingError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidTurn(YujingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TableFull(YujingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(YujingError):
    """Admission control: the turns waiting to be scored would exceed the limit."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class SessionNotFound(YujingError):
    code = grpc.StatusCode.NOT_FOUND


class ShuttingDown(YujingError):
    code = grpc.StatusCode.UNAVAILABLE


class ConfigError(YujingError, ValueError):
    """A configuration or policy value that cannot be used; the message names the key."""
