"""A client's channel to the service: TLS when given a CA, the token on every call.

    ch = open_channel("10.0.0.5:50051", token=os.environ["YUJING_TOKEN"], tls_ca="ca.pem")
    ch = open_channel(target, token=..., aio=True)          # grpc.aio, for the load generator

The token travels as ``authorization: Bearer <token>`` metadata added by a client
interceptor (so it works on a plaintext loopback channel too, where gRPC refuses call
credentials). For mTLS give ``tls_cert`` and ``tls_key`` (the client's own pair).
"""
from __future__ import annotations

import os
from pathlib import Path

import grpc

TOKEN_ENV = "YUJING_TOKEN"


def token_from(arg: str | None) -> str | None:
    """The ``--token`` value, else $YUJING_TOKEN, else None."""
    return arg or os.environ.get(TOKEN_ENV) or None


def _with_token(details, token: str):
    """``details`` (grpc's call details, a namedtuple) with the token's metadata added."""
    md = list(details.metadata or ())
    md.append(("authorization", f"Bearer {token}"))
    return details._replace(metadata=md)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self.token = token

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_token(details, self.token), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(_with_token(details, self.token), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def _aio_interceptors(token: str) -> list:
    from grpc import aio

    def add(details):
        md = aio.Metadata(*(details.metadata or ()))
        md.add("authorization", f"Bearer {token}")
        return aio.ClientCallDetails(details.method, details.timeout, md, details.credentials,
                                     details.wait_for_ready)

    class UU(aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            return await continuation(add(details), request)

    class US(aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, details, request):
            return await continuation(add(details), request)

    class SU(aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, details, request_iterator):
            return await continuation(add(details), request_iterator)

    class SS(aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, details, request_iterator):
            return await continuation(add(details), request_iterator)

    return [UU(), US(), SU(), SS()]


def channel_credentials(tls_ca=None, tls_cert=None, tls_key=None) -> grpc.ChannelCredentials | None:
    if not tls_ca and not tls_cert:
        return None
    read = lambda p: Path(p).read_bytes() if p else None   # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(tls_ca), private_key=read(tls_key),
                                        certificate_chain=read(tls_cert))


def open_channel(target: str, *, token: str | None = None, tls_ca=None, tls_cert=None, tls_key=None,
                 server_name: str | None = None, options=(), aio: bool = False):
    """A channel to ``target``: TLS when ``tls_ca`` (or a client pair) is given, with
    ``token`` on every call when given; ``server_name`` overrides the name checked
    against the server's certificate."""
    creds = channel_credentials(tls_ca, tls_cert, tls_key)
    opts = list(options) + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
    if aio:
        from grpc import aio as grpc_aio

        icpt = _aio_interceptors(token) if token else None
        if creds is None:
            return grpc_aio.insecure_channel(target, options=opts, interceptors=icpt)
        return grpc_aio.secure_channel(target, creds, options=opts, interceptors=icpt)
    ch = grpc.insecure_channel(target, options=opts) if creds is None else grpc.secure_channel(target, creds, opts)
    return grpc.intercept_channel(ch, _TokenInterceptor(token)) if token else ch


def add_client_arguments(p) -> None:
    """--token, --tls-ca, --tls-cert, --tls-key, --tls-server-name for a client command."""
    p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of the service: connect over TLS")
    p.add_argument("--tls-cert", default=None, help="this client's certificate (PEM), for a service with mTLS")
    p.add_argument("--tls-key", default=None, help="this client's private key (PEM), with --tls-cert")
    p.add_argument("--tls-server-name", default=None, help="name to check the service's certificate against "
                                                           "(default: the target's host)")


def channel_from_args(args, target: str | None = None, options=(), aio: bool = False):
    return open_channel(target or args.target, token=token_from(args.token), tls_ca=args.tls_ca,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, server_name=args.tls_server_name,
                        options=options, aio=aio)
