"""TLS on the service's ports, and the loopback rule.

    port = listen(server, config)            # TLS when --tls-cert/--tls-key, mTLS with --tls-client-ca
    kwargs = metrics_tls(config)             # for prometheus_client's start_http_server (--metrics-tls)
    is_loopback("127.0.0.1")                 # True: the only host that may run without tokens

Certificates are read once at start; rotate them with a restart. With ``--tls-client-ca``
a client must present a certificate signed by that CA (mTLS), on the gRPC port and, with
``--metrics-tls``, on the metrics port too.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from yujing.service.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (what --host binds) reaches this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False          # a name: it may resolve to anything


def _read(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}", what.replace("-", "_")) from None


def server_credentials(cert, key, client_ca=None) -> grpc.ServerCredentials:
    pair = (_read(key, "tls-key"), _read(cert, "tls-cert"))
    ca = _read(client_ca, "tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def listen(server, cfg) -> int:
    """Add the gRPC port of ``cfg`` to ``server`` (TLS when it has a certificate); the port."""
    address = f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert:
        port = server.add_secure_port(address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def metrics_tls(cfg) -> dict:
    """start_http_server's TLS arguments for the metrics port ({} : plain HTTP)."""
    if not cfg.metrics_tls:
        return {}
    out = {"certfile": str(cfg.tls_cert), "keyfile": str(cfg.tls_key)}
    if cfg.tls_client_ca:
        out.update(client_cafile=str(cfg.tls_client_ca), client_auth_required=True)
    return out


def describe(cfg, tokens: int | None) -> str:
    """The security part of the ready line, e.g. ``tls on (mTLS), tokens 3 from /etc/yujing/tokens.json``."""
    tls = ("tls on (mTLS)" if cfg.tls_client_ca else "tls on") if cfg.tls_cert else "tls off"
    if tokens is not None:
        auth = f"tokens {tokens} from {cfg.tokens}"
    elif cfg.insecure_no_auth and not is_loopback(cfg.host):
        auth = "NO AUTHENTICATION (--insecure-no-auth): anyone who reaches the port acts for any tenant"
    else:
        auth = "no tokens (loopback only; give --tokens FILE to require them)"
    return f"{tls}, {auth}"


def check(cfg) -> None:
    """The start-up rules (Config.validate): pairs of files, and no open port off loopback."""
    def need(ok: bool, name: str, msg: str):
        if not ok:
            raise ConfigError(f"config {name}: {msg}", name)

    need(bool(cfg.tls_cert) == bool(cfg.tls_key), "tls_cert", "--tls-cert and --tls-key go together")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "tokens"):
        path = getattr(cfg, name)
        need(path is None or Path(path).is_file(), name, f"{path} is not a file")
    need(not cfg.tls_client_ca or bool(cfg.tls_cert), "tls_client_ca",
         "--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    need(not cfg.metrics_tls or bool(cfg.tls_cert), "metrics_tls", "--metrics-tls needs --tls-cert and --tls-key")
    need(is_loopback(cfg.host) or cfg.tokens is not None or cfg.insecure_no_auth, "host",
         f"{cfg.host} is not a loopback address and no --tokens FILE is given: anyone who reaches the port "
         "could read and end every tenant's sessions. Give --tokens FILE (`yujing tokens add --file FILE "
         "--tenant T` mints one), or --insecure-no-auth to serve without authentication anyway, "
         "or bind --host 127.0.0.1")
