"""The engines per dialect: URLs, pool settings, and the SQLite connection hooks.

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
to retry. Each write takes its locks in the order key -> wallet; a group commit's calls take
them in their wallets' order, one call after the other, so a duplicate key racing a group can
deadlock with it, and PostgreSQL's victim is sent again (`groups.PgGroupCommit`).
"""

from __future__ import annotations

import functools
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gql_wallet import metrics
from gql_wallet.settings import Settings

# Execution options the SQLite begin hook reads (set by `Database`'s helpers).
WRITE = "gql_wallet_write"
SINGLE = "gql_wallet_single_statement"
_POOL_RECYCLE_SECONDS = 1800
# The senders' pool of PostgreSQL group commit: one connection per sender of every line
# (`Database.run_grouped`'s `senders`: 1 for balance changes, 2 each for the reads of API keys,
# customer sessions, customers' wallets, ledger pages and pages of wallets), so that no line
# waits for another's.
GROUP_CONNECTIONS = 11


def async_url(database_url: str) -> URL:
    """The async-driver URL for a user-facing `sqlite:///...` or `postgresql://...` URL."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername="postgresql+asyncpg")


def asyncpg_dsn(database_url: str) -> str:
    """A plain postgresql:// DSN for asyncpg itself (the LISTEN connection)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    """The engine of the main pool for `url` (see `async_url`)."""
    engine = (
        sqlite_engine(url, settings)
        if url.get_backend_name() == "sqlite"
        else postgresql_engine(url, settings)
    )
    count_connections(engine.sync_engine)
    return engine


def count_connections(engine: Engine) -> None:
    """Pool gauge: connections checked out now (waiting ones are counted by
    `connections.checkout`)."""
    pool = engine.pool
    event.listen(pool, "checkout", lambda *_: metrics.DB_IN_USE.inc())
    event.listen(pool, "checkin", lambda *_: metrics.DB_IN_USE.dec())


def postgresql_engine(url: URL, settings: Settings, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
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
        connect_args=_postgresql_connect_args(settings),
    )


def _postgresql_connect_args(settings: Settings) -> dict[str, Any]:
    if not settings.db_transaction_pooler:
        return {
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {
                "application_name": "gql_wallet",
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        }
    # Behind a transaction pooler each transaction may run on another server connection, which
    # other clients' transactions share: no startup parameter but the ones PgBouncer tracks, no
    # named prepared statement (asyncpg's cache off: it parses in the same message sequence it
    # executes in; SQLAlchemy's off, and its statements unnamed, which `single_statement` keeps
    # inside a transaction), and the timeout set per transaction.
    return {
        "timeout": settings.db_connect_timeout_seconds,
        "server_settings": {"application_name": "gql_wallet"},
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unnamed,
        "connection_class": _timed_transactions(settings.db_statement_timeout_ms),
    }


def _unnamed() -> str:
    return ""


@functools.cache
def _timed_transactions(timeout_ms: int) -> type[asyncpg.Connection]:
    """An asyncpg connection whose every transaction sets statement_timeout for itself (SET
    LOCAL), in the same simple-query message as its BEGIN: no extra round trip, and nothing
    that outlives the transaction on a shared server connection."""

    class TimedTransactions(asyncpg.Connection):  # type: ignore[misc]
        async def execute(
            self,
            query: str,
            *args: Any,
            timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's own signature)
        ) -> str:
            if timeout_ms and not args and query.startswith("BEGIN"):
                query = f"{query} SET LOCAL statement_timeout = {int(timeout_ms)};"
            return await super().execute(query, *args, timeout=timeout)  # type: ignore[no-any-return]

    return TimedTransactions


def sqlite_engine(url: URL, settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        # The pool's rollback on every checkin is a hop to aiosqlite's thread even when no
        # transaction is open, which after an autocommit read is always; _reset_if_open below
        # rolls back exactly the connections that come back inside a transaction.
        pool_reset_on_return=None,
    )
    event.listen(engine.sync_engine.pool, "reset", _reset_if_open)
    configure_sqlite(engine.sync_engine, settings)
    return engine


def _reset_if_open(dbapi_connection: Any, _record: Any, _state: Any) -> None:
    """On checkin: roll back a transaction still open on the connection (SQLite's own flag,
    read without a hop to aiosqlite's thread), so none reaches the next user."""
    if dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def configure_sqlite(engine: Engine, settings: Settings) -> None:
    """Every SQLite connection: WAL, synchronous=FULL, foreign keys, the busy timeout, and the
    driver in autocommit mode so that we issue BEGIN ourselves (see the module docstring)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit: we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(SINGLE, False):
            return  # one statement in autocommit mode: its own implicit transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE, False) else "BEGIN")


def no_auto_checkpoint(dbapi_connection: Any, _record: Any) -> None:
    """The writer thread's connection: no automatic checkpoint inside its COMMITs (see
    `sqlite.SqliteWriterQueue._checkpoint`)."""
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")
