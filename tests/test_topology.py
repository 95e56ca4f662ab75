"""The production topology (docs/deploy.md): many server processes, one PgBouncer in
transaction pooling mode whose pool is smaller than the processes' pools together, one
PostgreSQL. Also what a transaction pooler demands of the app itself: no startup parameter
but the ones it tracks, and a statement timeout that never outlives its transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url, text

from gql_wallet.db import asyncpg_dsn, create_database
from gql_wallet.settings import Settings
from tests.conftest import (
    Bouncer,
    LiveServer,
    cli,
    database_of_kind,
    pgbouncer_directory,
    run_pgbouncer,
    start_server,
    stop_server,
)
from tests.test_multiprocess import CUSTOMERS, assert_exact, seed
from tests.test_subscriptions import NO_LIMITS
from tests.workload import Op, Record, mixed_ops, run_clients

PROCESSES, WORKERS = 4, 2
# Server connections PgBouncer keeps for the database: fewer than the servers' pools together
# (each worker: GQL_WALLET_DB_POOL_SIZE 10 and 11 group-commit senders), so clients queue.
POOL = 8


@pytest.fixture
def bouncer() -> Iterator[Bouncer]:
    with pgbouncer_directory() as directory, run_pgbouncer(directory, pool_size=POOL) as running:
        yield running


@pytest.fixture
def lone_bouncer() -> Iterator[Bouncer]:
    """PgBouncer with one server connection: every client's transactions share it."""
    with pgbouncer_directory() as directory, run_pgbouncer(directory, pool_size=1) as running:
        yield running


@pytest.fixture
def direct(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database, its URL on the server itself."""
    with database_of_kind(request, "postgresql", tmp_path) as url:
        yield url


async def test_four_servers_behind_one_small_pool_stay_exact(
    bouncer: Bouncer, direct: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = make_url(direct).database or ""
    monkeypatch.setenv("GQL_WALLET_DB_TRANSACTION_POOLER", "true")
    monkeypatch.setenv("GQL_WALLET_LISTEN_DATABASE_URL", direct)
    url = bouncer.url(database)
    servers = [
        start_server(url, WORKERS, tmp_path / f"server-{n}.log", NO_LIMITS)
        for n in range(PROCESSES)
    ]
    try:
        await _run(servers)
    finally:
        for server in servers:
            stop_server(server)
    # Clients queued for a server connection (latency), and none got an error for it (_run).
    waited = _waited_us(bouncer, database)
    print(f"clients waited {waited / 1e6:.1f} s in all for a server connection")
    assert waited > 0, "the pool was never short: the test proves nothing"


async def _run(servers: list[LiveServer]) -> None:
    api_key = servers[0].new_key("acme")
    record = Record()
    await seed(servers[0], api_key, record)
    ops = mixed_ops(CUSTOMERS, 4_000, seed=3)
    started = time.monotonic()
    lost = await asyncio.gather(
        *[run_clients(s.url, api_key, ops, record, clients=16) for s in servers]
    )
    elapsed = time.monotonic() - started
    # Every write answered: a short pool means waiting, never an error.
    assert [op for ops_lost in lost for op in ops_lost] == []
    writes = dict(record.outcomes)
    assert len(writes) >= 3_000 and record.duplicates_sent >= 300
    # Each write's answer lost, and sent again through another process: each replays its
    # first outcome (Record checks that) and writes nothing.
    again = [
        Op("top_up" if o.delta > 0 else "charge", o.customer, abs(o.delta), key)
        for key, o in writes.items()
        if not key.startswith("seed-") and o.delta != 0
    ]
    shares = [iter(again[n::PROCESSES]) for n in range(PROCESSES)]
    retried = await asyncio.gather(
        *[
            run_clients(servers[(n + 1) % PROCESSES].url, api_key, share, record, clients=8)
            for n, share in enumerate(shares)
        ]
    )
    assert [op for ops_lost in retried for op in ops_lost] == []
    assert record.outcomes == writes
    assert record.lowest_balance_read is not None and record.lowest_balance_read >= 0
    await assert_exact(servers[0], api_key, record)
    print(
        f"\n[topology] {PROCESSES} processes x {WORKERS} workers through PgBouncer "
        f"(pool {POOL}): {record.acknowledged_writes} acknowledged writes ({len(again)} "
        f"retried after a lost answer), {record.reads} reads, {elapsed:.1f}s"
    )


def _waited_us(bouncer: Bouncer, database: str) -> int:
    """How long clients have waited for a server connection of the database, in all (µs)."""
    (row,) = [row for row in bouncer.show("STATS") if row["database"] == database]
    return int(row["total_wait_time"])


async def test_the_statement_timeout_is_per_transaction_and_leaks_to_no_one(
    lone_bouncer: Bouncer, direct: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a PgBouncer with one server connection, so that every client shares it: the
    app's transactions have its timeout, a statement past it is cancelled, and the shared
    connection keeps the server's default for the next client."""
    bouncer = lone_bouncer
    url = bouncer.url(make_url(direct).database or "")
    # What a user tries first: the startup parameter a direct connection carries is refused,
    # and the message says what to set.
    refused = cli(url, "api-keys", "create", "--organization", "acme", check=False)
    assert refused.returncode != 0
    assert "GQL_WALLET_DB_TRANSACTION_POOLER" in refused.stderr, refused.stderr
    monkeypatch.setenv("GQL_WALLET_DB_TRANSACTION_POOLER", "true")
    monkeypatch.setenv("GQL_WALLET_LISTEN_DATABASE_URL", direct)
    made = cli(url, "api-keys", "create", "--organization", "acme")
    assert "gqlw_sk_" in made.stdout

    database = create_database(Settings(database_url=url, db_statement_timeout_ms=300))
    try:
        async with database.read_transaction() as conn:
            shown = (await conn.execute(text("SHOW statement_timeout"))).scalar()
        assert shown == "300ms"
        async with database.read_connection() as conn:  # one statement, as reads run
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "300ms"
        with pytest.raises(Exception, match="statement timeout"):
            async with database.read_transaction() as conn:
                await conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        await database.dispose()
    # Another client on the same (only) server connection: the server's default.
    other = await asyncpg.connect(asyncpg_dsn(url), statement_cache_size=0)
    try:
        assert await other.fetchval("SHOW statement_timeout") == "0"
    finally:
        await other.close()


def test_a_transaction_pooler_needs_a_listener_url_of_its_own() -> None:
    with pytest.raises(ValueError, match="GQL_WALLET_LISTEN_DATABASE_URL"):
        Settings(database_url="postgresql://h/db", db_transaction_pooler=True)
    settings = Settings(
        database_url="postgresql://pool:6432/db",
        db_transaction_pooler=True,
        listen_database_url="postgresql://db:5432/db",
    )
    assert settings.listen_url == "postgresql://db:5432/db"
