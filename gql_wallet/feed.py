"""Live ledger changes for subscriptions: committed entries only, in ledger order, per wallet.

Writers announce a change of a wallet after it commits: on PostgreSQL with NOTIFY inside the
write transaction (delivered on commit, never for a rollback, to every process that LISTENs),
and in-process for the writing process itself. On PostgreSQL a write NOTIFYs only while some
process LISTENs: NOTIFYing transactions commit one at a time, database-wide (migration 0004).
An announcement is only a wake-up: each process keeps, per watched customer, a cursor per
wallet and reads the new ledger entries after it, so nothing is missed or repeated when
announcements bunch up, and every event is a committed entry, or a committed change of the
wallet's holds (created, resolved or expired: no entry, a later `modified_at`).
Within one wallet the ledger order is the commit order (the wallet's row lock is taken before
the entry gets its sequence number), so a cursor per wallet never skips a late commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg

from gql_wallet import repository as repo
from gql_wallet.db import Database, asyncpg_dsn
from gql_wallet.logs import logger
from gql_wallet.repository import TransactionRecord, WalletRecord
from gql_wallet.settings import Settings

Owner = tuple[uuid.UUID, str]  # (organization, customer)
# Where a change sits in its wallet's history: the seq of the wallet's last ledger entry at the
# change, and the change's time (a hold's change comes after the entry before it).
Position = tuple[int, datetime]
_START: Position = (0, datetime.min.replace(tzinfo=UTC))


@dataclass(frozen=True)
class WalletChange:
    """A wallet as it was right after `transaction`, or after a change of its holds (no
    transaction)."""

    wallet: WalletRecord
    transaction: TransactionRecord | None
    position: Position


class SlowConsumer(Exception):
    """The subscriber fell further behind than its queue allows."""


T = TypeVar("T")


@dataclass(eq=False)
class Mailbox(Generic[T]):
    """One subscriber's bounded queue of events, each tagged with its wallet and ledger entry.

    `next` hands them out in the order they were put, skipping any entry at or before the last
    one seen for its wallet: a subscriber sets `seen` from the snapshot it starts with, so an
    entry is neither missed (it joined before reading the snapshot) nor repeated.
    """

    capacity: int
    queue: asyncio.Queue[tuple[int, Position, T] | None] = field(default_factory=asyncio.Queue)
    seen: dict[int, Position] = field(default_factory=dict)  # wallet seq -> last delivered
    error: Exception | None = None  # once set, the reader gets it instead of further events

    @property
    def overflowed(self) -> bool:
        return isinstance(self.error, SlowConsumer)

    def put(self, wallet_seq: int, position: Position, item: T) -> None:
        if self.error is not None:
            return
        if self.queue.qsize() >= self.capacity:
            self.end(SlowConsumer())
            return
        self.queue.put_nowait((wallet_seq, position, item))

    def end(self, error: Exception) -> None:
        """Stop delivering: the reader gets `error` (after nothing else) from `next`."""
        if self.error is None:
            self.error = error
            self.queue.put_nowait(None)  # wakes the reader

    async def next(self) -> T:
        """The next event after those already seen; raises the error once one was set."""
        while True:
            tagged = await self.queue.get()
            if self.error is not None:
                raise self.error
            assert tagged is not None
            wallet_seq, position, item = tagged
            if position > self.seen.get(wallet_seq, _START):
                self.seen[wallet_seq] = position
                return item


@dataclass(eq=False)
class Subscriber(Mailbox[WalletChange]):
    """Committed changes of one customer's wallets (of one currency, if set)."""

    currency: str | None = None

    def offer(self, change: WalletChange) -> None:
        if self.currency is not None and change.wallet.currency != self.currency:
            return
        self.put(change.wallet.seq, change.position, change)


class Watcher:
    """Follows the ledgers of one customer's wallets for this process's subscribers."""

    def __init__(self, database: Database, owner: Owner) -> None:
        self.database = database
        self.owner = owner
        self.subscribers: set[Subscriber] = set()
        self.cursors: dict[int, Position] = {}
        self.pending: set[int] = set()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.reading = False
        self.stopping = False

    async def start(self) -> None:
        async with self.database.read_transaction() as conn:
            self.cursors = await repo.last_entries(conn, *self.owner)
        self.task = asyncio.create_task(self._follow())

    def wake(self, wallet_seq: int | None) -> None:
        self.pending.update([wallet_seq] if wallet_seq is not None else self.cursors)
        self.wakeup.set()

    async def _follow(self) -> None:
        while True:
            await self.wakeup.wait()
            if self.stopping:
                return
            self.wakeup.clear()
            wallets, self.pending = self.pending, set()
            self.reading = True
            try:
                await self._catch_up(wallets)
                continue
            except Exception:
                logger.exception("reading new ledger entries for %s failed; retrying", self.owner)
                self.pending |= wallets
            finally:
                self.reading = False
            await asyncio.sleep(1)
            self.wakeup.set()

    async def _catch_up(self, wallet_seqs: set[int]) -> None:
        async with self.database.read_transaction() as conn:
            for wallet_seq in sorted(wallet_seqs):
                last_seq, last_at = self.cursors.get(wallet_seq, _START)
                changes: list[WalletChange] = []
                while True:
                    entries = await repo.entries_after(conn, wallet_seq, last_seq)
                    [wallet] = await repo.get_wallets_by_seq(conn, [wallet_seq])
                    for entry in entries:
                        state = wallet._replace(
                            balance=entry.balance_after,
                            held_balance=entry.held_after,
                            modified_at=entry.created_at,
                        )
                        changes.append(WalletChange(state, entry, (entry.seq, entry.created_at)))
                        last_seq, last_at = entry.seq, entry.created_at
                    if wallet.modified_at <= last_at or wallet.modified_at == wallet.created_at:
                        break
                    # Changed after the entries read: by an entry committed since (read it
                    # first), or with no entry of its own, by its holds.
                    if await repo.entries_after(conn, wallet_seq, last_seq):
                        continue
                    changes.append(WalletChange(wallet, None, (last_seq, wallet.modified_at)))
                    last_at = wallet.modified_at
                    break
                self.cursors[wallet_seq] = (last_seq, last_at)
                for change in changes:
                    for subscriber in list(self.subscribers):
                        subscriber.offer(change)

    async def stop(self) -> None:
        if self.task is None:
            return
        self.stopping = True
        self.wakeup.set()
        # A read is left to finish: cancelled amid a query, a pooled connection can be left
        # half closed (aiosqlite's close then never completes).
        if not self.reading:
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class LedgerFeed:
    """Per process: fans committed ledger entries out to subscribers."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.watchers: dict[Owner, Watcher] = {}
        self.starting: dict[Owner, asyncio.Task[Watcher]] = {}
        self.listener: asyncio.Task[None] | None = None
        self.listening: asyncio.Future[None] | None = None  # done once LISTEN is on

    async def _listening(self) -> None:
        """On PostgreSQL: return once this process LISTENs for every process's changes, which
        it does from its first subscription until it stops.

        A process that never serves a subscription never listens, so it pays nothing for the
        notifications of other processes' writes (each listening process has its own server
        backend and a callback per notification), and while no process listens, no write
        notifies (`_register`). A watcher reads its cursors only after this returns, so a
        change committed after that read wakes it."""
        if self.database.dialect.name != "postgresql":
            return
        if self.listener is None:
            self.listening = asyncio.get_running_loop().create_future()
            self.listener = asyncio.create_task(self._listen())
        assert self.listening is not None
        await asyncio.shield(self.listening)

    async def stop(self) -> None:
        if self.listening is not None and not self.listening.done():
            self.listening.cancel()
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
        for watcher in list(self.watchers.values()):
            await watcher.stop()
        self.watchers.clear()

    def wake(self, organization_id: uuid.UUID, customer_id: str, wallet_seq: int | None) -> None:
        watcher = self.watchers.get((organization_id, customer_id))
        if watcher is not None:
            watcher.wake(wallet_seq)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, organization_id: uuid.UUID, customer_id: str, currency: str | None
    ) -> AsyncIterator[Subscriber]:
        owner = (organization_id, customer_id)
        watcher = await self._watcher(owner)
        subscriber = Subscriber(self.settings.subscription_queue_size, currency=currency)
        watcher.subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            watcher.subscribers.discard(subscriber)
            if not watcher.subscribers and self.watchers.get(owner) is watcher:
                del self.watchers[owner]
                await watcher.stop()

    async def _watcher(self, owner: Owner) -> Watcher:
        if owner in self.watchers:
            return self.watchers[owner]
        if owner not in self.starting:

            async def start() -> Watcher:
                await self._listening()
                watcher = Watcher(self.database, owner)
                await watcher.start()
                self.watchers[owner] = watcher
                return watcher

            self.starting[owner] = asyncio.create_task(start())
        try:
            return await asyncio.shield(self.starting[owner])
        finally:
            if self.starting.get(owner) is not None and self.starting[owner].done():
                self.starting.pop(owner, None)

    async def _listen(self) -> None:
        """LISTEN on PostgreSQL for changes committed by any process, reconnecting as needed."""
        dsn = asyncpg_dsn(self.settings.listen_url)
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=self.settings.db_connect_timeout_seconds)
            except (OSError, asyncpg.PostgresError):
                logger.exception("cannot LISTEN for ledger changes; retrying")
                await asyncio.sleep(1)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                await self._register(conn)
                if self.listening is not None and not self.listening.done():
                    self.listening.set_result(None)
                # Whatever committed while we were not listening is read now.
                for watcher in list(self.watchers.values()):
                    watcher.wake(None)
                await lost.wait()
                logger.warning("the LISTEN connection was lost; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _register(self, conn: asyncpg.Connection) -> None:
        """LISTEN, and from then on make every balance change NOTIFY (migration 0004).

        The gate, taken exclusive, waits until every change in flight has committed: those
        that found no listener are then visible to the cursors read after this. FEED_LISTENING,
        held shared by this session until it ends, makes every later change NOTIFY on commit,
        which this session receives: its LISTEN holds from this transaction's commit."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", repo.FEED_GATE_LOCK)
            await conn.execute("SELECT pg_advisory_lock_shared($1)", repo.FEED_LISTENING_LOCK)
            await conn.add_listener(repo.LEDGER_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
            self.wake(uuid.UUID(change["o"]), change["c"], int(change["w"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed ledger notification: %r", payload[:200])
