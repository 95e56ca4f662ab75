"""The one Database object: the engine and everything that runs its statements.

The app's lifespan builds one (`create_database`) and holds it; the CLI builds its own. It owns
the engine of its pool and, per dialect, the lines its statements wait in: on SQLite the writer
thread (group commit of `run_write`) and the reader on the event loop's thread, on PostgreSQL
the group commit and group reads of `run_grouped`. Repository functions take a connection from
it; a write's transaction begins and ends in the service that calls `write_transaction` or
`run_write`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.db.connections import DriverConnection, OnDemandConnection, connect
from gql_wallet.db.engines import (
    GROUP_CONNECTIONS,
    SINGLE,
    WRITE,
    async_url,
    count_connections,
    create_engine,
    postgresql_engine,
)
from gql_wallet.db.groups import PgGroupCommit
from gql_wallet.db.sqlite import SqliteReader, SqliteWriterQueue
from gql_wallet.settings import Settings

_T = TypeVar("_T")


class Database:
    """The engine of one database and its lines: reads, writes, and submission to the writer."""

    def __init__(self, settings: Settings) -> None:
        url = async_url(settings.database_url)
        self.engine = create_engine(url, settings)
        self.dialect = self.engine.dialect
        self.transaction_pooler = settings.db_transaction_pooler
        self.sqlite_writer: SqliteWriterQueue | None = None
        self.sqlite_reader: SqliteReader | None = None
        self.pg_groups: PgGroupCommit | None = None
        if self.dialect.name == "postgresql":
            senders = postgresql_engine(url, settings, GROUP_CONNECTIONS)
            count_connections(senders.sync_engine)
            self.pg_groups = PgGroupCommit(senders)
        else:
            writer = self.sqlite_writer = SqliteWriterQueue(url, settings)
            if not writer.in_memory and url.database:
                self.sqlite_reader = SqliteReader(url.database)

    @asynccontextmanager
    async def read_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot; never holds a write lock. For blocks that read more than once.
        On PostgreSQL REPEATABLE READ, so that every statement sees the same snapshot (READ
        COMMITTED gives each its own); a read-only one never fails to serialize."""
        async with connect(self.engine) as conn:
            if self.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a block that runs exactly one SELECT.

        The rule: one statement -> `read_connection`; several reads that must agree with each
        other -> `read_transaction`; any write -> `write_transaction`.

        No BEGIN/COMMIT on either database: a single statement sees one snapshot anyway, in its
        own implicit transaction. On PostgreSQL the connection is in autocommit mode (one round
        trip instead of three; the isolation level is reset when the connection goes back to the
        pool). On SQLite the driver is in autocommit mode already and the begin hook issues no
        BEGIN for this connection: each statement through aiosqlite is a hop to its thread, so
        this saves two hops per read.
        """
        if self.dialect.name == "sqlite":
            async with connect(self.engine) as conn:
                await conn.execution_options(**{SINGLE: True})
                yield conn
            return
        async with self.single_statement() as conn:
            yield conn

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL only: a connection in autocommit mode, for exactly one statement that is
        its own transaction (one round trip, no BEGIN/COMMIT). Nothing else may run on it. (The
        balance change goes the same way, in `run_grouped`'s statements.)
        """
        assert self.dialect.name == "postgresql", "SQLite needs an explicit transaction"
        async with connect(self.engine) as conn:
            if self.transaction_pooler:
                # SQLAlchemy parses and executes a statement in two message sequences; outside
                # a transaction a pooler may run them on two server connections.
                async with conn.begin():
                    yield conn
                return
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection for `repository.DriverRead` statements, which go to the driver's
        own connection: SQLAlchemy opens no transaction on it, so each statement is its own
        implicit transaction on both databases, without the options `read_connection` sets."""
        async with connect(self.engine) as conn:
            yield conn

    @asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        writer = self.sqlite_writer
        if writer is None:
            async with connect(self.engine) as conn, conn.begin():
                yield conn
            return
        async with writer.turn(), connect(self.engine) as conn:
            await conn.execution_options(**{WRITE: True})
            async with conn.begin():
                yield conn

    async def run_write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(connection, *args)` in one write transaction: committed when it returns, rolled
        back if it raises. For writes that are a fixed sequence of statements (a top-up's steps).

        SQLite: in the writer thread (`SqliteWriterQueue.run`), the whole transaction in one
        hop. PostgreSQL: in `write_transaction`, through `run_sync`. An in-memory SQLite
        database is a different database on every connection, so there the write stays on the
        engine's own pool.
        """
        writer = self.sqlite_writer
        if writer is not None and not writer.in_memory:
            return await writer.run(fn, *args)
        async with self.write_transaction() as conn:
            return await conn.run_sync(fn, *args)

    async def run_grouped(
        self,
        send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
        send_one: Callable[[DriverConnection, Any], Awaitable[_T]],
        item: Any,
        *,
        observe: Callable[[int], None] | None = None,
        senders: int = 2,
    ) -> _T:
        """A single statement, sent together with the others of its kind waiting in this
        process on PostgreSQL (see `PgGroupCommit`): a write in a group commit, or a read of one
        row by key in a group read. One line per `send_group`.

        `send_group(conn, items)` sends several as one statement and returns their outcomes in
        order; `send_one(conn, item)` sends one. Both run on a `driver_connection`-like
        connection (no SQLAlchemy transaction: the statement is its own transaction).
        `observe(size)` is told the size of each group sent; `senders` bounds the groups of this
        line in flight at once. Without a group line (SQLite) each is sent alone, on a connection
        checked out on demand (none for a point read on SQLite's loop-thread reader).
        """
        groups = self.pg_groups
        if groups is not None:
            return await groups.run(send_group, send_one, item, observe, senders)
        async with OnDemandConnection(self) as conn:
            return await send_one(conn, item)

    def sync_engines(self) -> list[Engine]:
        """Every engine whose connections run this database's statements: its own, and on
        SQLite the writer thread's (for event listeners that must see every statement)."""
        writer = self.sqlite_writer
        return [self.engine.sync_engine, *([writer.engine] if writer is not None else [])]

    async def dispose(self) -> None:
        """Close every connection, the SQLite writer thread's and the senders' included."""
        if self.sqlite_writer is not None:
            await asyncio.to_thread(self.sqlite_writer.close)
        if self.sqlite_reader is not None:
            self.sqlite_reader.close()
        if self.pg_groups is not None:
            await self.pg_groups.close()
        await self.engine.dispose()


def create_database(settings: Settings) -> Database:
    return Database(settings)
