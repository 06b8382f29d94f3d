"""yujing service: the gRPC server, micro-batcher, model clients, session table, policy."""
