"""Safe to expose to the internet: limits on documents, CORS, CSRF, rate limits, masking."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from gql_wallet.graphql import documents
from gql_wallet.settings import Settings
from tests.conftest import Env, app_env, changed, cli

NESTED = "{ wallets(first: 1) { edges { node { transactions(first: 1) { edges { node { wallet { id } } } } } } } }"


def refused(response_json: dict, fragment: str) -> None:
    assert "data" not in response_json or response_json["data"] is None, response_json
    assert any(fragment in e["message"] for e in response_json["errors"]), response_json


class TestPreparedDocuments:
    """Each query text is parsed and validated once; every request of it is still refused or
    measured as if it came first (gql_wallet/graphql/documents.py)."""

    async def test_a_query_text_is_parsed_and_validated_once(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = {"parse": 0, "validate": 0}

        def counted(name: str, real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return real(*args, **kwargs)

            return call

        monkeypatch.setattr(documents, "parse", counted("parse", documents.parse))
        monkeypatch.setattr(
            documents, "validate_document", counted("validate", documents.validate_document)
        )
        query = "query Q($c: String!) { customerWallets(customerId: $c) { balance } }"
        for customer in ("cus_a", "cus_b", "cus_c"):
            assert (await env.api(query, {"c": customer}))["customerWallets"] == []
        assert calls == {"parse": 1, "validate": 1}

    async def test_an_invalid_document_is_refused_every_time_with_its_code(self, env: Env) -> None:
        for _ in range(3):
            response = (await env.api.post("{ wallets { nope } }")).json()
            refused(response, "nope")
            assert response["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

    async def test_a_syntax_error_is_refused_every_time_with_its_code(self, env: Env) -> None:
        for _ in range(3):
            response = (await env.api.post("{ wallets { ")).json()
            assert response["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"

    async def test_the_cost_of_one_document_follows_each_requests_variables(self, env: Env) -> None:
        query = "query($a: Int) { wallets(first: $a) { edges { node { transactions(first: 100) { edges { node { id } } } } } } }"
        assert "errors" not in (await env.api.post(query, {"a": 10})).json()
        refused((await env.api.post(query, {"a": 100})).json(), "could return")
        assert "errors" not in (await env.api.post(query, {"a": 10})).json()

    async def test_a_cost_is_remembered_only_for_the_values_it_depends_on(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        measured = [0]
        cost = documents.OperationCost

        class Counted(cost):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any) -> None:
                measured[0] += 1
                super().__init__(*args)

        monkeypatch.setattr(documents, "OperationCost", Counted)
        query = (
            "query($a: Int, $b: Int = 5) { wallets(first: $a) { edges { node { "
            "transactions(first: $b) { edges { node { id } } } } } } }"
        )
        # 100 wallets x (1 + 100 entries): over the limit whichever way $a is 100.
        cases = [
            ({"a": 10}, True),
            ({"a": 10, "b": 100}, True),  # 10 x 101
            ({"a": 100, "b": 100}, False),
            ({"b": 100}, True),  # $a absent: 20 wallets
            ({"a": None, "b": 100}, False),  # $a null: assumed the most, 100
            ({"a": True, "b": 100}, False),  # not an Int: the most until coercion refuses it
        ]
        for variables, passes in cases * 2:
            response = (await env.api.post(query, variables)).json()
            costly = any("could return" in e["message"] for e in response.get("errors", []))
            assert costly is not passes, (variables, response)
        assert measured[0] == len(cases)  # the second round measured nothing again

    async def test_operations_of_one_document_are_labelled_apart(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        labels: list[str] = []
        label = documents.operation_label

        def recorded(operation: Any) -> str:
            labels.append(label(operation))
            return labels[-1]

        monkeypatch.setattr(documents, "operation_label", recorded)
        query = 'query A { wallets { edges { cursor } } } query B { customerWallets(customerId: "x") { id } }'
        for name in ("A", "B", "A"):
            response = await env.api.client.post(
                "/graphql",
                json={"query": query, "operationName": name},
                headers={"Authorization": f"Bearer {env.api.key}"},
            )
            assert "errors" not in response.json(), response.json()
        assert labels == ["query wallets", "query customerWallets"]


class TestDocumentLimits:
    async def test_depth(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"max_query_depth": 6})) as env:
            assert (await env.api.post("{ wallets { edges { node { id } } } }")).status_code == 200
            refused((await env.api.post(NESTED)).json(), "exceeds maximum operation depth")

    async def test_depth_through_fragments(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"max_query_depth": 6})) as env:
            query = (
                "fragment T on CustomerWallet { transactions { edges { node { wallet { id } } } } } "
                "{ wallets { edges { node { ...T } } } }"
            )
            refused((await env.api.post(query)).json(), "exceeds maximum operation depth")

    async def test_aliases(self, env: Env) -> None:
        ok = "{ " + " ".join(f"a{i}: __typename" for i in range(30)) + " }"
        assert "errors" not in (await env.api.post(ok)).json()
        too_many = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
        refused((await env.api.post(too_many)).json(), "aliases")

    async def test_alias_amplification_through_fragments(self, env: Env) -> None:
        fragment = (
            "fragment F on Query { "
            + " ".join(
                f"a{i}: wallets(first: 100) {{ edges {{ node {{ id }} }} }}" for i in range(10)
            )
            + " }"
        )
        query = fragment + " { ...F ...F ...F ...F } "
        response = (await env.api.post(query)).json()
        assert response.get("data") is None
        assert any(
            "aliases" in e["message"] or "could return" in e["message"] for e in response["errors"]
        ), response

    async def test_tokens(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"max_tokens": 50})) as env:
            query = "{ " + " ".join("__typename" for _ in range(60)) + " }"
            refused((await env.api.post(query)).json(), "token")

    async def test_directives(self, env: Env) -> None:
        def query(n: int) -> str:
            return "{ " + " ".join(f"a{i}: __typename @include(if: true)" for i in range(n)) + " }"

        ok = query(20)
        assert "errors" not in (await env.api.post(ok)).json()
        too_many = query(21)
        refused((await env.api.post(too_many)).json(), "more than 20 directives")

    async def test_circular_fragments_are_refused(self, env: Env) -> None:
        query = (
            "fragment A on Query { wallets { edges { node { id } } } ...B } "
            "fragment B on Query { ...A } { ...A }"
        )
        response = await env.api.post(query)
        assert response.status_code == 200
        refused(response.json(), "Cannot spread fragment")

    async def test_field_suggestions_are_hidden(self, env: Env) -> None:
        response = (await env.api.post("{ walets { edges { cursor } } }")).json()
        assert response["errors"] and "Did you mean" not in str(response)


class TestCost:
    async def test_large_nested_pages_are_refused_before_running(self, env: Env) -> None:
        query = "{ wallets(first: 100) { edges { node { transactions(first: 100) { edges { node { id } } } } } } }"
        response = (await env.api.post(query)).json()
        refused(response, "the limit is 10000")
        assert response["errors"][0]["extensions"]["code"] == "COST_LIMIT_EXCEEDED"

    async def test_cost_counts_page_sizes_given_as_variables(self, env: Env) -> None:
        query = (
            "query($a: Int, $b: Int = 100) { wallets(first: $a) { edges { node { "
            "transactions(first: $b) { edges { node { id } } } } } } }"
        )
        refused((await env.api.post(query, {"a": 100})).json(), "could return")
        assert "errors" not in (await env.api.post(query, {"a": 10, "b": 30})).json()

    async def test_modest_queries_pass(self, env: Env) -> None:
        query = "{ wallets(first: 100) { edges { node { transactions(first: 30) { edges { node { id } } } } } } }"
        assert "errors" not in (await env.api.post(query)).json()

    async def test_exponential_fragments_are_measured_and_refused(self, env: Env) -> None:
        fragments = [
            "fragment F0 on CustomerWallet { transactions(first: 2) { edges { node { id } } } }"
        ]
        fragments += [
            f"fragment F{i} on CustomerWallet {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 40)
        ]
        query = " ".join(fragments) + " { wallets(first: 1) { edges { node { ...F39 } } } }"
        response = (await env.api.post(query)).json()
        assert response.get("data") is None and response["errors"]


class TestIntrospection:
    async def test_on_in_development(self, env: Env) -> None:
        data = (await env.api.post("{ __schema { queryType { name } } }")).json()
        assert data == {"data": {"__schema": {"queryType": {"name": "Query"}}}}

    async def test_off_in_production(self, settings: Settings) -> None:
        production = changed(settings, {"environment": "production", "token_secret": "p" * 40})
        async with app_env(production) as env:
            refused((await env.api.post("{ __schema { types { name } } }")).json(), "introspection")
            assert (await env.api.post("{ __typename }")).json() == {
                "data": {"__typename": "Query"}
            }
            page = await env.client.get("/graphql", headers={"Accept": "text/html"})
            assert page.status_code == 404  # no GraphiQL either, unless turned on


class TestRequestIds:
    async def test_a_request_id_is_returned(self, env: Env) -> None:
        response = await env.api.post("{ __typename }")
        assert len(response.headers["x-request-id"]) == 32

    async def test_the_callers_request_id_is_kept_when_sane(self, env: Env) -> None:
        for given, kept in (
            ("trace-123.abc", True),
            ("bad id with spaces", False),
            ("x" * 200, False),
        ):
            response = await env.client.post(
                "/graphql",
                json={"query": "{ __typename }"},
                headers={"Authorization": f"Bearer {env.api.key}", "X-Request-ID": given},
            )
            assert (response.headers["x-request-id"] == given) is kept


class TestRateLimits:
    async def test_each_key_has_its_own_budget(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"rate_limit_api_key": "3/minute"})) as env:
            for _ in range(3):
                assert (await env.api.post("{ __typename }")).status_code == 200
            limited = await env.api.post("{ __typename }")
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            error = limited.json()["errors"][0]
            assert (
                error["extensions"]["code"] == "RATE_LIMITED" and "retry after" in error["message"]
            )
            assert (await env.other.post("{ __typename }")).status_code == 200

    async def test_customer_sessions_have_their_own_limit(self, settings: Settings) -> None:
        update = {"rate_limit_customer_session": "2/minute", "rate_limit_api_key": ""}
        async with app_env(changed(settings, update)) as env:
            customer = await env.customer_session(env.api, "cus_1")
            statuses = [(await customer.post("{ __typename }")).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            key_statuses = [(await env.api.post("{ __typename }")).status_code for _ in range(10)]
            assert key_statuses == [200] * 10


class TestCsrf:
    @pytest.mark.parametrize(
        "content_type",
        ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"],
    )
    async def test_form_posts_change_nothing(self, env: Env, content_type: str) -> None:
        response = await env.client.post(
            "/graphql",
            content=b'query=mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }',
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": content_type},
        )
        assert response.status_code == 415
        assert await env.counts() == (0, 0, 0)


class TestCors:
    PREFLIGHT: ClassVar[dict[str, str]] = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }

    async def test_development_allows_localhost_only(self, env: Env) -> None:
        ok = await env.client.options(
            "/graphql", headers={"Origin": "http://localhost:5173", **self.PREFLIGHT}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        bad = await env.client.options(
            "/graphql", headers={"Origin": "https://evil.example", **self.PREFLIGHT}
        )
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers

    async def test_configured_origins(self, settings: Settings) -> None:
        configured = changed(
            settings,
            {
                "environment": "production",
                "token_secret": "p" * 40,
                "cors_allow_origins": ["https://app.example.com"],
            },
        )
        async with app_env(configured) as env:
            ok = await env.client.options(
                "/graphql", headers={"Origin": "https://app.example.com", **self.PREFLIGHT}
            )
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
            for origin in ("http://localhost:3000", "https://app.example.com.evil.example"):
                bad = await env.client.options(
                    "/graphql", headers={"Origin": origin, **self.PREFLIGHT}
                )
                assert "access-control-allow-origin" not in bad.headers
            actual = await env.client.post(
                "/graphql",
                json={"query": "{ __typename }"},
                headers={
                    "Origin": "https://app.example.com",
                    "Authorization": f"Bearer {env.api.key}",
                },
            )
            assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "x-request-id" in actual.headers["access-control-expose-headers"].lower()

    async def test_production_allows_no_origin_by_default(self, settings: Settings) -> None:
        production = changed(settings, {"environment": "production", "token_secret": "p" * 40})
        async with app_env(production) as env:
            response = await env.client.options(
                "/graphql", headers={"Origin": "http://localhost:5173", **self.PREFLIGHT}
            )
            assert "access-control-allow-origin" not in response.headers

    async def test_wildcard_never_comes_with_credentials(self, settings: Settings) -> None:
        async with app_env(changed(settings, {"cors_allow_origins": ["*"]})) as env:
            response = await env.client.options(
                "/graphql", headers={"Origin": "https://x.example", **self.PREFLIGHT}
            )
            assert response.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in response.headers


class TestProductionSettings:
    def test_production_needs_a_token_secret(self) -> None:
        with pytest.raises(ValidationError, match="GQL_WALLET_TOKEN_SECRET is required"):
            Settings(environment="production")

    def test_token_secret_must_be_long(self) -> None:
        with pytest.raises(ValidationError, match="at least 32"):
            Settings(token_secret="short")

    def test_the_cli_refuses_to_start_with_a_clear_message(self, database_url: str) -> None:
        result = cli(
            database_url, "serve", check=False, env={"GQL_WALLET_ENVIRONMENT": "production"}
        )
        assert result.returncode == 2 and "GQL_WALLET_TOKEN_SECRET is required" in result.stderr
