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
import queue
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gql_wallet import metrics
from gql_wallet.logs import logger
from gql_wallet.settings import Settings

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's busy handler alone queues writers there
    fcntl = None  # type: ignore[assignment]

_T = TypeVar("_T")
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
    _count_connections(engine.sync_engine)
    if engine.dialect.name == "postgresql":
        senders = _postgresql_engine(url, settings, _GROUP_CONNECTIONS)
        _count_connections(senders.sync_engine)
        _pg_groups[engine] = _PgGroupCommit(senders)
    return engine


def _count_connections(engine: Engine) -> None:
    """Pool gauge: connections checked out now (waiting ones are counted by `_connect`)."""
    pool = engine.pool
    event.listen(pool, "checkout", lambda *_: metrics.DB_IN_USE.inc())
    event.listen(pool, "checkin", lambda *_: metrics.DB_IN_USE.dec())


async def _checkout(engine: AsyncEngine) -> AsyncConnection:
    """A pooled connection; every helper below takes its connection here, so the time spent
    queueing for one is counted in one place."""
    metrics.DB_WAITING.inc()
    try:
        return await engine.connect().start()
    finally:
        metrics.DB_WAITING.dec()


@asynccontextmanager
async def _connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    conn = await _checkout(engine)
    try:
        yield conn
    finally:
        await conn.close()


def _postgresql_engine(url: URL, settings: Settings, pool_size: int | None = None) -> AsyncEngine:
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
        # The pool's rollback on every checkin is a hop to aiosqlite's thread even when no
        # transaction is open, which after an autocommit read is always; _reset_if_open below
        # rolls back exactly the connections that come back inside a transaction.
        pool_reset_on_return=None,
    )
    event.listen(engine.sync_engine.pool, "reset", _reset_if_open)
    _configure_sqlite(engine.sync_engine, settings)
    queue = _sqlite_writers[engine] = _SqliteWriterQueue(url, settings)
    if not queue.in_memory and url.database:
        _sqlite_readers[engine] = SqliteReader(url.database)
    return engine


def _reset_if_open(dbapi_connection: Any, _record: Any, _state: Any) -> None:
    """On checkin: roll back a transaction still open on the connection (SQLite's own flag,
    read without a hop to aiosqlite's thread), so none reaches the next user."""
    if dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
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
        if options.get(_SINGLE, False):
            return  # one statement in autocommit mode: its own implicit transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")


def _no_auto_checkpoint(dbapi_connection: Any, _record: Any) -> None:
    """The writer thread's connection: no automatic checkpoint inside its COMMITs (see
    `_SqliteWriterQueue._checkpoint`)."""
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


# A write waiting for the writer thread: the caller's future, the function and its arguments.
_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]

# The most writes in one group commit (a bound on how long one group holds the file), and how
# long the writer thread waits for work before it ends (a new one starts with the next write).
_MAX_BATCH = 64
_WRITER_IDLE_SECONDS = 5.0
# The writer thread checkpoints the WAL itself, after it has released the write lock, once at
# least this long and this many groups have passed since its last checkpoint (see
# `_SqliteWriterQueue._checkpoint`).
_CHECKPOINT_SECONDS = 0.1
_CHECKPOINT_GROUPS = 16
# The savepoint of each write of a group (one at a time, so one name serves them all).
_SAVEPOINT = "SAVEPOINT gql_wallet_write"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO gql_wallet_write"
_RELEASE_SAVEPOINT = "RELEASE gql_wallet_write"
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    """On the event loop: hand a write's outcome to its caller, unless it stopped waiting."""
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# SQLite has one writer at a time. Writers of one process queue here, in order, instead of all
# polling the file lock: SQLite's busy handler sleeps in growing steps (up to 100 ms), which under
# contention made writes tens of times slower. Other processes still meet at the file lock.
class _SqliteWriterQueue:
    """Where the writers of one SQLite file wait, instead of in SQLite's busy handler, and the
    thread that runs top-ups and charges.

    SQLite's busy handler polls: a writer that finds the file locked sleeps (1 ms growing to
    100 ms) and tries again, so with several server processes the one that just committed
    usually wins again and the others' waits grow to seconds (bench/PROFILE.md). Here a writer takes an exclusive flock() on `<database file>.writer-lock`
    first, a blocking wait in the kernel that ends the moment the other process releases it.
    This only orders writers: SQLite's own locks (BEGIN IMMEDIATE and the busy timeout) still
    guarantee correctness, so a writer that does not use this queue (another tool on the file)
    is merely not queued.

    Two kinds of writers queue here. `turn()` is for async blocks (`write_transaction`): one
    at a time per process through an asyncio.Lock, then the flock. `run()` is for writes written
    as one synchronous function (`run_write`: top-ups, charges, wallet creation): they run whole
    in this queue's one thread, on its own connection, in group commits (see `run`). Through
    aiosqlite each statement of a write would be a hop to its thread and back to the event loop,
    which runs other requests in between, so the file stayed locked for several turns of a busy
    loop; in the writer thread the lock is held only for the SQL itself. Both kinds exclude each
    other by the flock (one per open file, so also within one process).
    """

    def __init__(self, url: URL, settings: Settings) -> None:
        self.lock = asyncio.Lock()
        database = url.database
        self.in_memory = not database or database == ":memory:" or database.startswith("file:")
        self.database = None if self.in_memory or fcntl is None else database
        self.path = f"{database}.writer-lock"
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        # The writer thread's engine: one connection, used by that thread only (not opened yet).
        self.engine = create_sync_engine(
            url.set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0
        )
        _configure_sqlite(self.engine, settings)
        _count_connections(self.engine)
        event.listen(self.engine, "connect", _no_auto_checkpoint)
        self._groups_since_checkpoint = 0
        self._last_checkpoint = 0.0

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

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(connection, *args)` as its own savepoint of a write transaction, in the writer
        thread; the result once that transaction has committed.

        Group commit: the writer thread takes every write that is waiting (up to
        `_MAX_BATCH`) into one BEGIN IMMEDIATE .. COMMIT, each in its own savepoint, in the order
        they were submitted. One flock, one COMMIT and so one fsync serve the whole group,
        where each write used to pay its own. Every write keeps its own outcome: one that
        raises is rolled back to its savepoint and gets the exception, the others go on; no
        caller hears of success before the COMMIT (durable, synchronous=FULL), and if the
        COMMIT fails every write of the group gets that error and none is written. A later
        write sees the earlier ones of its group (so a retry of an idempotency key in the same
        group is a replay). A caller cancelled while its write waits is taken out of the line;
        once its group has started, its write ends with the group and the result is dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._thread_lock:
            self._jobs.put((future, fn, args))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="gql_wallet-sqlite-writer", daemon=True
                )
                self._thread.start()
        return await future

    def _serve(self) -> None:
        """The writer thread: groups of waiting writes until it has been idle for a while."""
        while True:
            try:
                group = [self._jobs.get(timeout=_WRITER_IDLE_SECONDS)]
            except queue.Empty:
                with self._thread_lock:
                    if self._jobs.empty():  # else a write came in just now: serve it
                        self._thread = None
                        return
                continue
            while len(group) < _MAX_BATCH:
                try:
                    group.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            jobs = [job for job in group if not job[0].cancelled()]
            try:
                self._run_group(jobs)
            except Exception as error:
                # Not the database's (its errors are each write's outcome): a bug or a broken
                # metrics file after the group ran. Its callers hear of it, and this thread goes
                # on serving; had it ended here, every later write would wait forever.
                logger.exception("the SQLite writer thread failed a group of %d", len(jobs))
                for future, _fn, _args in jobs:
                    with suppress(RuntimeError):  # its event loop has closed
                        future.get_loop().call_soon_threadsafe(_settle, future, (False, error))
            self._checkpoint()

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint of the WAL, every `_CHECKPOINT_SECONDS` and `_CHECKPOINT_GROUPS`,
        run here after the group's callers have their answers and the write lock is released.

        SQLite's automatic checkpoint (every 1,000 WAL pages) runs inside the COMMIT of the write
        that crosses the mark, so that group held the write lock several times longer, copying
        pages, while every other writer waited (bench/PROFILE.md). A PASSIVE checkpoint takes no write lock: other processes go on
        writing while it copies. The writer thread's connection therefore has the automatic
        checkpoint off; every other connection keeps it, so the WAL stays bounded whoever
        writes. A checkpoint that fails is logged and left to the next one."""
        self._groups_since_checkpoint += 1
        now = time.monotonic()
        if (
            self._groups_since_checkpoint < _CHECKPOINT_GROUPS
            or now - self._last_checkpoint < _CHECKPOINT_SECONDS
        ):
            return
        self._groups_since_checkpoint, self._last_checkpoint = 0, now
        try:
            with self.engine.connect() as conn:
                driver: Any = conn.connection.driver_connection
                driver.execute(_CHECKPOINT).fetchall()
        except Exception:
            logger.exception("the SQLite writer thread's WAL checkpoint failed")

    def _run_group(self, group: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._file_lock(), self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                # Each write's savepoint goes to sqlite3 directly: SQLAlchemy's begin_nested()
                # costs CPU while this thread holds the database's write lock.
                driver: Any = conn.connection.driver_connection
                with conn.begin():
                    for _future, fn, args in group:
                        driver.execute(_SAVEPOINT)
                        try:
                            outcome = (True, fn(conn, *args))
                        except Exception as error:
                            driver.execute(_ROLLBACK_TO_SAVEPOINT)
                            outcome = (False, error)
                        driver.execute(_RELEASE_SAVEPOINT)
                        outcomes.append(outcome)
        except Exception as error:  # BEGIN or COMMIT failed: nothing of the group is written
            outcomes = [(False, error)] * len(group)
        else:
            metrics.WRITE_GROUP_SIZE.observe(len(group))
        for (future, _fn, _args), outcome in zip(group, outcomes, strict=True):
            future.get_loop().call_soon_threadsafe(_settle, future, outcome)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """The flock, waited for in the writer thread (a blocking wait is what it is for)."""
        fd = self._open()
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        """Close the writer thread's connection (the thread ends when it has been idle)."""
        self.engine.dispose()

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


class SqliteReader:
    """Hot point reads of SQLite, run on the event loop's own thread: no thread hop at all.

    Through aiosqlite each statement is two hand-overs of the GIL (to the connection's thread
    and back), and with the event loop busy those waits, not the SQL, were most of a lookup's
    time (the bare endpoint pays them too, but its loop is idle enough). The indexed point
    SELECTs that go here (the API key, a customer's wallets) take microseconds from SQLite's page
    cache, less than one hand-over. The connection is read-only (`query_only`), in autocommit
    mode (each statement sees the newest committed data; WAL readers never wait for the
    writer), and has a short busy timeout: in the rare case SQLite makes a reader wait (WAL
    recovery), `read` gives up after it and returns None, and the caller takes the pooled path.
    """

    BUSY_TIMEOUT_MS = 20

    def __init__(self, database: str) -> None:
        self.database = database
        self._conn: sqlite3.Connection | None = None

    def read(self, sql: str, arguments: list[Any]) -> list[Any] | None:
        try:
            if self._conn is None:
                conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA query_only=ON")
                self._conn = conn
            return self._conn.execute(sql, arguments).fetchall()
        except sqlite3.OperationalError as error:
            logger.warning("SQLite read on the event loop gave way to the pool: %s", error)
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_sqlite_readers: weakref.WeakKeyDictionary[AsyncEngine, SqliteReader] = weakref.WeakKeyDictionary()


def sqlite_reader(engine: AsyncEngine) -> SqliteReader | None:
    """The engine's reader on the event loop's thread, or None (PostgreSQL, in-memory SQLite)."""
    return _sqlite_readers.get(engine)


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
    async with _sqlite_writers[engine].turn(), _connect(engine) as conn:
        await conn.execution_options(**{_WRITE: True})
        async with conn.begin():
            yield conn


async def run_write(engine: AsyncEngine, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(connection, *args)` in one write transaction: committed when it returns, rolled
    back if it raises. For writes that are a fixed sequence of statements (a top-up's steps).

    SQLite: in the writer thread (`_SqliteWriterQueue.run`), the whole transaction in one hop.
    PostgreSQL: in `write_transaction`, through `run_sync`. An in-memory SQLite database is a
    different database on every connection, so there the write stays on the engine's own pool.
    """
    queue = _sqlite_writers.get(engine)
    if queue is not None and not queue.in_memory:
        return await queue.run(fn, *args)
    async with write_transaction(engine) as conn:
        return await conn.run_sync(fn, *args)


# --- PostgreSQL group commit ---------------------------------------------------------------

# The senders' pool: one connection per sender of every line (`run_grouped`'s `senders`: 1 for
# balance changes, 2 each for API key reads and customers' wallets).
_GROUP_CONNECTIONS = 5


# What a statement that the server refused, or that never reached it, raises. After these the
# group's transaction has written nothing, or (a connection lost during COMMIT) maybe everything,
# which the writes sent again find as their own idempotency keys, `taken`, and replay. Any other
# error comes after the group has committed: its writes get it rather than being sent again.
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, DBAPIError, OSError)


async def _release(held: list[AsyncConnection]) -> None:
    """Give a sender's connection (if it holds one) back to the pool."""
    if held:
        await held.pop().close()


class _Line:
    """The statements of one kind waiting to be sent together, and the senders serving them."""

    def __init__(
        self,
        send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
        send_one: Callable[[DriverConnection, Any], Awaitable[Any]],
        observe: Callable[[int], None] | None,
        most_senders: int,
    ) -> None:
        self.send_group = send_group
        self.send_one = send_one
        self.observe = observe or (lambda _size: None)
        self.most_senders = most_senders
        self.waiting: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.senders = 0


class _PgGroupCommit:
    """PostgreSQL group commit for writes that are one statement each (a top-up or a charge is
    one call of `gql_wallet_balance_change`), and group reads of one row set by key (the API
    keys and the customers' wallets of the requests waiting), on the same lines.

    The writes waiting in a process go to the server together, as one statement that runs each
    write's function call in turn, in one transaction: one round trip and one commit (one WAL
    flush) for the group instead of one per write. Nobody waits for a group to fill: a write
    that finds its line's sender free goes at once, and the writes that arrive while a group is
    in flight form the next group (at most `_MAX_BATCH`). Balance changes have one sender per
    process (larger groups, fewer commits); reads, which commit nothing, keep two. Both were
    measured both ways (bench/PROFILE.md).

    Every write keeps its own outcome. The statement runs the same function, with the same
    steps, as a write sent alone; a later write of a group sees the earlier ones (a retry of
    the same idempotency key in one group is `taken`, and replays once the group has
    committed). If the group statement raises (a deadlock with another process, a constraint,
    a lost connection), its transaction wrote nothing, and each write of the group is sent
    again alone, so one bad write fails only itself. Nobody hears of success before the group
    has committed. A caller cancelled while its write waits is taken out of the line; once its
    group has been sent, the write completes, and a retry with the same key replays it.

    The senders use a pool of their own (`_GROUP_CONNECTIONS`), so that requests
    holding every connection of the main pool can never starve them.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lines: dict[Any, _Line] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(
        self,
        send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
        send_one: Callable[[DriverConnection, Any], Awaitable[_T]],
        item: Any,
        observe: Callable[[int], None] | None,
        senders: int,
    ) -> _T:
        line = self.lines.get(send_group)
        if line is None:
            line = self.lines[send_group] = _Line(send_group, send_one, observe, senders)
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        line.waiting.append((item, future))
        if line.senders < line.most_senders:
            line.senders += 1
            task = asyncio.get_running_loop().create_task(self._serve(line))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _serve(self, line: _Line) -> None:
        """One sender: groups from the line until it is empty.

        The sender keeps its pooled connection from one group to the next while the line has
        work (a checkout and a checkin cost about as much CPU as the group's statement), and
        gives it back when the line is empty or a statement on it failed."""
        group: list[tuple[Any, asyncio.Future[Any]]] = []
        held: list[AsyncConnection] = []  # the sender's connection, once it has one
        try:
            while line.waiting:
                group = []
                while line.waiting and len(group) < _MAX_BATCH:
                    item, future = line.waiting.popleft()
                    if not future.done():  # else its caller was cancelled while it waited
                        group.append((item, future))
                if not group:
                    continue
                try:
                    await self._send(line, group, held)
                except Exception as error:  # not the database's: its callers hear of it
                    await _release(held)
                    for _item, future in group:
                        _settle(future, (False, error))
        except BaseException as error:  # cancelled (shutdown): nobody may wait forever
            for _item, future in [*group, *line.waiting]:
                _settle(future, (False, error))
            line.waiting.clear()
            raise
        finally:
            line.senders -= 1
            await _release(held)

    async def _send(
        self,
        line: _Line,
        group: list[tuple[Any, asyncio.Future[Any]]],
        held: list[AsyncConnection],
    ) -> None:
        if len(group) > 1:
            try:
                if not held:
                    held.append(await _checkout(self.engine))
                results = await line.send_group(held[0], [item for item, _ in group])
            except _DATABASE_ERRORS:
                await _release(held)  # the statement's connection may be the trouble
                logger.warning(
                    "a group of %d statements failed; sending each alone", len(group), exc_info=True
                )
            else:
                line.observe(len(group))
                for (_item, future), result in zip(group, results, strict=True):
                    _settle(future, (True, result))
                return
        for item, future in group:
            try:
                if not held:
                    held.append(await _checkout(self.engine))
                outcome: tuple[bool, Any] = (True, await line.send_one(held[0], item))
            except Exception as error:
                await _release(held)
                outcome = (False, error)
            else:
                line.observe(1)
            _settle(future, outcome)

    async def close(self) -> None:
        """Let the groups in flight finish, then close the senders' connections."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.engine.dispose()


_pg_groups: weakref.WeakKeyDictionary[AsyncEngine, _PgGroupCommit] = weakref.WeakKeyDictionary()


async def run_grouped(
    engine: AsyncEngine,
    send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
    send_one: Callable[[DriverConnection, Any], Awaitable[_T]],
    item: Any,
    *,
    conn: DriverConnection | None = None,
    observe: Callable[[int], None] | None = None,
    senders: int = 2,
) -> _T:
    """A single statement, sent together with the others of its kind waiting in this process
    on PostgreSQL (see `_PgGroupCommit`): a write in a group commit, or a read of one row by
    key in a group read. One line per `send_group`.

    `send_group(conn, items)` sends several as one statement and returns their outcomes in
    order; `send_one(conn, item)` sends one. Both run on a `driver_connection`-like connection
    (no SQLAlchemy transaction: the statement is its own transaction). `observe(size)` is
    told the size of each group sent; `senders` bounds the groups of this line in flight at
    once. Without a group line (SQLite) each is sent alone, on `conn` or a connection checked
    out on demand.
    """
    groups = _pg_groups.get(engine)
    if groups is not None:
        return await groups.run(send_group, send_one, item, observe, senders)
    async with OnDemandConnection(engine) as own:
        return await send_one(conn or own, item)


def sync_engines(engine: AsyncEngine) -> list[Engine]:
    """Every engine whose connections run `engine`'s statements: its own, and on SQLite the
    writer thread's (for event listeners that must see every statement)."""
    queue = _sqlite_writers.get(engine)
    return [engine.sync_engine, *([queue.engine] if queue is not None else [])]


async def dispose(engine: AsyncEngine) -> None:
    """Close every connection of `engine`, the SQLite writer thread's included."""
    queue = _sqlite_writers.get(engine)
    if queue is not None:
        await asyncio.to_thread(queue.close)
    reader = _sqlite_readers.get(engine)
    if reader is not None:
        reader.close()
    groups = _pg_groups.get(engine)
    if groups is not None:
        await groups.close()
    await engine.dispose()


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
    per read.
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


class OnDemandConnection:
    """The request's pooled connection for `repository.DriverRead` statements, checked out the
    first time a statement needs it, and given back when the `async with` block ends.

    On SQLite the API key and `customerWallets` reads run on the event loop's thread
    (`SqliteReader`), and on PostgreSQL they and the writes go in group reads and group commits
    on the senders' own connections (`run_grouped`), so a planned request needs no pooled
    connection at all; checking one out and in anyway was about 4% of a SQLite lookup's CPU
    (bench/PROFILE.md). Whatever does need one (the reader's fallback, a replay) takes it here,
    at most once per request. Like any connection, it serves one statement at a time.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._conn: AsyncConnection | None = None

    async def get(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await _checkout(self.engine)
        return self._conn

    async def __aenter__(self) -> OnDemandConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


# A connection for `repository.DriverRead` statements: from `driver_connection`, or on demand.
DriverConnection = AsyncConnection | OnDemandConnection


async def checked_out(conn: DriverConnection) -> AsyncConnection:
    """The pooled connection itself (checked out now if `conn` is on demand)."""
    return await conn.get() if isinstance(conn, OnDemandConnection) else conn


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """PostgreSQL only: a connection in autocommit mode, for exactly one statement that is its
    own transaction (one round trip, no BEGIN/COMMIT). Nothing else may run on it. (The balance
    change goes the same way, in `run_grouped`'s statements.)
    """
    assert engine.dialect.name == "postgresql", "SQLite needs an explicit transaction"
    async with _connect(engine) as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
