"""SQLite's writer thread with group commit, and the reader on the event loop's thread."""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL

from gql_wallet import metrics
from gql_wallet.db.engines import WRITE, configure_sqlite, count_connections, no_auto_checkpoint
from gql_wallet.logs import logger
from gql_wallet.settings import Settings

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's busy handler alone queues writers there
    fcntl = None  # type: ignore[assignment]

_T = TypeVar("_T")

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]

# The most writes in one group commit (a bound on how long one group holds the file), and how
# long the writer thread waits for work before it ends (a new one starts with the next write).
MAX_BATCH = 64
_WRITER_IDLE_SECONDS = 5.0
# The writer thread checkpoints the WAL itself, after it has released the write lock, once at
# least this long and this many groups have passed since its last checkpoint (see
# `SqliteWriterQueue._checkpoint`).
_CHECKPOINT_SECONDS = 0.1
_CHECKPOINT_GROUPS = 16
# The savepoint of each write of a group (one at a time, so one name serves them all).
_SAVEPOINT = "SAVEPOINT gql_wallet_write"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO gql_wallet_write"
_RELEASE_SAVEPOINT = "RELEASE gql_wallet_write"
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"


def settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
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
class SqliteWriterQueue:
    """Where the writers of one SQLite file wait, instead of in SQLite's busy handler, and the
    thread that runs top-ups and charges.

    SQLite's busy handler polls: a writer that finds the file locked sleeps (1 ms growing to
    100 ms) and tries again, so with several server processes the one that just committed
    usually wins again and the others' waits grow to seconds (bench/PROFILE.md). Here a writer takes an exclusive flock() on `<database file>.writer-lock`
    first, a blocking wait in the kernel that ends the moment the other process releases it.
    This only orders writers: SQLite's own locks (BEGIN IMMEDIATE and the busy timeout) still
    guarantee correctness, so a writer that does not use this queue (another tool on the file)
    is merely not queued.

    Two kinds of writers queue here. `turn()` is for async blocks (`Database.write_transaction`): one
    at a time per process through an asyncio.Lock, then the flock. `run()` is for writes written
    as one synchronous function (`Database.run_write`: top-ups, charges, wallet creation): they run whole
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
        configure_sqlite(self.engine, settings)
        count_connections(self.engine)
        event.listen(self.engine, "connect", no_auto_checkpoint)
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
        `MAX_BATCH`) into one BEGIN IMMEDIATE .. COMMIT, each in its own savepoint, in the order
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
            while len(group) < MAX_BATCH:
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
                        future.get_loop().call_soon_threadsafe(settle, future, (False, error))
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
                conn.execution_options(**{WRITE: True})
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
            future.get_loop().call_soon_threadsafe(settle, future, outcome)

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
