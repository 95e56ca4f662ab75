"""PostgreSQL: a balance change NOTIFYs only while some process LISTENs (migration 0004).

PostgreSQL commits the transactions that sent a NOTIFY one at a time, database-wide, so the
announcement is left out while nobody listens; two advisory locks make that decision safe
against a listener that starts while writes are in flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

from gql_wallet import ledger, repository
from gql_wallet.db import asyncpg_dsn, create_database
from gql_wallet.feed import LedgerFeed
from gql_wallet.settings import Settings
from tests.conftest import advisory_locks, cli
from tests.test_subscriptions import organization_of

GATE, LISTENING = repository.FEED_GATE_LOCK, repository.FEED_LISTENING_LOCK


@dataclass
class Setup:
    feed: LedgerFeed
    organization_id: uuid.UUID
    observer: asyncpg.Connection  # LISTENs without registering: it hears, it does not ask
    heard: list[str]

    async def top_up(self, key: str) -> None:
        change = ledger.BalanceChange("cus_1", "usd", 1, key)
        result = await ledger.top_up(self.feed.database, self.organization_id, change)
        assert result.transaction is not None

    async def announcements(self) -> list[str]:
        """What the observer heard of the writes committed so far: PostgreSQL delivers the
        notifications it has for a session before that session's next ReadyForQuery."""
        await self.observer.execute("SELECT 1")
        for _ in range(3):
            await asyncio.sleep(0)
        return list(self.heard)


@asynccontextmanager
async def setup(url: str) -> AsyncIterator[Setup]:
    config = Settings(database_url=url)
    token = cli(url, "api-keys", "create", "--organization", "acme").stdout.split()[-1]
    database = create_database(config)
    feed = LedgerFeed(database, config)
    observer = await asyncpg.connect(asyncpg_dsn(url))
    heard: list[str] = []
    await observer.add_listener(repository.LEDGER_CHANNEL, lambda *args: heard.append(args[3]))
    try:
        yield Setup(feed, await organization_of(database, token), observer, heard)
    finally:
        await observer.close()
        await feed.stop()
        await database.dispose()


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@POSTGRESQL
async def test_writes_notify_only_while_some_process_listens(database_url: str) -> None:
    async with setup(database_url) as s:
        await s.top_up("nobody-listens")
        assert await s.announcements() == []
        # The write's probe of the listening lock left no lock behind on its pooled connection.
        assert await advisory_locks(database_url, LISTENING) == []

        await s.feed._listening()  # this process's first subscription would do this
        assert await advisory_locks(database_url, LISTENING) == [("ShareLock", True)]
        await s.top_up("one-listens")
        heard = await s.announcements()
        assert len(heard) == 1 and '"c" : "cus_1"' in heard[0]

        await s.feed.stop()  # its LISTEN session ends, and with it the lock

        async def no_listener() -> bool:
            return await advisory_locks(database_url, LISTENING) == []

        await _until(no_listener, "the LISTEN session's end")
        await s.top_up("nobody-listens-again")
        assert await s.announcements() == heard


@POSTGRESQL
async def test_a_listener_waits_for_the_writes_that_found_no_listener(database_url: str) -> None:
    """A write in flight that found no listener will not NOTIFY: the listener's registration
    waits until it has committed, so that the cursors read after it include its entry; the
    writes after the registration NOTIFY."""
    async with setup(database_url) as s:
        await s.top_up("seed")
        writer = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            transaction = writer.transaction()
            await transaction.start()
            outcome = await writer.fetchval(
                "SELECT outcome FROM gql_wallet_balance_change($1, 'in-flight', '{}', 'cus_1', "
                "'usd', 'TOP_UP', 5, 0, 100, NULL, NULL, '{}', false, $2, $3, $4, 'm', 'r', $5, "
                "'PAID', 50, NULL, 'k', 'EXPIRATION', 'x:')",
                s.organization_id,
                uuid.uuid4(),
                uuid.uuid4(),
                repository.LEDGER_CHANNEL,
                uuid.uuid4(),
            )
            assert outcome == "applied"
            # The write holds the gate until it ends.
            assert await advisory_locks(database_url, GATE) == [("ShareLock", True)]
            registering = asyncio.create_task(s.feed._listening())

            async def registration_waits() -> bool:
                return ("ExclusiveLock", False) in await advisory_locks(database_url, GATE)

            await _until(registration_waits, "the registration to wait for the gate")
            assert not registering.done()
            await transaction.commit()
        finally:
            await writer.close()
        await asyncio.wait_for(registering, 10)
        # The in-flight write did not NOTIFY (it had found no listener), and it had committed
        # before the registration finished: a cursor read now includes its entry.
        assert await s.announcements() == []
        async with s.feed.database.engine.connect() as conn:
            cursors = await repository.last_entries(conn, s.organization_id, "cus_1")
        [wallet_seq] = cursors
        in_flight = await s.observer.fetchval(
            "SELECT seq FROM wallet_transactions WHERE idempotency_key = 'in-flight'"
        )
        assert cursors[wallet_seq][0] == in_flight
        await s.top_up("after")
        heard = await s.announcements()
        assert len(heard) == 1 and f'"w" : {wallet_seq}' in heard[0]
        async with s.feed.database.engine.connect() as conn:
            after = await repository.last_entries(conn, s.organization_id, "cus_1")
        assert after[wallet_seq] > cursors[wallet_seq]
