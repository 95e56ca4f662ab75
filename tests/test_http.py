"""The HTTP edge: authentication, malformed requests, masking, GraphiQL."""

from __future__ import annotations

import asyncio
import logging

import httpx
import orjson
import pytest

from gql_wallet import repository
from gql_wallet.app import create_app, serving
from gql_wallet.db import Database
from gql_wallet.graphql.http import (
    GRAPHQL_RESPONSE_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    negotiate_media_type,
)
from gql_wallet.settings import Settings
from tests.conftest import Env

QUERY = '{ customerWallets(customerId: "cus_1") { balance } }'
GRAPHQL_JSON = GRAPHQL_RESPONSE_MEDIA_TYPE
JSON = JSON_MEDIA_TYPE


def assert_clean(response_text: str) -> None:
    """No internals in a response: no traceback, no SQL, no Python exception names."""
    for leak in (
        "Traceback",
        "sqlalchemy",
        "SELECT",
        "UPDATE ",
        'File "',
        "ValueError",
        "RuntimeError",
    ):
        assert leak not in response_text


class TestAuthentication:
    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer gqlw_sk_not-a-real-key",
            "Bearer something-else",
            "Bearer " + "x" * 10_000,
        ],
    )
    async def test_missing_or_wrong_key_is_refused_without_data(
        self, env: Env, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await env.client.post("/graphql", json={"query": QUERY}, headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert "data" not in body
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_bearer_scheme_is_case_insensitive(self, env: Env) -> None:
        response = await env.client.post(
            "/graphql", json={"query": QUERY}, headers={"Authorization": f"bearer {env.api.key}"}
        )
        assert response.status_code == 200 and response.json() == {"data": {"customerWallets": []}}

    async def test_refused_mutation_writes_nothing(self, env: Env) -> None:
        response = await env.client.post(
            "/graphql",
            json={
                "query": 'mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }'
            },
        )
        assert response.status_code == 401
        assert await env.counts() == (0, 0, 0)


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("body", "content_type", "status"),
        [
            (b"{not json", "application/json", 400),
            (b"[1]", "application/json", 400),
            (b"[]", "application/json", 400),
            (b"42", "application/json", 400),
            (b"null", "application/json", 400),
            (b'"query"', "application/json", 400),
            (b"\xff\xfe{}", "application/json", 400),
            (b'{"query": "\xc3\x28"}', "application/json", 400),
            (b'{"query": NaN}', "application/json", 400),
            (b"", "application/json", 400),
            (b"{}", "application/json", 400),
            (b'{"query": 1}', "application/json", 400),
            (b'{"query": ""}', "application/json", 400),
            (
                b'{"query": "{ wallets { edges { cursor } } }", "variables": [1]}',
                "application/json",
                400,
            ),
            (
                b'{"query": "{ wallets { edges { cursor } } }", "variables": "x"}',
                "application/json",
                400,
            ),
            (
                b'{"query": "{ wallets { edges { cursor } } }", "operationName": 5}',
                "application/json",
                400,
            ),
            (
                b'{"query": "{ wallets { edges { cursor } } }", "operationName": "Nope"}',
                "application/json",
                400,
            ),
            (b"query { wallets { edges { cursor } } }", "text/plain", 415),
            (b"query=1", "application/x-www-form-urlencoded", 415),
            (b'{"query": "' + b"9" * 5000 + b'"}', "application/json", 200),
            (
                b'{"query": "{ a }", "variables": {"x": ' + b"9" * 5000 + b"}}",
                "application/json",
                400,
            ),
        ],
    )
    async def test_malformed_http_is_a_4xx_not_a_500(
        self, env: Env, body: bytes, content_type: str, status: int
    ) -> None:
        response = await env.client.post(
            "/graphql",
            content=body,
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": content_type},
        )
        assert response.status_code == status, response.text
        assert response.json()["errors"]
        assert "data" not in response.json()
        assert_clean(response.text)

    @pytest.mark.parametrize(
        ("query", "variables"),
        [
            ("{ wallets { ", None),
            ("{ nope }", None),
            ("{ wallets { edges { node { balance { x } } } } }", None),
            ("query($n: Int) { wallets(first: $n) { edges { cursor } } }", {"n": "ten"}),
            ("query($n: Int) { wallets(first: $n) { edges { cursor } } }", {"n": 2**40}),
            ("query($c: String!) { customerWallets(customerId: $c) { id } }", {}),
            ("query($c: String!) { customerWallets(customerId: $c) { id } }", {"c": 5}),
            ("mutation { topUpWallet(input: {}) { userErrors { code } } }", None),
            (
                "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) { userErrors { code } } }",
                {"i": {"amount": 1}},
            ),
            ("fragment F on Query { ...F } { ...F }", None),
        ],
    )
    async def test_malformed_graphql_is_a_graphql_error_without_data(
        self, env: Env, query: str, variables: dict | None
    ) -> None:
        response = await env.api.post(query, variables)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["errors"] and "data" not in body
        assert_clean(response.text)
        assert await env.counts() == (0, 0, 0)

    async def test_body_over_the_limit_is_413(self, env: Env) -> None:
        response = await env.client.post(
            "/graphql",
            content=b'{"query": "' + b" " * 2_000_000 + b'{ wallets { edges { cursor } } }"}',
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 413

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
    async def test_other_methods_are_405(self, env: Env, method: str) -> None:
        response = await env.client.request(
            method, "/graphql", headers={"Authorization": f"Bearer {env.api.key}"}
        )
        assert response.status_code == 405 and "POST" in response.headers["allow"]


class TestGet:
    async def test_queries_work_over_get(self, env: Env) -> None:
        await env.api.top_up("cus_1", 42, "k1")
        response = await env.client.get(
            "/graphql", params={"query": QUERY}, headers={"Authorization": f"Bearer {env.api.key}"}
        )
        assert response.json() == {"data": {"customerWallets": [{"balance": 42}]}}

    async def test_mutations_are_refused_over_get(self, env: Env) -> None:
        response = await env.client.get(
            "/graphql",
            params={
                "query": 'mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }'
            },
            headers={"Authorization": f"Bearer {env.api.key}"},
        )
        assert response.status_code == 405
        assert await env.counts() == (0, 0, 0)

    async def test_graphiql_page_loads_without_a_token(self, env: Env) -> None:
        response = await env.client.get("/graphql", headers={"Accept": "text/html"})
        assert response.status_code == 200
        assert "graphiql" in response.text.lower()

    async def test_root_redirects_to_graphiql(self, env: Env) -> None:
        response = await env.client.get("/")
        assert response.status_code in (302, 307) and response.headers["location"] == "/graphql"


class TestServerFaults:
    async def test_unexpected_errors_are_masked_under_concurrency(
        self, env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        await env.api.top_up("cus_1", 100, "k1")

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("SELECT secret FROM wallets WHERE password = 'hunter2'")

        monkeypatch.setattr(repository, "list_transactions", broken)
        failing = '{ customerWallets(customerId: "cus_1") { transactions { edges { cursor } } } }'
        responses = await asyncio.gather(
            *[env.api.post(failing if i % 2 else QUERY) for i in range(40)]
        )
        for i, response in enumerate(responses):
            assert response.status_code == 200
            assert "hunter2" not in response.text and "SELECT" not in response.text
            body = response.json()
            if i % 2:
                assert body["errors"][0]["message"] == "Internal server error."
            else:
                assert body == {"data": {"customerWallets": [{"balance": 100}]}}
        # The full detail is logged on the server side, with the request id the client got.
        assert "hunter2" in caplog.text
        assert responses[1].headers["x-request-id"] in caplog.text


class TestMediaTypes:
    """GraphQL over HTTP: application/graphql-response+json for new clients, JSON for the rest."""

    @pytest.mark.parametrize(
        ("accept", "expected"),
        [
            (None, JSON),
            ("", JSON),
            ("application/json", JSON),
            ("*/*", JSON),
            ("application/*", JSON),
            ("APPLICATION/JSON", JSON),
            ("application/graphql-response+json", GRAPHQL_JSON),
            ("application/graphql-response+json, application/json;q=0.9", GRAPHQL_JSON),
            ("application/json, application/graphql-response+json", GRAPHQL_JSON),
            ("application/json, application/graphql-response+json;q=0.5", JSON),
            ("application/graphql-response+json;charset=utf-8", GRAPHQL_JSON),
            ("application/json;q=0, */*", GRAPHQL_JSON),
            ("application/graphql-response+json;q=0, */*", JSON),
            ("text/plain", None),
            ("multipart/mixed", None),
            ("application/json;q=0", None),
            ("application/json;q=nonsense", None),
        ],
    )
    def test_accept_negotiation(self, accept: str | None, expected: str | None) -> None:
        assert negotiate_media_type(accept) == expected

    @pytest.mark.parametrize(
        ("query", "variables"),
        [
            ("{ wallets { ", None),
            ("{ nope }", None),
            ("query($n: Int!) { wallets(first: $n) { edges { cursor } } }", {"n": None}),
        ],
    )
    async def test_request_errors_are_400_without_data_for_graphql_response_json(
        self, env: Env, query: str, variables: dict | None
    ) -> None:
        response = await env.client.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {env.api.key}", "Accept": GRAPHQL_JSON},
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == f"{GRAPHQL_JSON}; charset=utf-8"
        body = response.json()
        assert body["errors"] and "data" not in body

    async def test_the_same_request_errors_stay_200_for_application_json(self, env: Env) -> None:
        response = await env.client.post(
            "/graphql",
            json={"query": "{ nope }"},
            headers={"Authorization": f"Bearer {env.api.key}", "Accept": JSON},
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{JSON}; charset=utf-8"
        assert "data" not in response.json()

    async def test_success_and_field_errors_are_200_with_the_negotiated_type(
        self, env: Env
    ) -> None:
        await env.api.top_up("cus_1", 42, "k1")
        headers = {"Authorization": f"Bearer {env.api.key}", "Accept": GRAPHQL_JSON}
        ok = await env.client.post("/graphql", json={"query": QUERY}, headers=headers)
        assert ok.status_code == 200
        assert ok.headers["content-type"] == f"{GRAPHQL_JSON}; charset=utf-8"
        assert "Accept" in ok.headers["vary"]  # (CORS adds Origin)
        assert ok.json() == {"data": {"customerWallets": [{"balance": 42}]}}
        # A field error happens during execution: `data` is present (here null), so 200.
        field_error = await env.client.post(
            "/graphql",
            json={"query": "{ wallets(first: 1000) { edges { cursor } } }"},
            headers=headers,
        )
        assert field_error.status_code == 200
        body = field_error.json()
        assert body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    async def test_http_errors_use_the_negotiated_type(self, env: Env) -> None:
        unauthenticated = await env.client.post(
            "/graphql", json={"query": QUERY}, headers={"Accept": GRAPHQL_JSON}
        )
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"] == f"{GRAPHQL_JSON}; charset=utf-8"
        assert unauthenticated.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        mutation_over_get = await env.client.get(
            "/graphql",
            params={
                "query": 'mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }'
            },
            headers={"Authorization": f"Bearer {env.api.key}", "Accept": GRAPHQL_JSON},
        )
        assert mutation_over_get.status_code == 405
        assert "data" not in mutation_over_get.json()

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_unacceptable_accept_is_406(self, env: Env, method: str) -> None:
        response = await env.client.request(
            method,
            "/graphql",
            params={"query": QUERY} if method == "GET" else None,
            json={"query": QUERY} if method == "POST" else None,
            headers={"Authorization": f"Bearer {env.api.key}", "Accept": "image/png"},
        )
        assert response.status_code == 406
        assert response.json()["errors"][0]["message"].startswith("The Accept header")

    @pytest.mark.parametrize(
        ("content_type", "status"),
        [
            ("application/json; charset=utf-8", 200),
            ("application/json; charset=UTF-8", 200),
            ('application/json; charset="utf-8"', 200),
            ("application/json; charset=latin-1", 415),
        ],
    )
    async def test_request_charset(self, env: Env, content_type: str, status: int) -> None:
        response = await env.client.post(
            "/graphql",
            content=orjson.dumps({"query": '{ __type(name: "Run🏃Swim🏊") { name } }'}),
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": content_type},
        )
        assert response.status_code == status, response.text


async def test_a_client_that_leaves_mid_body_is_no_server_error(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects while sending its body gets no 500 and no error log line."""
    app = create_app(env.settings)
    sent: list[dict] = []
    incoming = [
        {"type": "http.request", "body": b'{"query": "{ __typ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {env.api.key}".encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    async with app.router.lifespan_context(app):
        with caplog.at_level(logging.ERROR):
            await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert orjson.loads(body)["errors"][0]["extensions"] == {"code": "BAD_REQUEST"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_the_lifespan_builds_the_database_and_closes_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    disposed: list[Database] = []
    dispose = Database.dispose

    async def recorded(self: Database) -> None:
        disposed.append(self)
        await dispose(self)

    monkeypatch.setattr(Database, "dispose", recorded)
    app = create_app(settings)
    assert not hasattr(app.state, "serving")  # nothing is opened before the app serves
    async with app.router.lifespan_context(app):
        running = serving(app)
        assert app.state.database is running.database is running.endpoint.database
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/readyz")).status_code == 200
        assert disposed == []
    assert disposed == [running.database]
