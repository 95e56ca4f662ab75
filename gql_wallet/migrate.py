"""Database migrations (Alembic, in the top-level migrations/ folder, shipped in the package as
gql_wallet._migrations).

`gql-wallet serve` migrates on start unless GQL_WALLET_MIGRATE_ON_START=false; `gql-wallet
migrate` does it as a separate deploy step. For developers changing the models:
`python -m gql_wallet.migrate revision "what changed"` autogenerates a new revision against a
scratch SQLite database at head.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from gql_wallet.db import Database, create_database
from gql_wallet.settings import Settings

# Any fixed 64-bit number: the PostgreSQL advisory lock that serialises migrators.
_MIGRATION_LOCK = 7_344_512_001

# What Alembic logs (at INFO) each time it looks at a database, even when there is nothing to do:
# every command and every readiness check. Its "Running upgrade A -> B" lines stay.
_ALEMBIC_CHATTER = frozenset({"Context impl %s.", "Will assume %s DDL."})


def _not_chatter(record: logging.LogRecord) -> bool:
    return record.msg not in _ALEMBIC_CHATTER


logging.getLogger("alembic.runtime.migration").addFilter(_not_chatter)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("gql_wallet._migrations")))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_to_head(database: Database) -> None:
    """Bring the schema to the newest revision; a no-op when it is there already."""
    async with database.write_transaction() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))


def _revision(message: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(database_url=f"sqlite:///{Path(scratch) / 'scratch.db'}")

        async def run() -> None:
            database = create_database(settings)
            try:
                await upgrade_to_head(database)
                async with database.write_transaction() as conn:
                    await conn.run_sync(
                        lambda sync: command.revision(
                            alembic_config(sync), message=message, autogenerate=True
                        )
                    )
            finally:
                await database.dispose()

        asyncio.run(run())


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m gql_wallet.migrate revision "what changed"')
    _revision(sys.argv[2])
