"""Precompiled customerWallets plans (gql_wallet/graphql/compiled.py) answer exactly like the
general executor: the same documents, sent to an app with plans and to one without, on the same
database, get byte-identical responses; and plans are really used."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from starlette.routing import Route

from gql_wallet import metrics
from gql_wallet.app import create_app
from gql_wallet.auth import create_api_key
from gql_wallet.db import SqliteReader
from gql_wallet.graphql.compiled import compile_plan
from gql_wallet.graphql.http import GraphQLEndpoint
from gql_wallet.settings import Settings
from tests.conftest import Env, changed

PLANS_ON = {"precompiled_lookups": True, "precompiled_writes": True}
PLANS_OFF = {"precompiled_lookups": False, "precompiled_writes": False}
LEAVES = ["id", "createdAt", "modifiedAt", "customerId", "balance", "currency", "__typename"]


@dataclass
class Served:
    client: httpx.AsyncClient
    endpoint: GraphQLEndpoint
    key: str

    async def post(
        self, query: str, variables: Any = None, token: str | None = None, **extra: Any
    ) -> tuple[int, Any]:
        body: dict[str, Any] = {"query": query, **extra}
        if variables is not None:
            body["variables"] = variables
        response = await self.client.post(
            "/graphql", json=body, headers={"Authorization": f"Bearer {token or self.key}"}
        )
        return response.status_code, response.json()


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Served]:
    app = create_app(settings)
    route = next(r for r in app.routes if isinstance(r, Route) and r.path == "/graphql")
    async with app.router.lifespan_context(app):
        key = await create_api_key(app.state.database, settings.token_secret_bytes, "org-a")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Served(client, route.endpoint.__self__, key)  # type: ignore[attr-defined]


@asynccontextmanager
async def both(env: Env) -> AsyncIterator[tuple[Served, Served]]:
    """An app with plans and one without, on env's database (org-a is env.api's organization)."""
    async with (
        served(changed(env.settings, PLANS_ON)) as planned,
        served(changed(env.settings, PLANS_OFF)) as general,
    ):
        assert planned.endpoint.plans.enabled and not general.endpoint.plans.enabled
        yield planned, general


def generated_lookups(count: int) -> list[tuple[str, dict[str, Any] | None]]:
    """customerWallets documents: random scalar selections, aliases, literal or variable."""
    rng = random.Random(7)
    customers = ["cus_1", "cus_2", "nobody", "", 'ü \\" 💶']
    found = []
    for _ in range(count):
        fields = []
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(LEAVES)
            alias = rng.choice([None, None, "a", "b", name])
            fields.append(f"{alias}: {name}" if alias else name)
        root = rng.choice(["customerWallets", "w: customerWallets"])
        customer = rng.choice(customers)
        if rng.random() < 0.5:
            literal = json.dumps(customer, ensure_ascii=rng.random() < 0.5)
            found.append((f"{{ {root}(customerId: {literal}) {{ {' '.join(fields)} }} }}", None))
        else:
            name = rng.choice(["Lookup", ""])
            found.append(
                (
                    f"query {name}($c: String!) {{ {root}(customerId: $c) {{ {' '.join(fields)} }} }}",
                    {"c": customer},
                )
            )
    return found


async def test_generated_lookups_answer_alike_with_and_without_plans(env: Env) -> None:
    await env.api.top_up("cus_1", 1234, "k1")
    await env.api.top_up("cus_1", 99, "k2", currency="eur")
    await env.api.top_up("cus_2", 5, "k3")
    async with both(env) as (planned, general):
        session = await env.customer_session(env.api, "cus_1")
        documents = generated_lookups(120)
        for token in (None, session.key):
            for query, variables in documents:
                for _ in range(2):  # the first answer plans the document, the second uses it
                    expected = await general.post(query, variables, token)
                    assert await planned.post(query, variables, token) == expected, query
        assert planned.endpoint.plans.hits >= 200
        assert general.endpoint.plans.hits == 0


async def test_other_shapes_and_bad_variables_take_the_general_path(env: Env) -> None:
    await env.api.top_up("cus_1", 100, "k1")
    selection = "{ balance currency }"
    cases: list[tuple[str, Any]] = [
        (
            'fragment F on CustomerWallet { balance } { customerWallets(customerId: "cus_1") { ...F } }',
            None,
        ),
        ('{ customerWallets(customerId: "cus_1") { balance @include(if: true) } }', None),
        ('{ customerWallets(customerId: "cus_1") @skip(if: false) { balance } }', None),
        (
            '{ customerWallets(customerId: "cus_1") { transactions { edges { node { amount } } } } }',
            None,
        ),
        (
            '{ a: customerWallets(customerId: "cus_1") { balance } b: customerWallets(customerId: "x") { balance } }',
            None,
        ),
        (
            '{ customerWallets(customerId: "cus_1") { balance a: balance b: currency } __typename }',
            None,
        ),
        (f"query($c: String!) {{ customerWallets(customerId: $c) {selection} }}", {}),
        (f"query($c: String!) {{ customerWallets(customerId: $c) {selection} }}", {"c": 5}),
        (f"query($c: String!) {{ customerWallets(customerId: $c) {selection} }}", {"c": None}),
        (f"query($c: String!) {{ customerWallets(customerId: $c) {selection} }}", {"c": ["cus_1"]}),
        (f'query($c: String = "cus_1") {{ customerWallets(customerId: $c) {selection} }}', {}),
        (f"query($c: ID!) {{ customerWallets(customerId: $c) {selection} }}", {"c": "cus_1"}),
        (
            f'query A {{ customerWallets(customerId: "cus_1") {selection} }} query B {{ __typename }}',
            None,
        ),
        ('{ customerWallets(customerId: "cus_1") { balance balance: currency } }', None),
        ('{ customerWallets(customerId: "cus_1") { nope } }', None),
    ]
    async with both(env) as (planned, general):
        for query, variables in cases:
            for _ in range(2):
                expected = await general.post(query, variables)
                assert await planned.post(query, variables) == expected, query
        # operationName picks the planned operation of a two-operation document
        query = cases[12][0]
        for name in ("A", "B", "A"):
            expected = await general.post(query, None, operationName=name)
            assert await planned.post(query, None, operationName=name) == expected
        assert planned.endpoint.plans.hits == 1  # only the third request above


async def test_a_plan_reads_live_data_and_the_callers_scope(env: Env) -> None:
    query = "query($c: String!) { customerWallets(customerId: $c) { balance } }"
    async with both(env) as (planned, _general):
        assert await planned.post(query, {"c": "cus_1"}) == (200, {"data": {"customerWallets": []}})
        await env.api.top_up("cus_1", 100, "k1")
        assert (await planned.post(query, {"c": "cus_1"}))[1]["data"]["customerWallets"] == [
            {"balance": 100}
        ]
        await env.api.top_up("cus_1", 20, "k2")
        assert (await planned.post(query, {"c": "cus_1"}))[1]["data"]["customerWallets"] == [
            {"balance": 120}
        ]
        session = await env.customer_session(env.api, "cus_2")  # sees only cus_2
        assert (await planned.post(query, {"c": "cus_1"}, session.key))[1] == {
            "data": {"customerWallets": []}
        }
        other = await env.other.post(query, {"c": "cus_1"})  # another organization
        assert other.json() == {"data": {"customerWallets": []}}
        assert planned.endpoint.plans.hits == 3


def test_compile_plan_accepts_only_the_exact_shape() -> None:
    plan = compile_plan('{ w: customerWallets(customerId: "c") { b: balance id balance } }', None)
    assert plan is not None
    assert (plan.response_key, plan.customer_literal, plan.customer_variable) == ("w", "c", None)
    assert [key for key, _ in plan.fields] == ["b", "id", "balance"]
    assert compile_plan('mutation { customerWallets(customerId: "c") { id } }', None) is None
    assert compile_plan('{ customerWallets(customerId: "c") { id } } {', None) is None
    assert compile_plan('{ customerWallet(customerId: "c", currency: "usd") { id } }', None) is None


# --- write plans (gql_wallet/graphql/compiled_writes.py) -------------------------------------

PAYLOAD_LEAVES = {
    "wallet": ["id", "createdAt", "modifiedAt", "customerId", "balance", "currency", "__typename"],
    "transaction": [
        "id",
        "createdAt",
        "type",
        "amount",
        "balanceAfter",
        "description",
        "reference",
        "idempotencyKey",
        "__typename",
    ],
    "userErrors": ["code", "field", "message", "__typename"],
}


def generated_writes(count: int) -> list[tuple[str, str, str]]:
    """topUpWallet/chargeWallet documents: random payload selections and aliases.
    Returns (query, root field, variable name)."""
    rng = random.Random(11)
    found = []
    for _ in range(count):
        root = rng.choice(["topUpWallet", "chargeWallet"])
        input_type = "TopUpWalletInput" if root == "topUpWallet" else "ChargeWalletInput"
        parts = []
        for name in rng.sample([*PAYLOAD_LEAVES, "__typename"], rng.randint(1, 4)):
            alias = rng.choice([None, None, f"x_{name}", name])  # no two fields share a key
            head = f"{alias}: {name}" if alias else name
            if name == "__typename":
                parts.append(head)
                continue
            leaves = [
                f"{leaf_alias}: {leaf}"
                if (leaf_alias := rng.choice([None, None, f"a_{leaf}"]))
                else leaf
                for leaf in rng.sample(PAYLOAD_LEAVES[name], rng.randint(1, 4))
            ]
            parts.append(f"{head} {{ {' '.join(leaves)} }}")
        variable = rng.choice(["i", "input"])
        field = f"w: {root}" if rng.random() < 0.3 else root
        name = rng.choice(["", "Write"])
        query = (
            f"mutation {name}(${variable}: {input_type}!) "
            f"{{ {field}(input: ${variable}) {{ {' '.join(parts)} }} }}"
        )
        found.append((query, root, variable))
    return found


def write_inputs(root: str, key: str) -> list[dict[str, Any]]:
    """Inputs for one document: fresh writes, refusals and inputs the general path rejects."""
    base = {"customerId": "cus_1", "currency": "usd", "amount": 7, "idempotencyKey": key}
    return [
        base,
        {**base, "idempotencyKey": f"{key}-d", "description": "ü 💶", "reference": None},
        {**base, "idempotencyKey": f"{key}-r", "reference": "inv_1", "currency": "USD"},
        {**base, "idempotencyKey": key, "amount": 8},  # IDEMPOTENCY_KEY_REUSED
        {**base, "idempotencyKey": f"{key}-0", "amount": 0},  # INVALID_AMOUNT
        {**base, "idempotencyKey": f"{key}-big", "amount": 2**53},  # INVALID_AMOUNT
        {**base, "idempotencyKey": f"{key}-cur", "currency": "zzz"},  # INVALID_CURRENCY
        {**base, "idempotencyKey": f"{key}-many", "amount": 10**12},  # refused by the ledger
        {**base, "idempotencyKey": f"{key}-nobody", "customerId": f"nobody-{root}"},
        # The general path's variable errors:
        {**base, "idempotencyKey": f"{key}-f", "amount": 1.5},
        {**base, "idempotencyKey": f"{key}-s", "amount": "5"},
        {**base, "idempotencyKey": f"{key}-b", "amount": True},
        {**base, "idempotencyKey": f"{key}-n", "customerId": 5},
        {**base, "idempotencyKey": f"{key}-dn", "description": 7},
        {**base, "idempotencyKey": f"{key}-x", "extra": 1},
        {k: v for k, v in base.items() if k != "idempotencyKey"},
    ]


async def test_generated_writes_answer_alike_with_and_without_plans(env: Env) -> None:
    """A write the plan makes gets the same response as the general path's replay of it (the
    contract's identical replay); refusals and rejected inputs answer alike on both paths."""
    await env.api.top_up("cus_1", 10_000, "seed")
    async with both(env) as (planned, general):
        for number, (query, root, variable) in enumerate(generated_writes(40)):
            for step, value in enumerate(write_inputs(root, f"k{number}")):
                variables: dict[str, Any] = {variable: value}
                first = await planned.post(query, variables)  # the plan, from the 2nd input on
                assert await general.post(query, variables) == first, (query, value)
                assert await planned.post(query, variables) == first, (query, value)
                if step == 0:
                    assert first[0] == 200 and "errors" not in first[1], first
            assert await planned.post(query, {variable: None}) == await general.post(
                query, {variable: None}
            )
        # Per document: its first request plans it; then 9 inputs the plan answers, twice each
        # (a write and its replay, or a refusal twice), and 7 it leaves to the general path.
        assert planned.endpoint.plans.hits == 40 * (9 * 2 - 1)
        assert general.endpoint.plans.hits == 0


async def test_write_plans_keep_the_writes_side_effects_and_refusals(env: Env) -> None:
    query = (
        "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) "
        "{ transaction { amount balanceAfter } userErrors { code } } }"
    )
    counted = metrics.LEDGER_WRITES.labels("TOP_UP")
    async with both(env) as (planned, general):
        value = {"customerId": "cus_1", "currency": "usd", "amount": 5, "idempotencyKey": "k1"}
        await planned.post(query, {"i": value})  # the general path: the document gets a plan
        before = counted._value.get()
        status, body = await planned.post(query, {"i": {**value, "idempotencyKey": "k2"}})
        assert (status, body) == (
            200,
            {
                "data": {
                    "topUpWallet": {
                        "transaction": {"amount": 5, "balanceAfter": 10},
                        "userErrors": [],
                    }
                }
            },
        )
        assert counted._value.get() == before + 1  # counted like any write
        await planned.post(query, {"i": {**value, "idempotencyKey": "k2"}})  # a replay
        assert counted._value.get() == before + 1  # not counted again
        hits = planned.endpoint.plans.hits
        assert hits == 2
        # GET never runs a write, a customer session may not write: as on the general path.
        for answer in (planned, general):
            response = await answer.client.get(
                "/graphql",
                params={"query": query, "variables": json.dumps({"i": value})},
                headers={"Authorization": f"Bearer {answer.key}"},
            )
            assert response.status_code == 405
        session = await env.customer_session(env.api, "cus_1")
        denied = {**value, "idempotencyKey": "k3"}
        assert await planned.post(query, {"i": denied}, session.key) == await general.post(
            query, {"i": denied}, session.key
        )
        assert planned.endpoint.plans.hits == hits
    assert await env.counts() == (1, 2, 2)


def test_compile_write_plan_accepts_only_the_exact_shape() -> None:
    shape = "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) { %s } }"
    assert compile_plan(shape % "wallet { balance } userErrors { code }", None) is not None
    assert compile_plan(shape % "transaction { wallet { id } }", None) is None
    assert compile_plan(shape % "wallet { balance } wallet { id }", None) is None
    assert compile_plan(shape % "... on TopUpWalletPayload { __typename }", None) is None
    assert compile_plan(shape % "wallet @skip(if: false) { id }", None) is None
    assert (
        compile_plan(
            "mutation($i: ChargeWalletInput!) { topUpWallet(input: $i) { __typename } }", None
        )
        is None
    )
    assert (
        compile_plan(
            'mutation { topUpWallet(input: {customerId: "c", currency: "usd", amount: 1, '
            'idempotencyKey: "k"}) { __typename } }',
            None,
        )
        is None
    )
    assert (
        compile_plan(
            "mutation($i: TopUpWalletInput!) { a: topUpWallet(input: $i) { __typename } "
            "b: topUpWallet(input: $i) { __typename } }",
            None,
        )
        is None
    )


async def test_each_kind_of_plan_has_its_own_switch(env: Env) -> None:
    lookup = "query($c: String!) { customerWallets(customerId: $c) { balance } }"
    write = "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) { userErrors { code } } }"
    for lookups, writes in ((True, False), (False, True)):
        settings = changed(
            env.settings, {"precompiled_lookups": lookups, "precompiled_writes": writes}
        )
        async with served(settings) as app:
            for attempt in range(3):
                value = {"customerId": "c", "currency": "usd", "amount": 1}
                await app.post(write, {"i": {**value, "idempotencyKey": f"{lookups}{attempt}"}})
                await app.post(lookup, {"c": "c"})
            assert app.endpoint.plans.hits == 2  # the 2nd and 3rd of the kind that is on
            assert (app.endpoint.plans.get(lookup, None) is not None) is lookups
            assert (app.endpoint.plans.get(write, None) is not None) is writes


@contextmanager
def checkouts_of(served: Served) -> Iterator[list[int]]:
    """Pool checkouts while the block runs, one 1 per checkout."""
    pool = served.endpoint.database.engine.sync_engine.pool
    checkouts: list[int] = []

    def count(*_: Any) -> None:
        checkouts.append(1)

    event.listen(pool, "checkout", count)
    try:
        yield checkouts
    finally:
        event.remove(pool, "checkout", count)


def on_sqlite(env: Env) -> bool:
    return env.database.dialect.name == "sqlite"


async def test_a_planned_lookup_takes_at_most_one_pooled_connection(env: Env) -> None:
    """No pooled connection of the request's: on PostgreSQL the API key lookup and the plan's
    read go in group reads, on the group senders' own connections; on SQLite both read on the
    event loop's thread."""
    query = "query($c: String!) { customerWallets(customerId: $c) { balance } }"
    await env.api.top_up("cus_1", 100, "k1")
    async with both(env) as (planned, _general):
        assert (await planned.post(query, {"c": "cus_1"}))[0] == 200  # general path, then planned
        with checkouts_of(planned) as checkouts:
            answer = await planned.post(query, {"c": "cus_1"})
        assert answer == (200, {"data": {"customerWallets": [{"balance": 100}]}})
        assert planned.endpoint.plans.hits == 1
        assert checkouts == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_planned_lookup_whose_reader_gives_way_takes_one_pooled_connection(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the event loop's reader gives way (SQLite made it wait), the key and the wallets are
    read on one pooled connection, checked out then, and the answer is the same."""
    query = "query($c: String!) { customerWallets(customerId: $c) { balance } }"
    await env.api.top_up("cus_1", 100, "k1")
    async with both(env) as (planned, _general):
        assert (await planned.post(query, {"c": "cus_1"}))[0] == 200  # general path, then planned
        monkeypatch.setattr(SqliteReader, "read", lambda *_: None)
        with checkouts_of(planned) as checkouts:
            answer = await planned.post(query, {"c": "cus_1"})
        assert answer == (200, {"data": {"customerWallets": [{"balance": 100}]}})
        assert planned.endpoint.plans.hits == 1 and checkouts == [1]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, b"{not json", 401),
        ({"Authorization": "Bearer gqlw_sk_not-a-real-key"}, b"[1]", 401),
        ({"Content-Type": "text/plain"}, b"{}", 401),
        ({"Authorization": "KEY"}, b"{not json", 400),
        ({"Authorization": "KEY", "Content-Type": "text/plain"}, b"{}", 415),
    ],
)
async def test_the_body_is_judged_after_authentication(
    env: Env, headers: dict[str, str], body: bytes, status: int
) -> None:
    """The body is read before the token is checked, but a bad token is still what a request
    with a bad token and a bad body hears about."""
    headers = {"Content-Type": "application/json", **headers}
    if headers.get("Authorization") == "KEY":
        headers["Authorization"] = f"Bearer {env.api.key}"
    response = await env.client.post("/graphql", content=body, headers=headers)
    assert response.status_code == status


async def test_a_planned_write_takes_at_most_one_pooled_connection(env: Env) -> None:
    """A planned write takes no pooled connection of the request's: on PostgreSQL the key read
    and the write go in a group read and a group commit on the group senders' connections, and
    only a replay reads on the request's connection (one, checked out then); on SQLite the
    write runs in the writer thread and the key is read on the event loop's thread, and even a
    replay needs none."""
    query = "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) { wallet { balance } } }"
    value = {"customerId": "cus_1", "currency": "usd", "amount": 5}
    async with both(env) as (planned, _general):
        await planned.post(query, {"i": {**value, "idempotencyKey": "k1"}})  # plans it
        with checkouts_of(planned) as checkouts:
            fresh = await planned.post(query, {"i": {**value, "idempotencyKey": "k2"}})
            replayed = await planned.post(query, {"i": {**value, "idempotencyKey": "k2"}})
        assert fresh == replayed == (200, {"data": {"topUpWallet": {"wallet": {"balance": 10}}}})
        assert planned.endpoint.plans.hits == 2
        assert checkouts == ([] if on_sqlite(env) else [1])
