"""Every error a client can get carries a stable `extensions.code`, over HTTP and WebSocket; a
subscription sent over HTTP is a clear request error; only server faults count as outcome
`error` in the metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gql_wallet import repository
from gql_wallet.app import create_app
from gql_wallet.auth import SCOPE_READ, create_api_key
from gql_wallet.graphql import http
from gql_wallet.graphql.http import GRAPHQL_RESPONSE_MEDIA_TYPE, JSON_MEDIA_TYPE
from gql_wallet.settings import Settings
from tests.conftest import Env, app_env, changed
from tests.test_operability import metric

SUBSCRIPTION = 'subscription { walletUpdated(customerId: "cus_42") { wallet { balance } } }'
MUTATION = 'mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }'
FIRST = "query($n: Int) { wallets(first: $n) { edges { cursor } } }"
CUSTOMER = "query($c: String!) { customerWallets(customerId: $c) { id } }"
# 14 levels of fields, all of them valid: only the depth limit (12) refuses it.
DEEP = (
    '{ wallet(id: "x") '
    + "{ transactions { edges { node { wallet " * 3
    + "{ id }"
    + " } } } }" * 3
    + " }"
)
ALIASES = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
DIRECTIVES = "{ " + "__typename @skip(if: false) " * 21 + "}"
TOKENS = "{ " + "__typename " * 2001 + "}"
COSTLY = "{ wallets(first: 100) { edges { node { transactions(first: 100) { edges { node { id } } } } } } }"

# (situation, how it is sent, its HTTP status with application/json and with
# application/graphql-response+json, the code of every error).
Request = dict[str, Any]
SITUATIONS: list[tuple[str, Request, int, int, str]] = [
    ("syntax error", {"json": {"query": "{ wallets { "}}, 200, 400, "GRAPHQL_PARSE_FAILED"),
    ("unknown field", {"json": {"query": "{ nope }"}}, 200, 400, "GRAPHQL_VALIDATION_FAILED"),
    (
        "variable of the wrong type",
        {"json": {"query": FIRST, "variables": {"n": "ten"}}},
        200,
        400,
        "BAD_USER_INPUT",
    ),
    (
        "variable out of range",
        {"json": {"query": FIRST, "variables": {"n": 2**40}}},
        200,
        400,
        "BAD_USER_INPUT",
    ),
    (
        "required variable missing",
        {"json": {"query": CUSTOMER, "variables": {}}},
        200,
        400,
        "BAD_USER_INPUT",
    ),
    (
        "first out of range",
        {"json": {"query": "{ wallets(first: 1000) { edges { cursor } } }"}},
        200,
        200,
        "BAD_USER_INPUT",
    ),
    (
        "a cursor not from this connection",
        {"json": {"query": '{ wallets(after: "zzz") { edges { cursor } } }'}},
        200,
        200,
        "BAD_USER_INPUT",
    ),
    ("too deep", {"json": {"query": DEEP}}, 200, 400, "DEPTH_LIMIT_EXCEEDED"),
    ("too many aliases", {"json": {"query": ALIASES}}, 200, 400, "ALIAS_LIMIT_EXCEEDED"),
    ("too many directives", {"json": {"query": DIRECTIVES}}, 200, 400, "DIRECTIVE_LIMIT_EXCEEDED"),
    ("too many tokens", {"json": {"query": TOKENS}}, 200, 400, "TOKEN_LIMIT_EXCEEDED"),
    ("over the cost limit", {"json": {"query": COSTLY}}, 200, 400, "COST_LIMIT_EXCEEDED"),
    (
        "subscription over POST",
        {"json": {"query": SUBSCRIPTION}},
        400,
        400,
        "SUBSCRIPTION_OVER_HTTP",
    ),
    (
        "subscription over GET",
        {"method": "GET", "params": {"query": SUBSCRIPTION}},
        400,
        400,
        "SUBSCRIPTION_OVER_HTTP",
    ),
    (
        "invalid subscription over POST",
        {"json": {"query": "subscription { x }"}},
        400,
        400,
        "SUBSCRIPTION_OVER_HTTP",
    ),
    (
        "mutation over GET",
        {"method": "GET", "params": {"query": MUTATION}},
        405,
        405,
        "METHOD_NOT_ALLOWED",
    ),
    (
        "unknown operationName",
        {"json": {"query": "query A { __typename }", "operationName": "B"}},
        400,
        400,
        "BAD_REQUEST",
    ),
    ("empty query", {"json": {"query": "  "}}, 400, 400, "BAD_REQUEST"),
    ("no query", {"json": {}}, 400, 400, "BAD_REQUEST"),
    ("body not JSON", {"content": b"{not json"}, 400, 400, "BAD_REQUEST"),
    ("body not an object", {"content": b"[1]"}, 400, 400, "BAD_REQUEST"),
    ("body not UTF-8", {"content": b"\xff\xfe{}"}, 400, 400, "BAD_REQUEST"),
    (
        "variables not an object",
        {"json": {"query": "{ a }", "variables": [1]}},
        400,
        400,
        "BAD_REQUEST",
    ),
    ("method other than GET and POST", {"method": "PUT"}, 405, 405, "METHOD_NOT_ALLOWED"),
    (
        "body too large",
        {"content": b'{"query": "' + b" " * 1_000_001 + b'{ __typename }"}'},
        413,
        413,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "content type not JSON",
        {"content": b"{ __typename }", "headers": {"Content-Type": "text/plain"}},
        415,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "no token",
        {"json": {"query": "{ __typename }"}, "headers": {"Authorization": ""}},
        401,
        401,
        "UNAUTHENTICATED",
    ),
]


async def send(env: Env, accept: str, request: Request) -> httpx.Response:
    method = request.get("method", "POST")
    headers = {"Authorization": f"Bearer {env.api.key}", "Accept": accept}
    if "content" in request:
        headers["Content-Type"] = "application/json"
    headers.update(request.get("headers", {}))
    return await env.client.request(
        method,
        "/graphql",
        json=request.get("json"),
        content=request.get("content"),
        params=request.get("params"),
        headers=headers,
    )


def codes(response: httpx.Response) -> list[str | None]:
    errors = response.json()["errors"]
    assert errors, response.text
    return [(error.get("extensions") or {}).get("code") for error in errors]


class TestEveryHttpErrorHasACode:
    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    @pytest.mark.parametrize(
        ("request_", "json_status", "graphql_status", "code"),
        [pytest.param(*rest, id=name) for name, *rest in SITUATIONS],
    )
    async def test_situation(
        self,
        env: Env,
        accept: str,
        request_: Request,
        json_status: int,
        graphql_status: int,
        code: str,
    ) -> None:
        response = await send(env, accept, request_)
        expected = json_status if accept == JSON_MEDIA_TYPE else graphql_status
        assert response.status_code == expected, response.text
        # A method other than GET and POST is refused before the Accept header is read.
        media_type = JSON_MEDIA_TYPE if request_.get("method") == "PUT" else accept
        assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
        assert set(codes(response)) == {code}, response.text
        assert await env.counts() == (0, 0, 0)

    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    async def test_a_mutation_with_a_read_only_key_is_forbidden(
        self, env: Env, accept: str
    ) -> None:
        reader = await env.new_key("org-a", (SCOPE_READ,))
        env.api.key = reader.key
        response = await send(env, accept, {"json": {"query": MUTATION}})
        assert response.status_code == 200
        assert codes(response) == ["FORBIDDEN"]

    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    async def test_an_unacceptable_accept_header_is_not_acceptable(
        self, env: Env, accept: str
    ) -> None:
        response = await send(env, f"image/png, {accept};q=0", {"json": {"query": "{ a }"}})
        assert response.status_code == 406
        assert codes(response) == ["NOT_ACCEPTABLE"]

    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    async def test_the_rate_limit(self, settings: Settings, accept: str) -> None:
        async with app_env(changed(settings, {"rate_limit_api_key": "1/minute"})) as env:
            assert (await send(env, accept, {"json": {"query": "{ __typename }"}})).is_success
            response = await send(env, accept, {"json": {"query": "{ __typename }"}})
        assert response.status_code == 429
        assert codes(response) == ["RATE_LIMITED"]

    async def test_turned_off_graphiql(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"graphiql": False})) as env:
            response = await env.client.get("/graphql", headers={"Accept": "text/html"})
        assert response.status_code == 404
        assert codes(response) == ["NOT_FOUND"]

    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    async def test_a_masked_server_fault(
        self, env: Env, accept: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await env.api.top_up("cus_1", 100, "k1")

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(repository, "list_transactions", broken)
        query = '{ customerWallets(customerId: "cus_1") { transactions { edges { cursor } } } }'
        response = await send(env, accept, {"json": {"query": query}})
        assert response.status_code == 200
        assert response.json()["errors"][0]["message"] == "Internal server error."
        assert codes(response) == ["INTERNAL_SERVER_ERROR"]

    @pytest.mark.parametrize("accept", [JSON_MEDIA_TYPE, GRAPHQL_RESPONSE_MEDIA_TYPE])
    async def test_a_fault_outside_graphql(
        self, env: Env, accept: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(_params: object) -> None:
            raise RuntimeError("unexpected")

        monkeypatch.setattr(http, "_operation", broken)
        response = await send(env, accept, {"json": {"query": "{ __typename }"}})
        assert response.status_code == 500
        assert codes(response) == ["INTERNAL_SERVER_ERROR"]


class TestSubscriptionsOverHttp:
    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_the_error_points_at_the_websocket_endpoint(
        self, env: Env, method: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        request = (
            {"method": "GET", "params": {"query": SUBSCRIPTION}}
            if method == "GET"
            else {"json": {"query": SUBSCRIPTION}}
        )
        with caplog.at_level(logging.ERROR):
            response = await send(env, JSON_MEDIA_TYPE, request)
        assert response.status_code == 400
        body = response.json()
        assert "data" not in body
        message = body["errors"][0]["message"]
        assert "ws://test/graphql" in message and "graphql-transport-ws" in message
        assert "mutations" not in message
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

    async def test_https_points_at_wss(self, env: Env) -> None:
        response = await env.client.post(
            "https://wallet.example/graphql",
            json={"query": SUBSCRIPTION},
            headers={"Authorization": f"Bearer {env.api.key}"},
        )
        assert "wss://wallet.example/graphql" in response.json()["errors"][0]["message"]

    async def test_a_mutation_over_get_still_says_use_post(self, env: Env) -> None:
        response = await send(
            env, JSON_MEDIA_TYPE, {"method": "GET", "params": {"query": MUTATION}}
        )
        assert response.status_code == 405 and response.headers["allow"] == "POST"
        assert "send mutations with POST" in response.json()["errors"][0]["message"]


class TestOutcomes:
    """Only a server fault is outcome `error`; a request the client got wrong is `invalid`."""

    async def outcome_deltas(self, env: Env, query: str) -> dict[str, float]:
        before = (await env.client.get("/metrics")).text
        response = await env.api.post(query)
        assert response.json()["errors"], response.text
        after = (await env.client.get("/metrics")).text
        return {
            outcome: metric(
                after, "gql_wallet_requests_total", operation="query wallets", outcome=outcome
            )
            - metric(
                before, "gql_wallet_requests_total", operation="query wallets", outcome=outcome
            )
            for outcome in ("ok", "error", "invalid", "forbidden")
        }

    @pytest.mark.parametrize(
        "query",
        [
            '{ wallets(after: "not-a-cursor") { edges { cursor } } }',
            "{ wallets(first: 0) { edges { cursor } } }",
            "{ wallets(first: 101) { edges { cursor } } }",
        ],
    )
    async def test_a_bad_argument_is_invalid_not_error(self, env: Env, query: str) -> None:
        deltas = await self.outcome_deltas(env, query)
        assert deltas == {"ok": 0, "error": 0, "invalid": 1, "forbidden": 0}

    async def test_a_server_fault_is_error(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(repository, "page_of_wallets", broken)
        deltas = await self.outcome_deltas(env, "{ wallets { edges { cursor } } }")
        assert deltas == {"ok": 0, "error": 1, "invalid": 0, "forbidden": 0}

    async def test_a_forbidden_write_is_forbidden(self, env: Env) -> None:
        customer = await env.customer_session(env.api, "cus_1")
        before = (await env.client.get("/metrics")).text
        response = await customer.post(MUTATION)
        assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        after = (await env.client.get("/metrics")).text
        labels = {"operation": "mutation createWallet"}
        for outcome, expected in (("forbidden", 1), ("error", 0)):
            got = metric(after, "gql_wallet_requests_total", **labels, outcome=outcome)
            assert (
                got - metric(before, "gql_wallet_requests_total", **labels, outcome=outcome)
                == expected
            )


@pytest.fixture
def ws_app(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    """The app served in-process with a WebSocket-capable client, and an API key."""
    settings = changed(settings, {"subscription_max_per_connection": 2})
    app = create_app(settings)
    with TestClient(app) as client:
        key = client.portal.call(  # type: ignore[union-attr]
            create_api_key, app.state.database, settings.token_secret_bytes, "org-ws"
        )
        yield client, key


class TestEveryWebSocketErrorHasACode:
    def operation(
        self, ws_app: tuple[TestClient, str], *payloads: dict, answers: int | None = None
    ) -> list[dict]:
        """The first messages (one per payload, or `answers`) answering the payloads, sent in
        order on one connection."""
        client, key = ws_app
        received = []
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
            assert ws.receive_json()["type"] == "connection_ack"
            for number, payload in enumerate(payloads):
                ws.send_json({"type": "subscribe", "id": str(number), "payload": payload})
            for _ in range(len(payloads) if answers is None else answers):
                message = ws.receive_json()
                while message["type"] == "ping":
                    message = ws.receive_json()
                received.append(message)
        return received

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            ({"query": "subscription { nope }"}, "GRAPHQL_VALIDATION_FAILED"),
            (
                {
                    "query": "subscription($c: String!) { walletUpdated(customerId: $c) { wallet { id } } }",
                    "variables": {"c": 5},
                },
                "BAD_USER_INPUT",
            ),
            ({"query": DEEP}, "DEPTH_LIMIT_EXCEEDED"),
            ({"query": ALIASES}, "ALIAS_LIMIT_EXCEEDED"),
            ({"query": COSTLY}, "COST_LIMIT_EXCEEDED"),
        ],
    )
    def test_a_refused_operation(
        self, ws_app: tuple[TestClient, str], payload: dict, code: str
    ) -> None:
        (message,) = self.operation(ws_app, payload)
        assert message["type"] == "error", message
        assert {error["extensions"]["code"] for error in message["payload"]} == {code}

    def test_a_field_error_of_a_query_over_websocket(self, ws_app: tuple[TestClient, str]) -> None:
        (message,) = self.operation(
            ws_app, {"query": '{ wallets(after: "zzz") { edges { cursor } } }'}
        )
        assert message["type"] == "next", message
        assert message["payload"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    def test_a_server_fault_over_websocket(
        self, ws_app: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(repository, "page_of_wallets", broken)
        (message,) = self.operation(ws_app, {"query": "{ wallets { edges { cursor } } }"})
        error = message["payload"]["errors"][0]
        assert error["message"] == "Internal server error."
        assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"

    def test_one_subscription_too_many(self, ws_app: tuple[TestClient, str]) -> None:
        subscription = {"query": SUBSCRIPTION}
        # cus_42 has no wallets: the first two send nothing until it has one.
        (third,) = self.operation(ws_app, subscription, subscription, subscription, answers=1)
        assert third["type"] == "error" and third["id"] == "2", third
        assert third["payload"][0]["extensions"]["code"] == "SUBSCRIPTION_LIMIT_EXCEEDED"
