"""Live balances: walletUpdated over graphql-transport-ws, on real server processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from gql_wallet import ledger, repository
from gql_wallet.auth import Authenticator
from gql_wallet.db import Database, create_database
from gql_wallet.feed import Subscriber, WalletChange
from gql_wallet.repository import TransactionRecord, WalletRecord
from gql_wallet.settings import Settings
from tests.conftest import (
    CHARGE,
    NODE_CLIENT,
    TOP_UP,
    WITH_PGBOUNCER,
    LiveServer,
    advisory_locks,
    database_of_kind,
    start_server,
    stop_server,
)
from tests.wsclient import SUBSCRIBE, Socket, connect

NO_LIMITS = {"GQL_WALLET_RATE_LIMIT_API_KEY": "", "GQL_WALLET_RATE_LIMIT_CUSTOMER_SESSION": ""}


def workers_for(database_url: str) -> int:
    # On SQLite, subscribers hear of the changes made through their own process; PostgreSQL
    # carries them across processes (LISTEN/NOTIFY), so it runs with two.
    return 1 if database_url.startswith("sqlite") else 2


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(database_url, workers_for(database_url), tmp_path / "server.log", NO_LIMITS)
    try:
        yield live
    finally:
        stop_server(live)


async def write(
    client: httpx.AsyncClient,
    key: str,
    query: str,
    customer: str,
    amount: int,
    idem: str,
    currency: str = "usd",
    **extra: Any,
) -> dict:
    """The payload of a topUpWallet/chargeWallet `query`; `extra` adds input fields."""
    response = await client.post(
        "/graphql",
        json={
            "query": query,
            "variables": {
                "input": {
                    "customerId": customer,
                    "currency": currency,
                    "amount": amount,
                    "idempotencyKey": idem,
                    **extra,
                }
            },
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    data = response.json().get("data")
    assert data is not None, response.text
    return dict(next(iter(data.values())))


async def session_token(client: httpx.AsyncClient, key: str, customer: str) -> str:
    response = await client.post(
        "/graphql",
        json={
            "query": f'mutation {{ createCustomerSession(input: {{customerId: "{customer}"}}) {{ token }} }}'
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    return str(response.json()["data"]["createCustomerSession"]["token"])


@WITH_PGBOUNCER
async def test_gql_client_gets_current_state_then_every_change(server: LiveServer) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        transport = WebsocketsTransport(
            url=server.url.replace("http", "ws") + "/graphql",
            init_payload={"Authorization": f"Bearer {key}"},
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        )
        async with Client(transport=transport) as session:
            request = gql(SUBSCRIBE)
            request.variable_values = {"c": "cus_1", "cur": "USD"}
            events = session.subscribe(request)
            first = await anext(events)
            assert first["walletUpdated"]["transaction"] is None
            assert first["walletUpdated"]["wallet"]["balance"] == 100
            await write(client, key, TOP_UP, "cus_1", 50, "t1")
            await write(client, key, CHARGE, "cus_1", 30, "c1")
            await write(client, key, TOP_UP, "cus_1", 5, "t-eur", currency="eur")  # filtered out
            second, third = await anext(events), await anext(events)
    assert [
        (e["walletUpdated"]["wallet"]["balance"], e["walletUpdated"]["transaction"]["amount"])
        for e in (second, third)
    ] == [(150, 50), (120, -30)]
    assert third["walletUpdated"]["transaction"]["idempotencyKey"] == "c1"
    assert (
        third["walletUpdated"]["wallet"]["modifiedAt"]
        == third["walletUpdated"]["transaction"]["createdAt"]
    )


async def test_a_new_wallet_appears_on_its_first_top_up(server: LiveServer) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client, connect(server.url, key) as ws:
        await ws.subscribe("cus_new")
        await asyncio.sleep(0.3)  # nothing to send yet: the customer has no wallet
        await write(client, key, TOP_UP, "cus_new", 70, "t1")
        update = await asyncio.wait_for(ws.update(), 10)
    assert update["wallet"]["balance"] == 70 and update["transaction"]["amount"] == 70


async def test_refused_and_replayed_writes_send_nothing(server: LiveServer) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 10, "seed")
        async with connect(server.url, key) as ws:
            await ws.subscribe("cus_1")
            assert (await ws.update())["transaction"] is None
            await write(client, key, CHARGE, "cus_1", 999, "too-much")  # INSUFFICIENT_FUNDS
            await write(client, key, TOP_UP, "cus_1", 10, "seed")  # a replay
            await write(client, key, TOP_UP, "cus_1", 1, "real")
            update = await asyncio.wait_for(ws.update(), 10)
    assert update["transaction"]["idempotencyKey"] == "real" and update["wallet"]["balance"] == 11


async def test_customer_tokens_watch_only_their_customer(server: LiveServer) -> None:
    key = server.new_key("acme")
    other_org = server.new_key("other")
    async with httpx.AsyncClient(base_url=server.url) as client:
        for customer in ("cus_1", "cus_2"):
            await write(client, key, TOP_UP, customer, 100, f"seed-{customer}")
        await write(client, other_org, TOP_UP, "cus_1", 100, "seed-other")
        token = await session_token(client, key, "cus_1")
        async with (
            connect(server.url, token) as mine,
            connect(server.url, token) as theirs,
            connect(server.url, other_org) as foreign,
        ):
            await mine.subscribe("cus_1")
            await theirs.subscribe("cus_2")  # not its customer: behaves like a missing one
            await foreign.subscribe("cus_1")  # another organization's cus_1 is another customer
            assert (await mine.update())["wallet"]["balance"] == 100
            assert (await foreign.update())["wallet"]["balance"] == 100
            await write(client, key, CHARGE, "cus_2", 1, "c2")
            await write(client, key, CHARGE, "cus_1", 1, "c1")
            assert (await asyncio.wait_for(mine.update(), 10))["transaction"][
                "idempotencyKey"
            ] == "c1"
            for ws in (theirs, foreign):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.receive(), 1.0)


@pytest.mark.parametrize("payload", [{}, {"Authorization": "Bearer gqlw_sk_nope"}, {"token": 5}])
async def test_connection_init_needs_a_valid_token(server: LiveServer, payload: dict) -> None:
    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_the_token_may_also_be_sent_as_token(server: LiveServer) -> None:
    key = server.new_key("acme")
    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": key}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"


async def test_foreign_browser_origins_are_refused(server: LiveServer) -> None:
    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            ws_url, subprotocols=["graphql-transport-ws"], origin="https://evil.example"
        ):
            pass
    async with websockets.connect(
        ws_url, subprotocols=["graphql-transport-ws"], origin="http://localhost:3000"
    ):
        pass  # localhost is allowed in development


async def test_subscriptions_per_connection_are_bounded(database_url: str, tmp_path: Path) -> None:
    env = {**NO_LIMITS, "GQL_WALLET_SUBSCRIPTION_MAX_PER_CONNECTION": "2"}
    live = start_server(database_url, 1, tmp_path / "server.log", env)
    try:
        key = live.new_key("acme")
        async with connect(live.url, key) as ws:
            await ws.subscribe("a")
            await ws.subscribe("b")
            await ws.subscribe("c")
            message = await asyncio.wait_for(ws.receive(), 5)
        assert message["type"] == "error" and message["id"] == "3"
    finally:
        stop_server(live)


async def test_connections_per_process_are_bounded(database_url: str, tmp_path: Path) -> None:
    env = {**NO_LIMITS, "GQL_WALLET_SUBSCRIPTION_MAX_CONNECTIONS": "2"}
    live = start_server(database_url, 1, tmp_path / "server.log", env)
    try:
        key = live.new_key("acme")
        async with connect(live.url, key), connect(live.url, key):
            with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)):
                async with connect(live.url, key):
                    pass
        async with connect(live.url, key):  # room again once the others closed
            pass
    finally:
        stop_server(live)


async def test_200_subscribers_get_every_event_of_a_1000_charge_burst_in_order(
    postgres_url: str, tmp_path: Path
) -> None:
    # On PostgreSQL with two processes: subscribers and writers spread over both, so events
    # cross processes too. (The same fan-out on SQLite is covered by the tests above.)
    server = start_server(postgres_url, 2, tmp_path / "server.log", NO_LIMITS)
    try:
        await burst(server, subscribers=200, charges=1000)
    finally:
        stop_server(server)


async def burst(server: LiveServer, subscribers: int, charges: int) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(
        base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=40)
    ) as client:
        await write(client, key, TOP_UP, "cus_1", charges, "seed")
        received: list[list[dict]] = [[] for _ in range(subscribers)]
        ready = asyncio.Semaphore(0)

        async def subscriber(index: int) -> None:
            async with connect(server.url, key, max_queue=None) as ws:
                await ws.subscribe("cus_1")
                initial = await ws.update()
                assert initial["wallet"]["balance"] == charges
                ready.release()
                while not received[index] or received[index][-1]["wallet"]["balance"] > 0:
                    received[index].append(await ws.update())

        tasks = [asyncio.create_task(subscriber(i)) for i in range(subscribers)]
        for _ in range(subscribers):
            await asyncio.wait_for(ready.acquire(), 60)

        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(charges):
            queue.put_nowait(i)

        async def charger() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                assert (await write(client, key, CHARGE, "cus_1", 1, f"burst-{i}"))[
                    "userErrors"
                ] == []

        await asyncio.gather(*[charger() for _ in range(32)])
        await asyncio.wait_for(asyncio.gather(*tasks), 120)

    for events in received:
        assert [e["wallet"]["balance"] for e in events] == list(range(charges - 1, -1, -1))
        assert [e["transaction"]["balanceAfter"] for e in events] == list(
            range(charges - 1, -1, -1)
        )
        assert len({e["transaction"]["id"] for e in events}) == charges


@pytest.fixture(params=["postgresql", "pgbouncer"])
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """PostgreSQL, directly and through PgBouncer in transaction mode (LISTEN on the direct
    URL, GQL_WALLET_LISTEN_DATABASE_URL)."""
    with database_of_kind(request, request.param, tmp_path) as url:
        yield url


async def test_a_write_through_one_process_reaches_a_subscriber_on_another(
    postgres_url: str, tmp_path: Path
) -> None:
    a = start_server(postgres_url, 1, tmp_path / "a.log", NO_LIMITS)
    b = start_server(postgres_url, 1, tmp_path / "b.log", NO_LIMITS)
    try:
        key = a.new_key("acme")
        async with httpx.AsyncClient(base_url=a.url) as client_a, connect(b.url, key) as ws_b:
            await write(client_a, key, TOP_UP, "cus_1", 10, "seed")
            await ws_b.subscribe("cus_1")
            first = await asyncio.wait_for(ws_b.update(), 10)
            await write(client_a, key, CHARGE, "cus_1", 4, "through-a")
            second = await asyncio.wait_for(ws_b.update(), 10)
        assert first["wallet"]["balance"] == 10 and first["transaction"] is None
        assert (
            second["transaction"]["idempotencyKey"] == "through-a"
            and second["wallet"]["balance"] == 6
        )
    finally:
        stop_server(a)
        stop_server(b)


async def _listening_backends(database_url: str) -> int:
    """Server sessions of this database that LISTEN for ledger changes: each holds the
    listening lock of migration 0004 while it does."""
    locks = await advisory_locks(database_url, repository.FEED_LISTENING_LOCK)
    return sum(granted for _mode, granted in locks)


async def test_a_process_listens_only_from_its_first_subscription(
    postgres_url: str, tmp_path: Path
) -> None:
    """A process with no subscriber has no LISTEN connection, so it is sent no notifications
    (and while no process listens, writes send none); its first subscription starts listening
    before it reads."""
    a = start_server(postgres_url, 1, tmp_path / "a.log", NO_LIMITS)
    b = start_server(postgres_url, 1, tmp_path / "b.log", NO_LIMITS)
    try:
        key = a.new_key("acme")
        async with httpx.AsyncClient(base_url=a.url) as client_a:
            await write(client_a, key, TOP_UP, "cus_1", 10, "before")
            assert await _listening_backends(postgres_url) == 0
            async with connect(b.url, key) as ws_b:
                await ws_b.subscribe("cus_1")
                first = await asyncio.wait_for(ws_b.update(), 10)
                assert await _listening_backends(postgres_url) == 1
                await write(client_a, key, TOP_UP, "cus_1", 5, "after")
                second = await asyncio.wait_for(ws_b.update(), 10)
        assert first["wallet"]["balance"] == 10 and first["transaction"] is None
        assert second["transaction"]["idempotencyKey"] == "after"
        assert second["wallet"]["balance"] == 15
    finally:
        stop_server(a)
        stop_server(b)


async def test_the_npm_graphql_ws_client_receives_updates(server: LiveServer, node: str) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        process = await asyncio.create_subprocess_exec(
            node,
            str(NODE_CLIENT / "subscribe.mjs"),
            server.url.replace("http", "ws") + "/graphql",
            key,
            "cus_1",
            "3",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
        assert first["wallet"]["balance"] == 100 and first["transaction"] is None
        await write(client, key, CHARGE, "cus_1", 10, "c1")
        await write(client, key, TOP_UP, "cus_1", 5, "t1")
        updates = [
            json.loads(await asyncio.wait_for(process.stdout.readline(), 20)) for _ in range(2)
        ]
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert [(u["wallet"]["balance"], u["transaction"]["idempotencyKey"]) for u in updates] == [
        (90, "c1"),
        (95, "t1"),
    ]


async def test_a_slow_consumer_is_closed_with_a_clear_code(sqlite_url: str, tmp_path: Path) -> None:
    env = {**NO_LIMITS, "GQL_WALLET_SUBSCRIPTION_QUEUE_SIZE": "3"}
    live = start_server(sqlite_url, 1, tmp_path / "server.log", env)
    try:
        key = live.new_key("acme")
        async with httpx.AsyncClient(base_url=live.url) as client:
            await write(client, key, TOP_UP, "cus_1", 100, "seed")
            async with connect(live.url, key) as ws:
                await ws.subscribe("cus_1")
                assert (await ws.update())["transaction"] is None
                # Ten commits the server hears of only with the next one (written by another
                # process on SQLite): it then reads eleven entries at once, more than fit.
                database = create_database(Settings(database_url=sqlite_url))
                organization = await organization_of(database, key)
                for i in range(10):
                    await ledger.top_up(
                        database,
                        organization,
                        ledger.BalanceChange("cus_1", "usd", 1, f"direct-{i}"),
                    )
                await database.dispose()
                await write(client, key, TOP_UP, "cus_1", 1, "wake")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(drain(ws), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        assert "Slow consumer" in closed.value.rcvd.reason
    finally:
        stop_server(live)


async def drain(ws: Socket) -> None:
    while True:
        await ws.receive()


async def organization_of(database: Database, key: str) -> uuid.UUID:
    principal = await Authenticator(database, Settings().token_secret_bytes).authenticate(
        key, repository.now_utc()
    )
    assert principal is not None
    return principal.organization_id


def test_a_subscriber_queue_is_bounded() -> None:
    subscriber = Subscriber(currency=None, capacity=2)
    wallet = WalletRecord(
        1,
        uuid.uuid4(),
        uuid.uuid4(),
        "c",
        "usd",
        0,
        repository.now_utc(),
        repository.now_utc(),
        0,
        False,
    )
    for seq in range(1, 10):
        entry = TransactionRecord(
            seq,
            uuid.uuid4(),
            1,
            "TOP_UP",
            1,
            seq,
            None,
            None,
            f"k{seq}",
            repository.now_utc(),
            None,
            0,
            "{}",
        )
        subscriber.offer(WalletChange(wallet, entry, (seq, entry.created_at)))
    assert subscriber.queue.qsize() == 3  # two changes and the marker that ends the reader
    assert subscriber.overflowed
