"""Issue 22, items 2, 5 and two of 9: text no database can store, invalid currencies and customer
ids in reads, the replay of a WALLET_NOT_FOUND charge, and the WebSocket origin warning."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from graphql import (
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    build_schema,
    get_named_type,
)

from gql_wallet.settings import Settings
from tests.conftest import (
    CHARGE,
    Api,
    Env,
    LiveServer,
    app_env,
    fresh_database,
    start_server,
    stop_server,
)
from tests.wsclient import connect

SCHEMA = build_schema((Path(__file__).parents[1] / "schema.graphql").read_text())
ROOTS = {"Query": "query", "Mutation": "mutation", "Subscription": "subscription"}
# How a document reaches a field of a type that is not a root (its wallet is seeded below).
REACH = {"CustomerWallet": ('customerWallets(customerId: "cus_1")', "Query")}
NOT_TEXT = {"a\u0000b": "NUL", "\ud800": "a lone surrogate"}


@dataclass(frozen=True)
class Site:
    """A String or ID in an operation's input: a field argument, or a field nested in one."""

    type_name: str
    field: str
    path: tuple[str, ...]  # the argument, then the input fields down to the text

    @property
    def root(self) -> str:
        return self.type_name if self.type_name in ROOTS else REACH[self.type_name][1]

    @property
    def expected_code(self) -> str:
        """The code each text site refuses unstorable text with (README, error codes)."""
        return {
            "customerId": "INVALID_CUSTOMER_ID",
            "currency": "INVALID_CURRENCY",
            "after": "BAD_USER_INPUT",  # a cursor: not one this server issued
        }.get(self.path[-1], "INVALID_INPUT")


def _text_paths(type_: GraphQLInputType, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    named = get_named_type(type_)
    if named.name in ("String", "ID"):
        yield path
    elif isinstance(named, GraphQLInputObjectType):
        for name, field in named.fields.items():
            yield from _text_paths(field.type, (*path, name))


def text_sites() -> list[Site]:
    """Every text input of every field of every object type in the committed schema."""
    sites = []
    for type_ in SCHEMA.type_map.values():
        if isinstance(type_, GraphQLObjectType) and not type_.name.startswith("__"):
            for field_name, field in type_.fields.items():
                for arg_name, arg in field.args.items():
                    sites += [
                        Site(type_.name, field_name, p) for p in _text_paths(arg.type, (arg_name,))
                    ]
    return sites


def _valid(name: str, type_: GraphQLInputType) -> Any:
    """A valid value for an argument or input field, by its name (required ones only)."""
    named = get_named_type(type_)
    if isinstance(named, GraphQLInputObjectType):
        return {
            field_name: _valid(field_name, field.type)
            for field_name, field in named.fields.items()
            if isinstance(field.type, GraphQLNonNull)
        }
    return {
        "customerId": "cus_1",
        "currency": "usd",
        "amount": 100,
        "idempotencyKey": "k-text",
        "id": str(uuid.uuid4()),
        "transactionId": str(uuid.uuid4()),
        "holdId": str(uuid.uuid4()),
        "url": "https://hooks.example.com/wallets",
        "events": ["wallet.transaction.created"],
        "endpointId": str(uuid.uuid4()),
        "deliveryId": str(uuid.uuid4()),
    }[name]


def _selection(named: GraphQLNamedType) -> str:
    """`__typename`, userErrors and every object field's `__typename`: what a refusal shows."""
    if not isinstance(named, GraphQLObjectType):
        return ""
    parts = ["__typename"]
    for name, field in named.fields.items():
        if name == "userErrors":
            parts.append("userErrors { code field message }")
        elif isinstance(get_named_type(field.type), GraphQLObjectType) and not any(
            isinstance(arg.type, GraphQLNonNull) for arg in field.args.values()
        ):
            parts.append(f"{name} {{ __typename }}")
    return "{ " + " ".join(parts) + " }"


def document(site: Site, bad: str) -> tuple[str, dict[str, Any]]:
    """An operation with `bad` at `site` and valid values everywhere else."""
    field = SCHEMA.type_map[site.type_name].fields[site.field]  # type: ignore[attr-defined]
    declarations, arguments, variables = [], [], {}
    for name, arg in field.args.items():
        if name != site.path[0] and not isinstance(arg.type, GraphQLNonNull):
            continue
        if site.path == (name,):
            value = bad
        else:
            value = _valid(name, arg.type)
            if name == site.path[0]:
                target = value
                for key in site.path[1:-1]:
                    target = target.setdefault(key, {})
                target[site.path[-1]] = bad
        declarations.append(f"${name}: {arg.type}")
        arguments.append(f"{name}: ${name}")
        variables[name] = value
    call = f"{site.field}({', '.join(arguments)}) {_selection(get_named_type(field.type))}"
    if site.type_name in REACH:
        call = f"{REACH[site.type_name][0]} {{ {call} }}"
    return f"{ROOTS[site.root]}({', '.join(declarations)}) {{ {call} }}", variables


def assert_refused(site: Site, answer: dict[str, Any]) -> None:
    """A typed refusal pointing at the site; never a server fault."""
    assert "Internal server error" not in json.dumps(answer), (site, answer)
    if site.root == "Mutation":
        assert "errors" not in answer, (site, answer)
        payload = answer["data"][site.field]
        assert {"code": site.expected_code, "field": list(site.path)} in [
            {"code": e["code"], "field": e["field"]} for e in payload["userErrors"]
        ], (site, answer)
        assert all(
            value is None
            for key, value in payload.items()
            if key not in ("__typename", "userErrors")
        ), (site, answer)
        return
    [error] = answer.get("errors") or answer.get("payload") or [None]
    assert error is not None, (site, answer)
    assert error["extensions"]["code"] == site.expected_code, (site, answer)
    if site.expected_code != "BAD_USER_INPUT":
        assert error["extensions"]["field"] == [site.path[-1]], (site, answer)


def test_every_text_input_of_the_schema_is_found() -> None:
    """The walk of the schema finds what we know is there, and can reach every site."""
    sites = text_sites()
    assert {s.type_name for s in sites} <= set(ROOTS) | set(REACH)
    found = {(s.type_name, s.field, s.path) for s in sites}
    assert {
        ("Query", "wallet", ("id",)),
        ("Query", "wallets", ("after",)),
        ("CustomerWallet", "transactions", ("after",)),
        ("Mutation", "chargeWallet", ("input", "reference")),
        ("Mutation", "revokeCustomerSession", ("input", "id")),
        ("Subscription", "walletUpdated", ("currency",)),
    } <= found
    assert len(found) == len(sites) >= 24


@pytest.fixture
def both_urls(
    tmp_path: Path, sqlite_template: Path, postgres_template: str | None
) -> Iterator[dict[str, str]]:
    """A fresh SQLite and a fresh PostgreSQL database, side by side, to compare answers."""
    with ExitStack() as stack:
        urls = {}
        for kind in ("sqlite", "postgresql"):
            (tmp_path / kind).mkdir()
            urls[kind] = stack.enter_context(
                fresh_database(kind, tmp_path / kind, sqlite_template, postgres_template)
            )
        yield urls


async def post(api: Api, query: str, variables: dict[str, Any]) -> httpx.Response:
    """Api.post with the body escaped to ASCII, as JSON lets a client send a lone surrogate."""
    return await api.client.post(
        "/graphql",
        content=json.dumps({"query": query, "variables": variables}),
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize("bad", list(NOT_TEXT), ids=list(NOT_TEXT.values()))
async def test_unstorable_text_is_refused_alike_in_every_query_and_mutation(
    bad: str, both_urls: dict[str, str]
) -> None:
    sites = [s for s in text_sites() if s.root != "Subscription"]
    answers: dict[str, list[Any]] = {}
    for kind, url in both_urls.items():
        settings = Settings(database_url=url, rate_limit_api_key="", rate_limit_customer_session="")
        async with app_env(settings) as env:
            await env.api.top_up("cus_1", 100, "seed")
            before = await env.counts()
            answers[kind] = []
            for site in sites:
                query, variables = document(site, bad)
                for _ in range(2):  # the second time, from the parser and validation caches
                    response = await post(env.api, query, variables)
                    assert response.status_code == 200, (site, response.text)
                    assert_refused(site, response.json())
                    answers[kind].append(response.json())
            assert await env.counts() == before
    assert answers["sqlite"] == answers["postgresql"]


@pytest.mark.parametrize("bad", list(NOT_TEXT), ids=list(NOT_TEXT.values()))
async def test_unstorable_text_is_refused_alike_in_every_subscription(
    bad: str, both_urls: dict[str, str], tmp_path: Path
) -> None:
    sites = [s for s in text_sites() if s.root == "Subscription"]
    assert sites
    answers: dict[str, list[Any]] = {}
    for kind, url in both_urls.items():
        server = start_server(url, 1, tmp_path / kind / "server.log")
        try:
            answers[kind] = [await subscribe(server, *document(site, bad)) for site in sites]
        finally:
            stop_server(server)
        for site, answer in zip(sites, answers[kind], strict=True):
            assert answer["type"] == "error", answer
            assert_refused(site, answer)
    assert answers["sqlite"] == answers["postgresql"]


async def subscribe(server: LiveServer, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """The first message answering a subscription; the socket still serves a valid one after."""
    async with connect(server.url, server.new_key("org-a")) as socket:
        await socket.ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "bad",
                    "payload": {"query": query, "variables": variables},
                }
            )
        )
        answer = await asyncio.wait_for(socket.receive(), 10)  # silence: nothing refused it
        op = await socket.subscribe("cus_1")
        await socket.complete(op)
        await socket.ws.send(json.dumps({"type": "ping"}))
        assert (await socket.receive())["type"] == "pong"
    answer.pop("id")
    return answer


# --- item 5: invalid currencies and customer ids in reads -----------------------------------

CUSTOMER_WALLET = (
    "query($c: String!, $cur: String!) "
    "{ customerWallet(customerId: $c, currency: $cur) { balance } }"
)
CUSTOMER_WALLETS = "query($c: String!) { customerWallets(customerId: $c) { balance } }"
WALLETS = (
    "query($c: String, $cur: String) "
    "{ wallets(customerId: $c, currency: $cur) { edges { node { balance } } } }"
)
BAD_IDS = ["", "x" * 129, "cus\n1"]


def refusal(body: dict[str, Any]) -> tuple[str, list[str]]:
    [error] = body["errors"]
    return error["extensions"]["code"], error["extensions"]["field"]


async def test_an_invalid_currency_is_refused_in_lookups_and_filters(env: Env) -> None:
    await env.api.top_up("cus_1", 100, "k1")
    session = await env.customer_session(env.api, "cus_1")
    for api in (env.api, session):
        for currency in ("zzz", "xts", "US", ""):
            body = (await api.post(CUSTOMER_WALLET, {"c": "cus_1", "cur": currency})).json()
            assert body["data"] == {"customerWallet": None}
            assert refusal(body) == ("INVALID_CURRENCY", ["currency"])
            assert (
                body["errors"][0]["message"]
                == f"{currency!r} is not an active ISO 4217 currency code."
            )
            body = (await api.post(WALLETS, {"cur": currency})).json()
            assert body["data"] is None  # wallets is non-null
            assert refusal(body) == ("INVALID_CURRENCY", ["currency"])
        # valid ones, in any case, still answer
        data = await api(CUSTOMER_WALLET, {"c": "cus_1", "cur": "USD"})
        assert data == {"customerWallet": {"balance": 100}}


async def test_an_invalid_customer_id_is_refused_in_every_read(env: Env) -> None:
    session = await env.customer_session(env.api, "cus_1")
    for api in (env.api, session):
        for customer in BAD_IDS:
            for query, variables in (
                (CUSTOMER_WALLET, {"c": customer, "cur": "usd"}),
                (CUSTOMER_WALLETS, {"c": customer}),
                (WALLETS, {"c": customer}),
            ):
                body = (await api.post(query, variables)).json()
                assert refusal(body) == ("INVALID_CUSTOMER_ID", ["customerId"]), (query, body)
                assert "1-128 characters" in body["errors"][0]["message"]
        # another customer's valid id still looks like a customer with no wallets to a session
    assert await session(CUSTOMER_WALLETS, {"c": "cus_2"}) == {"customerWallets": []}
    assert await session(CUSTOMER_WALLET, {"c": "cus_2", "cur": "usd"}) == {"customerWallet": None}


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(sqlite_url, 1, tmp_path / "server.log")
    try:
        yield live
    finally:
        stop_server(live)


async def test_a_subscription_refuses_an_invalid_currency_or_customer_id(
    server: LiveServer,
) -> None:
    query = (
        "subscription($c: String!, $cur: String) "
        "{ walletUpdated(customerId: $c, currency: $cur) { wallet { balance } } }"
    )
    cases = [
        ({"c": "cus_1", "cur": "zzz"}, "INVALID_CURRENCY", "currency"),
        ({"c": "", "cur": None}, "INVALID_CUSTOMER_ID", "customerId"),
        ({"c": "cus\n1", "cur": "usd"}, "INVALID_CUSTOMER_ID", "customerId"),
    ]
    for variables, code, field in cases:
        answer = await subscribe(server, query, variables)
        assert answer["type"] == "error", answer
        [error] = answer["payload"]
        assert error["extensions"] == {"code": code, "field": [field]}, answer


# --- item 9: the replay of a WALLET_NOT_FOUND charge, the origin warning --------------------


async def test_a_replayed_wallet_not_found_charge_still_has_no_wallet(env: Env) -> None:
    for key in ("charge-1", "charge-2"):
        variables = {
            "input": {
                "customerId": f"cus_{key}",
                "currency": "usd",
                "amount": 5,
                "idempotencyKey": key,
            }
        }
        status, first = await env.api.answer(CHARGE, variables)
        assert status == 200
        assert first["data"]["chargeWallet"]["wallet"] is None
        [error] = first["data"]["chargeWallet"]["userErrors"]
        assert error["code"] == "WALLET_NOT_FOUND"
        await env.api.answer(
            CHARGE.replace("Charge(", "TopUp(")
            .replace("ChargeWalletInput", "TopUpWalletInput")
            .replace("chargeWallet", "topUpWallet"),
            {"input": {**variables["input"], "amount": 50, "idempotencyKey": f"{key}-top-up"}},
        )
        before = await env.counts()
        for _ in range(2):
            assert await env.api.answer(CHARGE, variables) == (200, first)
        assert await env.counts() == before


async def test_a_refused_websocket_origin_names_the_setting(
    server: LiveServer, tmp_path: Path
) -> None:
    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            ws_url, subprotocols=["graphql-transport-ws"], origin="https://evil.example"
        ):
            pass
    log = (tmp_path / "server.log").read_text()
    [line] = [line for line in log.splitlines() if "evil.example" in line]
    assert "GQL_WALLET_CORS_ALLOW_ORIGINS" in line
    assert "allowed_origins" not in log
