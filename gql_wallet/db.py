"""Database engines per dialect and the transaction helpers every repository call runs in.

SQLite: WAL, synchronous=FULL and a busy timeout. pysqlite's own transaction handling starts no
transaction on SELECT, so a read-then-write could lose updates; the driver runs in autocommit mode
and we issue the BEGIN ourselves: BEGIN IMMEDIATE for writes (the write lock is taken up front, so
writers queue instead of failing on upgrade), a deferred BEGIN for reads (a consistent snapshot).

PostgreSQL: READ COMMITTED, on purpose. Every balance change is one conditional
`UPDATE ... WHERE <condition> RETURNING`: it waits for the wallet's row lock and then re-checks the
condition against the newest committed row, so concurrent writers of one wallet serialise on that
lock and none can lose an update or overdraw. An idempotency key is claimed with
`INSERT ... ON CONFLICT DO NOTHING`, which waits for a concurrent claim of the same key to commit or
roll back. SERIALIZABLE would add nothing to these single-row guarantees but serialization failures
to retry. Locks are always taken in the order key -> wallet, so writes cannot deadlock.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gql_wallet import metrics
from gql_wallet.logs import logger
from gql_wallet.settings import Settings

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's busy handler alone queues writers there
    fcntl = None  # type: ignore[assignment]

_WRITE = "gql_wallet_write"
_SINGLE = "gql_wallet_single_statement"
_POOL_RECYCLE_SECONDS = 1800


def async_url(database_url: str) -> URL:
    """The async-driver URL for a user-facing `sqlite:///...` or `postgresql://...` URL."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername="postgresql+asyncpg")


def asyncpg_dsn(database_url: str) -> str:
    """A plain postgresql:// DSN for asyncpg itself (the LISTEN connection)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.database_url)
    engine = (
        _sqlite_engine(url, settings)
        if url.get_backend_name() == "sqlite"
        else _postgresql_engine(url, settings)
    )
    _count_connections(engine)
    return engine


def _count_connections(engine: AsyncEngine) -> None:
    """Pool gauge: connections checked out now (waiting ones are counted by `_connect`)."""
    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *_: metrics.DB_IN_USE.inc())
    event.listen(pool, "checkin", lambda *_: metrics.DB_IN_USE.dec())


@asynccontextmanager
async def _connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection; every helper below takes its connection here, so the time spent
    queueing for one is counted in one place."""
    metrics.DB_WAITING.inc()
    try:
        conn = await engine.connect().start()
    finally:
        metrics.DB_WAITING.dec()
    try:
        yield conn
    finally:
        await conn.close()


def _postgresql_engine(url: URL, settings: Settings) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        # Overflow connections churn under load: size the pool to the concurrency instead.
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        # No ping on checkout: SQLAlchemy's asyncpg ping is BEGIN; SELECT; ROLLBACK, three round
        # trips on every checkout, which doubled the round trips of a lookup. A connection that
        # died in the pool makes its first statement raise; asyncpg's connection errors count as
        # disconnects, so SQLAlchemy invalidates that connection (and the pool's older ones) and
        # the next checkout connects afresh. Recycling bounds a connection's age, so idle
        # connections are replaced before firewalls or server-side timeouts drop them.
        pool_pre_ping=False,
        pool_recycle=_POOL_RECYCLE_SECONDS,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {
                "application_name": "gql_wallet",
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )


def _sqlite_engine(url: URL, settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit: we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(_SINGLE, False):
            return  # one statement in autocommit mode: its own implicit transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")

    return engine


# SQLite has one writer at a time. Writers of one process queue here, in order, instead of all
# polling the file lock: SQLite's busy handler sleeps in growing steps (up to 100 ms), which under
# contention made writes tens of times slower. Other processes still meet at the file lock.
class _SqliteWriterQueue:
    """Where the writers of one SQLite file wait, instead of in SQLite's busy handler.

    SQLite's busy handler polls: a writer that finds the file locked sleeps (1 ms growing to
    100 ms) and tries again, so with several server processes the one that just committed
    usually wins again and the others' waits grow to seconds (measured: top-up p99 of 1-5 s with
    2 workers at c=32). Here each process lets one writer at a time through an asyncio.Lock, and
    that writer takes an exclusive flock() on `<database file>.writer-lock`, a blocking wait in
    the kernel that ends the moment the other process releases it. This only orders writers:
    SQLite's own locks (BEGIN IMMEDIATE and the busy timeout) still guarantee correctness, so a
    writer that does not use this queue (another tool on the file) is merely not queued.
    """

    def __init__(self, database: str | None) -> None:
        self.lock = asyncio.Lock()
        in_memory = not database or database == ":memory:" or database.startswith("file:")
        self.database = None if in_memory or fcntl is None else database
        self.path = f"{database}.writer-lock"

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self.lock:
            fd = self._open()
            if fd is None:
                yield
                return
            # Each turn opens the file anew: a flock belongs to one open file, so a wait that
            # was cancelled (and whose thread may still get the lock later) can only ever
            # release its own lock, never the next writer's.
            handed_over = False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waiting = asyncio.ensure_future(
                        asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                    )
                    try:
                        await asyncio.shield(waiting)
                    except asyncio.CancelledError:
                        # The thread may still get the lock: its own file, closed when it does.
                        waiting.add_done_callback(lambda _: os.close(fd))
                        handed_over = True
                        raise
                yield
            finally:
                if not handed_over:
                    os.close(fd)  # releases the lock

    def _open(self) -> int | None:
        """A new open file of the lock file, or None to go without the queue."""
        if self.database is None:
            return None
        try:
            # Read-only is enough for flock; created with the database file's permissions, so
            # that every user who may write the database may also queue.
            mode = os.stat(self.database).st_mode & 0o666
        except OSError:
            mode = 0o666  # no file yet (the first connection creates it): the umask decides
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CREAT, mode)
        except OSError as error:
            logger.warning("SQLite writers not queued (%s): %s", self.path, error)
            self.database = None  # once: SQLite's busy handler alone orders them from now on
            return None


_sqlite_writers: weakref.WeakKeyDictionary[AsyncEngine, _SqliteWriterQueue] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    if engine.dialect.name != "sqlite":
        async with _connect(engine) as conn, conn.begin():
            yield conn
        return
    queue = _sqlite_writers.get(engine)
    if queue is None:
        queue = _sqlite_writers.setdefault(engine, _SqliteWriterQueue(engine.url.database))
    async with queue.turn(), _connect(engine) as conn:
        await conn.execution_options(**{_WRITE: True})
        async with conn.begin():
            yield conn


@asynccontextmanager
async def read_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only snapshot; never holds a write lock. For blocks that read more than once."""
    async with _connect(engine) as conn, conn.begin():
        yield conn


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for a block that runs exactly one SELECT.

    The rule: one statement -> `read_connection`; several reads that must agree with each other
    -> `read_transaction`; any write -> `write_transaction`.

    No BEGIN/COMMIT on either database: a single statement sees one snapshot anyway, in its own
    implicit transaction. On PostgreSQL the connection is in autocommit mode (one round trip
    instead of three; the isolation level is reset when the connection goes back to the pool). On
    SQLite the driver is in autocommit mode already and the begin hook issues no BEGIN for this
    connection: each statement through aiosqlite is a hop to its thread, so this saves two hops
    per read (measured: about 1.6x the single-read throughput of BEGIN, SELECT, COMMIT).
    """
    if engine.dialect.name == "sqlite":
        async with _connect(engine) as conn:
            await conn.execution_options(**{_SINGLE: True})
            yield conn
        return
    async with single_statement(engine) as conn:
        yield conn


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for `repository.DriverRead` statements, which go to the driver's own
    connection: SQLAlchemy opens no transaction on it, so each statement is its own implicit
    transaction on both databases, without the options `read_connection` sets for that."""
    async with _connect(engine) as conn:
        yield conn


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """PostgreSQL only: a connection in autocommit mode, for exactly one statement that is its
    own transaction (one round trip, no BEGIN/COMMIT): a single SELECT, or a call of a function
    that writes atomically (the balance change of migration 0003). Nothing else may run on it.
    """
    assert engine.dialect.name == "postgresql", "SQLite needs an explicit transaction"
    async with _connect(engine) as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
