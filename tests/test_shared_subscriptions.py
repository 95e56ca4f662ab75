"""walletUpdated: identical subscriptions share one execution per event (graphql/fanout.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gql_wallet import ledger, repository
from gql_wallet.auth import Authenticator, Principal
from gql_wallet.db import Database, create_database
from gql_wallet.feed import LedgerFeed, SlowConsumer, WalletChange
from gql_wallet.graphql.fanout import Delivery, GroupFailed, GroupKey, SharedSubscriptions
from gql_wallet.graphql.schema import build_schema
from gql_wallet.graphql.subscriptions import wallet_update
from gql_wallet.settings import Settings
from tests.conftest import CHARGE, TOP_UP, LiveServer, cli, start_server, stop_server
from tests.test_operability import metric
from tests.test_subscriptions import NO_LIMITS, session_token, write
from tests.wsclient import SUBSCRIBE, Socket, connect

BALANCE_ONLY = (
    """subscription($c: String!) { walletUpdated(customerId: $c) { wallet { balance } } }"""
)
EXECUTIONS = "gql_wallet_subscription_executions_total"
GROUPS = "gql_wallet_subscription_groups"


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    # One process, so that every subscription below is in it and its metrics count them all.
    live = start_server(database_url, 1, tmp_path / "server.log", NO_LIMITS)
    try:
        yield live
    finally:
        stop_server(live)


async def metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def wait_for_groups(client: httpx.AsyncClient, expected: int) -> None:
    """The groups gauge reaches `expected` (members leave asynchronously after a complete)."""
    for _ in range(100):
        if metric(await metrics(client), GROUPS) == expected:
            return
        await asyncio.sleep(0.05)
    assert metric(await metrics(client), GROUPS) == expected


async def next_messages(ws: Socket, count: int) -> list[dict[str, Any]]:
    messages = [await asyncio.wait_for(ws.receive(), 10) for _ in range(count)]
    assert all(m["type"] == "next" for m in messages), messages
    return messages


async def assert_silent(*sockets: Socket) -> None:
    for ws in sockets:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 1.0)


async def test_identical_subscriptions_share_one_execution_per_event(server: LiveServer) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        async with (
            connect(server.url, key) as twice,
            connect(server.url, key) as a,
            connect(server.url, key) as b,
            connect(server.url, key) as c,
        ):
            ops = {twice: [await twice.subscribe("cus_1"), await twice.subscribe("cus_1")]}
            for ws in (a, b, c):
                ops[ws] = [await ws.subscribe("cus_1")]
            for ws, ids in ops.items():
                initial = await next_messages(ws, len(ids))
                assert sorted(m["id"] for m in initial) == ids
                assert all(
                    m["payload"]["data"]["walletUpdated"]["transaction"] is None for m in initial
                )
            before = await metrics(client)
            assert metric(before, GROUPS) == 1

            await write(client, key, CHARGE, "cus_1", 1, "c1")
            await write(client, key, TOP_UP, "cus_1", 5, "t1")
            await write(client, key, CHARGE, "cus_1", 2, "c2")

            received: dict[str, list[dict[str, Any]]] = {}
            for ws, ids in ops.items():
                for message in await next_messages(ws, 3 * len(ids)):
                    received.setdefault(f"{id(ws)}/{message['id']}", []).append(message["payload"])
            executions = metric(await metrics(client), EXECUTIONS) - metric(before, EXECUTIONS)

    assert len(received) == 5
    payloads = list(received.values())
    assert all(p == payloads[0] for p in payloads)  # the very same result for every member
    events = [p["data"]["walletUpdated"] for p in payloads[0]]
    assert [(e["wallet"]["balance"], e["transaction"]["idempotencyKey"]) for e in events] == [
        (99, "c1"),
        (104, "t1"),
        (102, "c2"),
    ]
    assert executions == 3  # one per event, not one per event and subscription


async def test_subscriptions_with_other_inputs_are_executed_apart(server: LiveServer) -> None:
    key = server.new_key("acme")
    other_org = server.new_key("other")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        await write(client, other_org, TOP_UP, "cus_1", 7, "seed")
        token = await session_token(client, key, "cus_1")
        async with (
            connect(server.url, key) as everything,
            connect(server.url, key) as balance_only,
            connect(server.url, key) as euros,
            connect(server.url, key) as dollars,
            connect(server.url, token) as customer,
            connect(server.url, other_org) as foreign,
        ):
            await everything.subscribe("cus_1")
            await balance_only.subscribe("cus_1", query=BALANCE_ONLY)
            await euros.subscribe("cus_1", currency="eur")  # no euro wallet: no initial event
            await dollars.subscribe("cus_1", currency="USD")
            await customer.subscribe("cus_1")
            await foreign.subscribe("cus_1")
            for ws in (everything, balance_only, dollars, customer, foreign):
                await next_messages(ws, 1)
            before = await metrics(client)
            assert metric(before, GROUPS) == 6

            await write(client, key, CHARGE, "cus_1", 1, "c1")
            mine = {
                ws: (await next_messages(ws, 1))[0]["payload"]["data"]["walletUpdated"]
                for ws in (everything, balance_only, dollars, customer)
            }
            await assert_silent(euros, foreign)
            await write(client, other_org, CHARGE, "cus_1", 2, "c1")
            theirs = (await next_messages(foreign, 1))[0]["payload"]["data"]["walletUpdated"]
            await assert_silent(everything, balance_only, euros, dollars, customer)
            executions = metric(await metrics(client), EXECUTIONS) - metric(before, EXECUTIONS)

    assert mine[balance_only] == {"wallet": {"balance": 99}}
    for ws in (everything, dollars, customer):
        assert mine[ws]["wallet"]["balance"] == 99
        assert mine[ws]["transaction"]["idempotencyKey"] == "c1"
    assert mine[everything] == mine[dollars] == mine[customer]
    assert theirs["wallet"]["balance"] == 5 and theirs["transaction"]["amount"] == -2
    assert theirs["wallet"]["id"] != mine[everything]["wallet"]["id"]
    assert executions == 5  # four groups saw acme's change, one the other organization's


async def test_a_group_goes_when_its_last_member_leaves(server: LiveServer) -> None:
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        async with connect(server.url, key) as stays:
            first, second = await stays.subscribe("cus_1"), await stays.subscribe("cus_1")
            await next_messages(stays, 2)
            async with connect(server.url, key) as leaves:
                await leaves.subscribe("cus_1")
                await next_messages(leaves, 1)
                await wait_for_groups(client, 1)
            # One member disconnected, another completed: the rest of the group still receives.
            await stays.complete(first)
            await write(client, key, CHARGE, "cus_1", 1, "c1")
            [message] = await next_messages(stays, 1)
            assert message["id"] == second
            assert message["payload"]["data"]["walletUpdated"]["wallet"]["balance"] == 99
            await assert_silent(stays)
            await wait_for_groups(client, 1)

            await stays.complete(second)
            await wait_for_groups(client, 0)

            # A new subscription starts a new group, which follows the ledger from its snapshot.
            again = await stays.subscribe("cus_1")
            assert (await next_messages(stays, 1))[0]["payload"]["data"]["walletUpdated"]["wallet"][
                "balance"
            ] == 99
            await write(client, key, CHARGE, "cus_1", 1, "c2")
            [message] = await next_messages(stays, 1)
            assert message["id"] == again
            assert (
                message["payload"]["data"]["walletUpdated"]["transaction"]["idempotencyKey"] == "c2"
            )
            await wait_for_groups(client, 1)
        await wait_for_groups(client, 0)  # the connection closed


async def test_errors_of_a_shared_execution_are_those_of_a_single_one(server: LiveServer) -> None:
    query = """subscription($c: String!) { walletUpdated(customerId: $c) {
      wallet { balance transactions(first: 500) { edges { node { amount } } } } } }"""
    key = server.new_key("acme")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await write(client, key, TOP_UP, "cus_1", 100, "seed")
        async with connect(server.url, key) as a, connect(server.url, key) as b:
            await a.subscribe("cus_1", query=query)
            await b.subscribe("cus_1", query=query)
            # The current state is executed for each subscription on its own...
            [initial] = await next_messages(a, 1)
            await next_messages(b, 1)
            await write(client, key, CHARGE, "cus_1", 1, "c1")
            # ...an event once for both, and the result is the same.
            shared = [(await next_messages(ws, 1))[0]["payload"] for ws in (a, b)]
    assert initial["payload"]["errors"][0]["message"] == "first must be between 1 and 100."
    assert shared == [initial["payload"], initial["payload"]]


@contextlib.asynccontextmanager
async def in_process(
    database_url: str, query: str = SUBSCRIBE, **settings: Any
) -> AsyncIterator[InProcess]:
    """The shared subscriptions of one process, without a server around them; one query."""
    config = Settings(database_url=database_url, **settings)
    token = cli(database_url, "api-keys", "create", "--organization", "acme").stdout.split()[-1]
    database = create_database(config)
    feed = LedgerFeed(database, config)
    shared = SharedSubscriptions(build_schema(config), database, config, feed)
    try:
        principal = await Authenticator(database, config.token_secret_bytes).authenticate(
            token, repository.now_utc()
        )
        assert principal is not None

        async def never_sent(_payload: str) -> None:
            raise AssertionError

        variables = {"c": "cus_1"}
        delivery = Delivery(query, None, variables, never_sent, shared)
        yield InProcess(
            database, feed, shared, principal, GroupKey.of(delivery, principal, "cus_1", None)
        )
    finally:
        await shared.stop()
        await feed.stop()
        await database.dispose()


@dataclass
class InProcess:
    database: Database
    feed: LedgerFeed
    shared: SharedSubscriptions
    principal: Principal
    key: GroupKey

    def join(self, root: Callable[[WalletChange], object] = wallet_update) -> Any:
        return self.shared.join(self.key, self.principal, {"c": "cus_1"}, root)

    async def charge(self, amount: int, idempotency_key: str) -> None:
        organization = self.principal.organization_id
        result = await ledger.charge(
            self.database,
            organization,
            ledger.BalanceChange("cus_1", "usd", amount, idempotency_key),
        )
        assert result.wallet is not None
        self.feed.wake(organization, "cus_1", result.wallet.seq)


async def test_a_slow_member_overflows_alone(database_url: str) -> None:
    # In process, where a member that does not read is simple to arrange: the group hands each
    # event to every member without waiting, so the reader keeps up while the other overflows.
    async with in_process(database_url, subscription_queue_size=3) as env:
        await ledger.top_up(
            env.database,
            env.principal.organization_id,
            ledger.BalanceChange("cus_1", "usd", 100, "s"),
        )
        async with env.join() as slow, env.join() as reader:
            group = env.shared.groups[env.key]
            assert group.members == {slow, reader}
            for i in range(5):
                await env.charge(1, f"c{i}")
                event = json.loads(await asyncio.wait_for(reader.next(), 10))
                assert event["data"]["walletUpdated"]["wallet"]["balance"] == 99 - i
            assert slow.overflowed and not reader.overflowed
            with pytest.raises(SlowConsumer):
                await slow.next()
            assert env.shared.groups == {env.key: group}  # the others' group goes on
        assert env.shared.groups == {}
        assert group.task is not None
        await asyncio.wait([group.task])
        assert env.feed.watchers == {}


async def test_an_unexpected_error_in_a_shared_execution_is_masked(database_url: str) -> None:
    def pointing_nowhere(change: WalletChange) -> object:
        update = wallet_update(change)
        record: Any = update.transaction  # a TransactionRecord (WalletTransaction.from_record)
        assert record is not None
        update.transaction = record._replace(wallet_seq=-1)  # its wallet cannot be loaded
        return update

    query = """subscription($c: String!) { walletUpdated(customerId: $c) {
      transaction { amount wallet { balance } } } }"""
    async with in_process(database_url, query) as env:
        await ledger.top_up(
            env.database,
            env.principal.organization_id,
            ledger.BalanceChange("cus_1", "usd", 100, "s"),
        )
        async with env.join(pointing_nowhere) as member:
            await env.charge(1, "c1")
            payload = await asyncio.wait_for(member.next(), 10)
    [error] = json.loads(payload)["errors"]
    assert error["message"] == "Internal server error."
    assert error["path"] == ["walletUpdated", "transaction", "wallet"]
    assert json.loads(payload)["data"] == {"walletUpdated": {"transaction": None}}


async def test_a_group_that_fails_ends_its_members_and_a_new_one_starts(database_url: str) -> None:
    def broken(_change: WalletChange) -> object:
        raise RuntimeError("cannot build the event")

    async with in_process(database_url) as env:
        await ledger.top_up(
            env.database,
            env.principal.organization_id,
            ledger.BalanceChange("cus_1", "usd", 100, "s"),
        )
        async with env.join(broken) as a, env.join(broken) as b:
            await env.charge(1, "c1")
            for member in (a, b):
                with pytest.raises(GroupFailed):
                    await asyncio.wait_for(member.next(), 10)
            assert env.shared.groups == {}  # nobody joins the failed group any more
            async with env.join() as fresh:
                await env.charge(1, "c2")
                event = json.loads(await asyncio.wait_for(fresh.next(), 10))
        assert event["data"]["walletUpdated"]["transaction"]["idempotencyKey"] == "c2"
        assert env.shared.groups == {}


async def test_a_slow_client_gets_4008_while_the_rest_of_its_group_keeps_receiving(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Big events (a page of 100 long ledger entries, about 100 kB each, sent uncompressed) to a
    # client that reads nothing through a small receive buffer: the server's writes to it stall
    # within a few dozen events, its queue of 2 fills, and it is closed; its group goes on at the
    # pace of the others, which get every event.
    query = """subscription($c: String!) { walletUpdated(customerId: $c) { wallet { balance
      transactions(first: 100) { edges { node { id description reference idempotencyKey } } } } } }"""
    events = 60
    live = start_server(
        sqlite_url,
        1,
        tmp_path / "server.log",
        {**NO_LIMITS, "GQL_WALLET_SUBSCRIPTION_QUEUE_SIZE": "2"},
    )
    try:
        key = live.new_key("acme")
        async with httpx.AsyncClient(base_url=live.url) as client:
            for i in range(100):
                await write_long(client, key, TOP_UP, f"seed-{i}", 1000)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
            sock.setblocking(False)
            async with (
                connect(live.url, key, sock=sock, max_queue=1, compression=None) as slow,
                connect(live.url, key, max_queue=None) as a,
                connect(live.url, key, max_queue=None) as b,
            ):
                for ws in (slow, a, b):
                    await ws.subscribe("cus_1", query=query)
                    await next_messages(ws, 1)
                before = await metrics(client)
                assert metric(before, GROUPS) == 1
                for i in range(events):
                    await write_long(client, key, CHARGE, f"c{i}", 1)
                    for ws in (a, b):
                        [message] = await next_messages(ws, 1)
                        wallet = message["payload"]["data"]["walletUpdated"]["wallet"]
                        assert wallet["balance"] == 100_000 - i - 1
                executions = metric(await metrics(client), EXECUTIONS) - metric(before, EXECUTIONS)
                received, closed = await count_until_closed(slow)
    finally:
        stop_server(live)
    assert closed.rcvd is not None and closed.rcvd.code == 4008
    assert received < events
    assert executions == events


async def count_until_closed(ws: Socket) -> tuple[int, websockets.ConnectionClosed]:
    received = 0
    try:
        while True:
            await asyncio.wait_for(ws.receive(), 10)
            received += 1
    except websockets.ConnectionClosed as closed:
        return received, closed


async def write_long(
    client: httpx.AsyncClient, key: str, mutation: str, idempotency_key: str, amount: int
) -> None:
    """A write whose ledger entry has the longest description, reference and key allowed."""
    key_text = idempotency_key.ljust(255, "k")
    payload = await write(
        client, key, mutation, "cus_1", amount, key_text, description="d" * 500, reference="r" * 255
    )
    assert payload["userErrors"] == [], payload
