"""The Alembic migrations and the SQLAlchemy models describe one schema, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from timeline.db import MIGRATIONS, Database
from timeline.models import Base


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _head() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


async def test_the_migrated_schema_is_exactly_what_the_models_describe(
    database: Database,
) -> None:
    await database.upgrade()

    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == [], "models and migrations drifted; add an Alembic revision"


async def test_upgrade_brings_the_database_to_the_head_revision_with_every_model_table(
    database: Database,
) -> None:
    await database.upgrade()

    async with database.engine.connect() as connection:
        revision = await connection.run_sync(_current_revision)
        tables = await connection.run_sync(_tables)

    assert revision == _head()
    assert tables == {*Base.metadata.tables, "alembic_version"}


async def test_upgrading_twice_is_harmless(database: Database) -> None:
    await database.upgrade()
    await database.upgrade()

    async with database.engine.connect() as connection:
        revision = await connection.run_sync(_current_revision)
        differences = await connection.run_sync(_differences)

    assert revision == _head()
    assert differences == []


async def test_a_second_database_object_on_a_migrated_database_upgrades_as_a_no_op(
    database: Database, database_url: str
) -> None:
    await database.upgrade()
    again = Database(database_url)
    try:
        await again.upgrade()
        async with again.engine.connect() as connection:
            revision = await connection.run_sync(_current_revision)
    finally:
        await again.dispose()

    assert revision == _head()
