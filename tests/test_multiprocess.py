"""Exactness across server processes and across crashes, on SQLite and PostgreSQL.

`gql-wallet serve --workers 3`, 32 concurrent HTTP clients, a mixed load over 10 wallets with
concurrent duplicate retries. Afterwards every balance equals its start plus the acknowledged
operations, every key is applied exactly once, and `gql-wallet verify` passes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text

from gql_wallet.db import create_database
from gql_wallet.settings import Settings
from tests.conftest import WITH_PGBOUNCER, LiveServer, cli, start_server, stop_server
from tests.workload import READ, Op, Record, mixed_ops, run_clients

CUSTOMERS = [f"cus_{i}" for i in range(10)]
WORKERS = 3
CLIENTS = 32


async def seed(server: LiveServer, api_key: str, record: Record) -> None:
    ops = iter([Op("top_up", c, 20_000, f"seed-{c}") for c in CUSTOMERS])
    assert await run_clients(server.url, api_key, ops, record, clients=10) == []


async def assert_exact(server: LiveServer, api_key: str, record: Record) -> None:
    expected = record.expected_balances()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for customer in CUSTOMERS:
            response = await client.post(
                "/graphql",
                json={"query": READ, "variables": {"c": customer}},
                headers={"Authorization": f"Bearer {api_key}"},
            )
            balance = response.json()["data"]["customerWallet"]["balance"]
            assert balance == expected[customer] >= 0, customer

    database = create_database(Settings(database_url=server.database_url))
    try:
        async with database.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT idempotency_key, id, amount FROM wallet_transactions")
                )
            ).all()
    finally:
        await database.dispose()
    applied = {row.idempotency_key: (str(uuid.UUID(str(row.id))), row.amount) for row in rows}
    assert len(applied) == len(rows), "a key was applied more than once"
    succeeded = {
        key: (o.transaction_id, o.delta) for key, o in record.outcomes.items() if o.delta != 0
    }
    assert applied == succeeded, "the ledger differs from the acknowledged operations"
    assert "0 problems" in cli(server.database_url, "verify").stdout


@WITH_PGBOUNCER
async def test_many_processes_stay_exact(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, workers=WORKERS, log=tmp_path / "server.log")
    try:
        api_key = server.new_key("acme")
        record = Record()
        await seed(server, api_key, record)
        started = time.monotonic()
        unacknowledged = await run_clients(
            server.url, api_key, mixed_ops(CUSTOMERS, 5_200, seed=1), record, clients=CLIENTS
        )
        # A request can lose its answer (a connection closing as it is reused); a client retries
        # it with the same key, and the replay tells it the first outcome.
        retried = len(unacknowledged)
        assert retried <= 10
        assert await run_clients(server.url, api_key, iter(unacknowledged), record) == []
        elapsed = time.monotonic() - started
        operations = record.acknowledged_writes + record.reads
        assert operations >= 5_000
        assert record.duplicates_sent >= 300
        refused = sum(1 for o in record.outcomes.values() if o.error)
        assert refused > 0 and len(record.outcomes) - refused > 0  # both outcomes happened
        await assert_exact(server, api_key, record)
        print(
            f"\n[exactness {database_url.split(':')[0]}] {operations} operations "
            f"({record.duplicates_sent} concurrent duplicates, {refused} refused charges, "
            f"{retried} retried) "
            f"from {CLIENTS} clients on {WORKERS} processes in {elapsed:.1f}s"
        )
    finally:
        stop_server(server)


@WITH_PGBOUNCER
async def test_kill_9_loses_no_acknowledged_write_and_applies_none_twice(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    log = tmp_path / "server.log"
    record = Record()
    ops = mixed_ops(CUSTOMERS, 1_000_000, seed=2)
    retry: list[Op] = []
    cycles = 10
    started = time.monotonic()

    server = start_server(database_url, workers=WORKERS, log=log)
    api_key = server.new_key("acme")
    await seed(server, api_key, record)
    for _ in range(cycles):
        stop = asyncio.Event()

        async def kill_soon(victim: LiveServer = server, event: asyncio.Event = stop) -> None:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            os.killpg(victim.process.pid, signal.SIGKILL)
            event.set()

        killer = asyncio.create_task(kill_soon())
        retry = await run_clients(
            server.url, api_key, itertools.chain(retry, ops), record, clients=CLIENTS, stop=stop
        )
        await killer
        server.process.wait(timeout=30)
        server = start_server(database_url, workers=WORKERS, log=log)

    try:
        # The last server gets every write that was never acknowledged, with its original key.
        retried = len(retry)
        assert await run_clients(server.url, api_key, iter(retry), record, clients=CLIENTS) == []
        await assert_exact(server, api_key, record)
        print(
            f"\n[crash {database_url.split(':')[0]}] {cycles} kill -9 cycles of {WORKERS} "
            f"processes, {record.acknowledged_writes} acknowledged writes, {record.reads} reads, "
            f"{retried} retried after the last crash, {time.monotonic() - started:.1f}s"
        )
    finally:
        stop_server(server)
