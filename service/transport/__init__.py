"""The doors onto the request pipeline: gRPC and the OpenAI-compatible HTTP API."""
