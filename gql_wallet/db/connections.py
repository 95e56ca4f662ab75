"""Pooled connections: the one checkout every helper goes through, and the request's
connection checked out on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gql_wallet import metrics

if TYPE_CHECKING:
    from gql_wallet.db.database import Database
    from gql_wallet.db.sqlite import SqliteReader


async def checkout(engine: AsyncEngine) -> AsyncConnection:
    """A pooled connection; every helper takes its connection here, so the time spent
    queueing for one is counted in one place."""
    metrics.DB_WAITING.inc()
    try:
        return await engine.connect().start()
    finally:
        metrics.DB_WAITING.dec()


@asynccontextmanager
async def connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    conn = await checkout(engine)
    try:
        yield conn
    finally:
        await conn.close()


class OnDemandConnection:
    """A pooled connection for `repository.DriverRead` statements, checked out the first time a
    statement needs it, and given back when the `async with` block ends.

    On SQLite the point reads (API keys, sessions, a customer's wallets, a page) run on the event
    loop's thread (`reader`, the database's `SqliteReader`), and on PostgreSQL the keyed reads
    and the writes go in group reads and group commits on the senders' own connections
    (`Database.run_grouped`), so most reads need no pooled connection at all; checking one out
    and in anyway was about 4% of a SQLite lookup's CPU (bench/PROFILE.md). Whatever does need
    one (the reader's fallback, a PostgreSQL page) takes it here, once. Like any connection, it
    serves one statement at a time.
    """

    def __init__(self, database: Database) -> None:
        self.engine = database.engine
        self.dialect = database.dialect
        self.reader: SqliteReader | None = database.sqlite_reader
        self._conn: AsyncConnection | None = None

    async def get(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await checkout(self.engine)
        return self._conn

    async def __aenter__(self) -> OnDemandConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


# A connection for `repository.DriverRead` statements: from `Database.driver_connection`, or on
# demand.
DriverConnection = AsyncConnection | OnDemandConnection


async def checked_out(conn: DriverConnection) -> AsyncConnection:
    """The pooled connection itself (checked out now if `conn` is on demand)."""
    return await conn.get() if isinstance(conn, OnDemandConnection) else conn
