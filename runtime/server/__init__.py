"""The gRPC daemon: config -> models -> EdgeRuntime, health and reflection on grpc.aio."""
