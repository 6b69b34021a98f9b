"""The REST API: FastAPI routes under /api/v1 on the factory's shared operations."""
