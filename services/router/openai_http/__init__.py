"""The OpenAI-compatible HTTP front door (`/v1/*`), served by the router beside its gRPC API."""
