"""Authentication and tenant binding of every call.

    auth = Authenticator(TokenStore(path))   # or Authenticator(None): no tokens (loopback only)
    p = auth.principal(metadata)             # Unauthenticated without a known token
    auth.bind(p, request)                    # request.tenant_id: filled in, or PermissionDenied

:class:`AuthInterceptor` refuses a call without a known token (UNAUTHENTICATED) before any
handler runs, except health checking and reflection, which stay open. The handlers then
bind each request's ``tenant_id`` to the caller's principal: a tenant's token acts for its
own tenant (an empty ``tenant_id`` becomes it; another one is PERMISSION_DENIED); an admin
token (and anyone, when the service runs without tokens) acts for the tenant it names.
"""
from __future__ import annotations

import grpc

from yujing.service.errors import PermissionDenied, Unauthenticated
from yujing.service.security.tokens import OPEN, Principal, TokenStore

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")   # prefixes of the methods anyone may call
_SHOWN = 64                  # characters of a refused tenant id echoed in a message


def bearer_token(metadata) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry of ``metadata``, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class Authenticator:
    def __init__(self, store: TokenStore | None, on_refusal=None):
        self.store = store
        self.on_refusal = on_refusal or (lambda code: None)     # metrics: code name

    @property
    def required(self) -> bool:
        return self.store is not None

    def principal(self, metadata) -> Principal:
        if self.store is None:
            return OPEN
        token = bearer_token(metadata)
        if token is None:
            self.on_refusal("UNAUTHENTICATED")
            raise Unauthenticated("this service needs a token: send the metadata `authorization: Bearer <token>` "
                                  "(`yujing tokens add` mints one)")
        p = self.store.lookup(token)
        if p is None:
            self.on_refusal("UNAUTHENTICATED")
            raise Unauthenticated("unknown or revoked token")
        return p

    def bind(self, p: Principal, request) -> None:
        """Check (and fill in) ``request.tenant_id`` for ``p``; the request is not changed
        when it is refused (a turn inside a batch: the handler names it with
        :meth:`PermissionDenied.within`)."""
        if p.admin:
            return
        asked = request.tenant_id
        if not asked:
            request.tenant_id = p.tenant
        elif asked != p.tenant:
            self.on_refusal("PERMISSION_DENIED")
            shown = asked if len(asked) <= _SHOWN else asked[:_SHOWN] + "..."
            raise PermissionDenied(f"tenant_id {shown!r}: this token acts for tenant {p.tenant!r} only", "tenant_id")


def _refusal_handler(handler, err: Unauthenticated):
    """A handler of ``handler``'s kind that ends the call with ``err`` and reads nothing."""
    def refuse(context):
        context.set_code(err.code)
        context.set_details(err.message)

    if handler.response_streaming:
        async def respond(request_or_iterator, context):
            refuse(context)
            return
            yield  # an async generator that yields nothing
    else:
        async def respond(request_or_iterator, context):
            refuse(context)
            return None
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, handler.response_streaming)](
        respond, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses UNAUTHENTICATED every call but health and reflection without a known token."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not self.auth.required or handler_call_details.method.startswith(OPEN_METHODS):
            return handler
        try:
            self.auth.principal(handler_call_details.invocation_metadata)
        except Unauthenticated as err:
            return _refusal_handler(handler, err)
        return handler
