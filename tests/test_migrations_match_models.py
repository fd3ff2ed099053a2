"""The Alembic revisions build exactly the schema the models describe (tables, columns, indexes)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from c_app.db.models import Base


async def test_the_migrated_schema_matches_the_models(app) -> None:
    def differences(connection):  # type: ignore[no-untyped-def]
        # procrastinate's own tables (PostgreSQL, revision 0013) are its schema, not our models.
        def ours(name, type_, parent_names):  # type: ignore[no-untyped-def]
            return not (name or "").startswith("procrastinate_")

        context = MigrationContext.configure(connection, opts={"compare_type": False, "include_name": ours})
        return compare_metadata(context, Base.metadata)

    async with app.state.services.db.engine.connect() as connection:
        diff = await connection.run_sync(differences)
    assert diff == []
