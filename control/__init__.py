"""Control plane: HTTP API, auth, persistence, events and metrics endpoints."""
