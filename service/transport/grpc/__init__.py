"""The gRPC door: server, servicer (proto ⇄ domain), interceptors, auth, TLS, and
the one table from domain errors to status codes. Nothing outside
`service.transport.grpc` imports grpc."""
