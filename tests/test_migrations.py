"""Alembic migrations: they match the models and run safely from several processes at once."""

from __future__ import annotations

import os
import subprocess

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gql_wallet.db import create_database
from gql_wallet.migrate import alembic_config, current_revision, head_revision
from gql_wallet.models import metadata
from gql_wallet.settings import Settings
from tests.conftest import CLI, Env, cli


async def test_models_and_migrations_do_not_drift(env: Env) -> None:
    async with env.database.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata
            )
        )
    assert diff == [], f"models and migrations differ; add a revision: {diff}"


async def test_schema_is_at_head(env: Env) -> None:
    async with env.database.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()


def test_migrate_reports_the_head_revision(database_url: str) -> None:
    result = cli(database_url, "migrate")
    assert f"database schema is at revision {head_revision()}" in result.stdout


async def test_downgrade_and_concurrent_upgrades_from_empty(database_url: str) -> None:
    database = create_database(Settings(database_url=database_url))
    try:
        async with database.write_transaction() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "base"))
        async with database.engine.connect() as conn:
            assert await conn.run_sync(current_revision) is None
    finally:
        await database.dispose()

    # Three processes migrating one empty database at once: one migrates, the others wait.
    env = {"GQL_WALLET_DATABASE_URL": database_url}

    processes = [
        subprocess.Popen(
            [CLI, "migrate"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert "0 problems" in cli(database_url, "verify").stdout
