"""Webhooks across real server processes: every process delivers, no attempt is sent twice,
and kill -9 at any moment loses no event of a committed change (and makes none for a change
that did not commit). Against a real HTTP receiver on loopback, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import CLI, LiveServer, start_server, stop_server
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
    env = {**SERVER_ENV, "GQL_WALLET_WEBHOOK_DELIVERY_PROCESSES": "2"}
    async with Receiver() as receiver:
        server = start_server(database_url, workers=2, log=tmp_path / "s.log", env=env)
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


def _children(pid: int) -> dict[int, tuple[str, int]]:
    """The child processes of `pid`: their command lines and niceness, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
        if int(fields[1]) == pid:
            found[int(entry.name)] = (command, int(fields[16]))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_serve_delivers_from_a_niced_process_that_ends_with_it(
    database_url: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        server = start_server(database_url, workers=2, log=tmp_path / "s.log", env=SERVER_ENV)
        try:
            children = _children(server.process.pid)
            deliverers = {p: nice for p, (c, nice) in children.items() if "webhooks deliver" in c}
            servers = {p: nice for p, (c, nice) in children.items() if "webhooks deliver" not in c}
            assert list(deliverers.values()) == [19], children
            assert set(servers.values()) == {0}, children
            # And scheduled on CPU time no other process wants.
            assert [os.sched_getscheduler(p) for p in deliverers] == [os.SCHED_IDLE]
            assert {os.sched_getscheduler(p) for p in servers} == {os.SCHED_OTHER}
            key = server.new_key("acme")
            await _endpoint(server, key, receiver.url("/ok"))
            assert len(await _burst(server.url, key, "n", 5, 1)) == 5
            await _delivered_everything(receiver, database_url, 20)
            # A delivery process that dies is replaced, and the next writes are delivered.
            [first] = deliverers
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                found = [
                    p for p, (c, _n) in _children(server.process.pid).items()
                    if "webhooks deliver" in c and p != first and _alive(p)
                ]  # fmt: skip
                if found:
                    break
                await asyncio.sleep(0.2)
            [deliverer] = found
            assert len(await _burst(server.url, key, "m", 5, 1)) == 5
            await _delivered_everything(receiver, database_url, 20)
            # serve killed alone (no SIGTERM to pass on): its delivery process still ends.
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
            deadline = time.monotonic() + 10
            while _alive(deliverer) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not _alive(deliverer)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
        log = (tmp_path / "s.log").read_text()
        assert "Traceback" not in log, log[-3000:]


def _oldest_pending(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    [line] = [x for x in text.splitlines() if x.startswith("gql_wallet_webhook_oldest_pending")]
    return float(line.split()[-1])


async def test_delivery_elsewhere(database_url: str, tmp_path: Path) -> None:
    """With GQL_WALLET_WEBHOOK_DELIVERY=none serve sends nothing (and its processes report what
    waits); `gql-wallet webhooks deliver`, run on its own, sends it and stops on SIGTERM."""
    env = {**SERVER_ENV, "GQL_WALLET_WEBHOOK_DELIVERY": "none"}
    async with Receiver() as receiver:
        server = start_server(database_url, workers=1, log=tmp_path / "s.log", env=env)
        try:
            assert not any(
                "webhooks deliver" in c for c, _ in _children(server.process.pid).values()
            )
            key = server.new_key("acme")
            await _endpoint(server, key, receiver.url("/ok"))
            assert len(await _burst(server.url, key, "e", 3, 1)) == 3
            # The server processes watch the oldest pending event while nobody delivers it.
            deadline = time.monotonic() + 20
            while (age := _oldest_pending(server)) < 1.0 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert age >= 1.0, age
            assert receiver.requests == []
            with (tmp_path / "d.log").open("ab") as out:
                deliverer = subprocess.Popen(
                    [CLI, "webhooks", "deliver"],
                    env={**os.environ, "GQL_WALLET_DATABASE_URL": database_url, **SERVER_ENV},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                await _delivered_everything(receiver, database_url, 20)
            finally:
                deliverer.terminate()
                assert deliverer.wait(timeout=20) == 0
        finally:
            stop_server(server)
        assert "Traceback" not in (tmp_path / "d.log").read_text()
