"""Per-actor SQLite databases: engines and alembic migrations."""
