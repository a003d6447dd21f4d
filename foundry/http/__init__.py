"""The HTTP edge: FastAPI app, routes, error mapping."""
