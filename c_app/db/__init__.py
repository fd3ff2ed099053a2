"""Storage: SQLAlchemy models, the engine, and the queries (one module per table group)."""
