"""Webhooks across real server processes: every process delivers, no attempt is sent twice,
and kill -9 at any moment loses no event of a committed change (and makes none for a change
that did not commit). Against a real HTTP receiver on loopback, on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer, start_server, stop_server
from tests.test_credits_races import assert_verified, ledger_rows
from tests.webhook_receiver import Receiver

SERVER_ENV = {
    "GQL_WALLET_WEBHOOKS_ALLOW_LOOPBACK_HTTP": "true",
    "GQL_WALLET_WEBHOOK_RETRY_DELAYS": "0.2,0.2,0.5,1,1,1,1,1",
    "GQL_WALLET_WEBHOOK_TIMEOUT_SECONDS": "2",
    "GQL_WALLET_WEBHOOK_POLL_SECONDS": "0.05",
}
CREATE = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) {
  endpoint { id } secret userErrors { code } } }"""
TOP_UP = """mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) {
  transaction { id } userErrors { code } } }"""


async def _post(client: httpx.AsyncClient, key: str, query: str, variables: Any) -> Any:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
    )
    response.raise_for_status()
    return response.json()["data"]


async def _endpoint(server: LiveServer, key: str, url: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        made = await _post(
            client, key, CREATE, {"i": {"url": url, "events": ["wallet.transaction.created"]}}
        )
    assert made["createWebhookEndpoint"]["userErrors"] == []


async def _burst(
    server_url: str, key: str, prefix: str, count: int, clients: int, done: set[str] | None = None
) -> set[str]:
    """`count` top-ups from `clients` clients; the keys acknowledged (others may have been
    cut off by a kill), added to `done` as they are."""
    done = set() if done is None else done

    async def client_loop(c: int) -> None:
        async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
            for n in range(c, count, clients):
                key_ = f"{prefix}-{n}"
                try:
                    data = await _post(
                        client, key, TOP_UP,
                        {"i": {"customerId": f"cus_{n % 7}", "currency": "usd", "amount": 3,
                               "idempotencyKey": key_}},
                    )  # fmt: skip
                except (httpx.HTTPError, ValueError):
                    continue
                if data["topUpWallet"]["transaction"] is not None:
                    done.add(key_)

    await asyncio.gather(*(client_loop(c) for c in range(clients)))
    return done


async def _delivered_everything(receiver: Receiver, database_url: str, seconds: float) -> set[str]:
    """Until every entry of the ledger has reached the receiver; the entry IDs."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await ledger_rows(database_url, "SELECT id FROM wallet_transactions")
        committed = {str(row.id).replace("-", "") for row in rows}
        seen = {
            json.loads(r.body)["data"]["transaction"]["id"].replace("-", "")
            for r in receiver.answered("/ok")
        }
        if committed <= seen or time.monotonic() > deadline:
            assert committed <= seen, f"{len(committed - seen)} committed entries not delivered"
            assert seen <= committed, "an event for an entry that never committed"
            return committed
        await asyncio.sleep(0.2)


async def test_two_processes_deliver_no_attempt_twice(database_url: str, tmp_path: Path) -> None:
    async with Receiver() as receiver:
        server = start_server(database_url, workers=2, log=tmp_path / "s.log", env=SERVER_ENV)
        try:
            key = server.new_key("acme")
            await _endpoint(server, key, receiver.url("/ok"))
            acknowledged = await _burst(server.url, key, "t", 200, 16)
            assert len(acknowledged) == 200
            committed = await _delivered_everything(receiver, database_url, 30)
            assert len(committed) == 200
            tries = Counter(r.headers["webhook-id"] for r in receiver.requests)
            assert set(tries.values()) == {1}, "an attempt was sent twice"
            # Both processes took part.
            agents = await ledger_rows(
                database_url, "SELECT count(*) AS n, max(attempts) AS most FROM webhook_deliveries"
            )
            assert (agents[0].n, agents[0].most) == (200, 1)
        finally:
            stop_server(server)
        log = (tmp_path / "s.log").read_text()
        assert "Traceback" not in log, log[-3000:]


async def test_kill_9_during_a_burst_loses_no_event(database_url: str, tmp_path: Path) -> None:
    rng = random.Random(19)
    log = tmp_path / "s.log"
    async with Receiver() as receiver:
        server = start_server(database_url, workers=2, log=log, env=SERVER_ENV)
        try:
            key = server.new_key("acme")
            await _endpoint(server, key, receiver.url("/ok"))
            acknowledged: set[str] = set()
            for cycle in range(3):
                burst = asyncio.create_task(
                    _burst(server.url, key, f"c{cycle}", 400, 12, acknowledged)
                )
                # Into the burst (some writes acknowledged, however slow the machine), then a
                # random moment more.
                deadline = time.monotonic() + 30
                while len(acknowledged) < 20 * (cycle + 1) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait(timeout=30)
                await burst
                server = start_server(database_url, workers=2, log=log, env=SERVER_ENV)
            # The lease of an attempt cut off by a kill ends after twice the timeout (4 s).
            committed = await _delivered_everything(receiver, database_url, 60)
            assert len(committed) >= len(acknowledged) >= 60
        finally:
            stop_server(server)
    assert_verified(database_url)
