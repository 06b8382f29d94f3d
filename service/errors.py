"""Every error the service raises on purpose, and its gRPC status.

    YujingError
    ├── InvalidTurn        INVALID_ARGUMENT    a field is missing, too long, or unknown
    ├── TableFull          RESOURCE_EXHAUSTED  no free slot and nothing idle to evict
    ├── Overloaded         RESOURCE_EXHAUSTED  too many turns accepted and not yet answered
    ├── SessionNotFound    NOT_FOUND           GetSession / EndSession on an unknown session
    ├── ShuttingDown       UNAVAILABLE         the server is draining (or stopped before scoring it)
    ├── StateUnavailable   UNAVAILABLE         the turn (or alert) log cannot be written: nothing applied
    ├── Unauthenticated    UNAUTHENTICATED     no token, or one the tokens file does not hold
    ├── PermissionDenied   PERMISSION_DENIED   a tenant's token used for another tenant
    ├── QuotaExceeded      RESOURCE_EXHAUSTED  a tenant's live sessions or turns/s quota
    └── ConfigError        (start-up only)     a bad configuration or policy file

A refused turn changes no state: every check that can refuse runs before the turn
touches the session table.
"""
from __future__ import annotations

import copy

import grpc


class YujingError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field

    def within(self, prefix: str) -> "YujingError":
        """The same refusal for a part of a request (``prefix`` like ``"turns[3]."``): its
        message and field named inside the request. Built only for a refused part, so a
        valid turn of a batch costs no name."""
        err = copy.copy(self)
        err.message, err.field = prefix + self.message, prefix + self.field
        err.args = (err.message,)
        return err


class InvalidTurn(YujingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TableFull(YujingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(YujingError):
    """Admission control: the turns waiting to be scored would exceed the limit."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlinePassed(YujingError):
    """The caller's deadline passed while its turns were queued: they were not scored."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class SessionNotFound(YujingError):
    code = grpc.StatusCode.NOT_FOUND


class ShuttingDown(YujingError):
    code = grpc.StatusCode.UNAVAILABLE


class StateUnavailable(YujingError):
    """The service cannot make a change durable (its turn log, or for an acknowledgement its
    alert log, is not writable): the call is refused and nothing is applied."""
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(YujingError):
    """No ``authorization: Bearer ...`` metadata, or a token the tokens file does not hold."""
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(YujingError):
    """A tenant's token used for another tenant's data."""
    code = grpc.StatusCode.PERMISSION_DENIED


class QuotaExceeded(YujingError):
    """A tenant over one of its quotas (``service/security/quotas.py``): the refusal carries
    a ``google.rpc.QuotaFailure`` and a ``RetryInfo`` (``retry_after_s``) in its status."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, tenant: str, quota: str, retry_after_s: float):
        super().__init__(message)
        self.tenant = tenant
        self.quota = quota
        self.retry_after_s = retry_after_s

    def status_details(self) -> bytes:
        """The ``grpc-status-details-bin`` trailer: a ``google.rpc.Status`` with this code and
        message and two details, ``QuotaFailure`` (subject ``tenant:<id>``, the quota) and
        ``RetryInfo`` (when to try again); ``grpc_status.rpc_status.from_call`` decodes it."""
        from google.protobuf import any_pb2
        from google.rpc import error_details_pb2, status_pb2

        failure = error_details_pb2.QuotaFailure()
        failure.violations.add(subject=f"tenant:{self.tenant}", description=f"{self.quota}: {self.message}")
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(1_000_000, int(self.retry_after_s * 1e9)))
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in (failure, retry):
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return status.SerializeToString()


class ConfigError(YujingError, ValueError):
    """A configuration or policy value that cannot be used; the message names the key."""


class UndecodableRequest(YujingError):
    """A request whose bytes are not the message the method takes (malformed wire format,
    a string field that is not UTF-8, ...). Refused with INVALID_ARGUMENT before any
    handler sees it; on a stream it ends the stream after the answers to the messages
    before it. Built by :func:`undecodable` from the bytes and the deserializer."""
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, type_name: str = "", reason: str = ""):
        super().__init__(message)
        self.type_name = type_name
        self.reason = reason


def undecodable(data: bytes, deserializer) -> UndecodableRequest:
    """The refusal of ``data``, which ``deserializer`` (a generated ``Message.FromString``)
    could not parse: names the message type and, where the bytes show it, what is wrong."""
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "") or "message"
    try:
        reason = wire_problem(bytes(data), descriptor) or "malformed protobuf"
    except Exception:  # the diagnosis is best effort; the refusal is not
        reason = "malformed protobuf"
    return UndecodableRequest(f"request is not a valid {type_name}: {reason}", type_name, reason)


_MAX_FIELD = (1 << 29) - 1
_WIRE_OF = {}   # FieldDescriptor.type -> the wire type a non-packed value of it has (filled lazily)


def _varint(data: bytes, i: int):
    """(value, next index), or (None, i) when the varint is truncated or over 10 bytes."""
    value = shift = 0
    for k in range(i, min(i + 10, len(data))):
        b = data[k]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, k + 1
        shift += 7
    return None, i


def _wire_type(fd) -> int:
    if not _WIRE_OF:
        from google.protobuf.descriptor import FieldDescriptor as F
        for t in (F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64):
            _WIRE_OF[t] = 1
        for t in (F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32):
            _WIRE_OF[t] = 5
        for t in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE):
            _WIRE_OF[t] = 2
        _WIRE_OF[F.TYPE_GROUP] = 3
    return _WIRE_OF.get(fd.type, 0)


def wire_problem(data: bytes, descriptor=None, path: str = "", depth: int = 0) -> str | None:
    """The first thing wrong with ``data`` as a protobuf message of ``descriptor`` (None:
    only the wire format is checked), e.g. ``"field 7 (text) is not valid UTF-8"``; None
    when nothing is found.

        >>> wire_problem(b"\\xff\\xff\\xff")
        'truncated field key at byte 0'
        >>> wire_problem(b"\\x0f")
        'invalid wire type 7 for field 1 at byte 0'
    """
    if depth > 64:
        return f"{path or 'message'} nests more than 64 levels deep"
    fields = getattr(descriptor, "fields_by_number", {}) if descriptor is not None else {}
    seen: dict[int, int] = {}
    groups: list[int] = []
    i, n = 0, len(data)
    while i < n:
        start = i
        key, i = _varint(data, i)
        if key is None:
            return f"truncated field key at byte {start}"
        number, wt = key >> 3, key & 7
        if number == 0:
            return f"field number 0 at byte {start}"
        if number > _MAX_FIELD:
            return f"field number {number} is above the maximum {_MAX_FIELD} (byte {start})"
        fd = fields.get(number) if not groups else None
        label = f"{path}{fd.name} (field {number})" if fd is not None else f"{path}field {number}"
        if wt == 0:
            value, i = _varint(data, i)
            if value is None:
                return f"truncated varint in {label} at byte {start}"
        elif wt in (1, 5):
            i += 8 if wt == 1 else 4
            if i > n:
                return f"truncated {'fixed64' if wt == 1 else 'fixed32'} in {label} at byte {start}"
        elif wt == 2:
            length, j = _varint(data, i)
            if length is None:
                return f"truncated length of {label} at byte {start}"
            if j + length > n:
                return f"{label} claims {length} bytes, only {n - j} remain (byte {start})"
            payload, i = data[j:j + length], j + length
            if fd is not None and _wire_type(fd) == 2:
                from google.protobuf.descriptor import FieldDescriptor as F
                if fd.type == F.TYPE_STRING:
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        return f"{label} is not valid UTF-8 (byte {exc.start} of the string)"
                elif fd.type == F.TYPE_MESSAGE:
                    k = seen.get(number, 0)
                    seen[number] = k + 1
                    repeated = getattr(fd, "is_repeated", None)
                    repeated = repeated() if callable(repeated) else (
                        repeated if repeated is not None else fd.label == F.LABEL_REPEATED)
                    sub = f"{path}{fd.name}[{k}]." if repeated else f"{path}{fd.name}."
                    problem = wire_problem(payload, fd.message_type, sub, depth + 1)
                    if problem:
                        return problem
        elif wt == 3:
            groups.append(number)
            if len(groups) > 64:
                return f"groups nest more than 64 levels deep (byte {start})"
        elif wt == 4:
            if not groups or groups[-1] != number:
                return f"end of group {number} without its start (byte {start})"
            groups.pop()
        else:
            return f"invalid wire type {wt} for {label} at byte {start}"
    if groups:
        return f"group {groups[-1]} is not closed"
    return None


def fail(context, err: YujingError, empty=None):
    """End a gRPC call with ``err``'s status and message; returns ``empty`` (the handler's
    answer). Not ``context.abort()``: an aborted call counts as finished to gRPC core before
    its coroutine is, and a graceful stop would then cancel the calls still in flight
    (grpc/grpc#37239)."""
    context.set_code(err.code)
    context.set_details(err.message)
    details = getattr(err, "status_details", None)   # rich status (QuotaExceeded): google.rpc.Status bytes
    if details is not None:
        context.set_trailing_metadata((("grpc-status-details-bin", details()),))
    return empty
