"""Who may call the service, over what, and how much (README "Security model").

    tls.py       TLS on the gRPC and metrics ports (mTLS with --tls-client-ca); the loopback rule
    tokens.py    the tokens file: per-tenant bearer tokens kept as SHA-256 hashes, re-read on change
    auth.py      the token of each call -> its principal; a tenant's token bound to its tenant
    quotas.py    per-tenant live sessions and turns per second (token bucket)
    client.py    a client's channel to a secured service (TLS, the token on every call)
"""


def guards(cfg, table, metrics):
    """The service's Authenticator and TenantQuotas for ``cfg`` (the tokens file is read
    here: a bad one stops the start with a ConfigError)."""
    from yujing.service.security.auth import Authenticator
    from yujing.service.security.quotas import Limits, TenantQuotas
    from yujing.service.security.tokens import TokenStore

    store = TokenStore(cfg.tokens) if cfg.tokens is not None else None
    auth = Authenticator(store, on_refusal=lambda code: metrics.auth_refusals.labels(code).inc())
    quotas = TenantQuotas(Limits(cfg.quota_max_sessions, cfg.quota_turns_per_s, cfg.quota_burst_turns),
                          (lambda: store.quotas) if store is not None else dict, table,
                          on_refusal=lambda quota, n: metrics.quota_refusals.labels(quota).inc(n))
    return auth, quotas
