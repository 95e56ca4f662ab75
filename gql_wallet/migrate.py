"""Creating the database schema on start."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from gql_wallet.db import write_transaction
from gql_wallet.models import metadata


async def ensure_schema(engine: AsyncEngine) -> None:
    """Create missing tables (and the ledger's append-only triggers) in one transaction.

    The write transaction serialises processes that start together on one database file.
    """
    async with write_transaction(engine) as conn:
        await conn.run_sync(metadata.create_all)
