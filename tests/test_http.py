"""The HTTP edge: authentication, malformed requests, masking, GraphiQL."""

from __future__ import annotations

import asyncio

import pytest

from gql_wallet import repository
from tests.conftest import Env

QUERY = '{ customerWallets(customerId: "cus_1") { balance } }'


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
            ("subscription { x }", None),
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
