"""Fuzzing the running server from the committed schema, bounded for CI.

schemathesis (GraphQL mode) and hypothesis-graphql generate valid and odd operations for every
query and mutation; each runs against a real `gql-wallet serve` with an organization API key and
with a customer session token. No response may be a 5xx, show an internal error or a traceback,
and `gql-wallet verify` passes afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import mutations, nodes, queries

from tests.conftest import LiveServer, cli, fresh_database, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
SDL = (ROOT / "schema.graphql").read_text()
EXAMPLES = int(os.environ.get("GQL_WALLET_FUZZ_EXAMPLES", "25"))
# Amounts around every edge: zero, negatives, the 2^53-1 limit, 64-bit and far beyond.
SAFE_INTS = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 2**63, 10**30]),
).map(nodes.Int)
schemathesis.graphql.scalar("SafeInt", SAFE_INTS)
# Instants: valid ones with their offset, around the edges of time, and text that is not one
# (no offset, out of range, not a time at all).
ODD_TIMES = (
    "2026-03-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
    "2026-03-31T23:59:59", "2026-13-01T00:00:00+00:00", "yesterday", "",
)  # fmt: skip
DATETIMES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda value: value.isoformat()),
    st.sampled_from(ODD_TIMES),
    st.text(max_size=40),
).map(nodes.String)
schemathesis.graphql.scalar("DateTime", DATETIMES)
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    postgres_template: str | None,
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with fresh_database(request.param, directory, sqlite_template, postgres_template) as url:
        no_limits = {
            "GQL_WALLET_RATE_LIMIT_API_KEY": "",
            "GQL_WALLET_RATE_LIMIT_CUSTOMER_SESSION": "",
        }
        live = start_server(url, workers=1, log=directory / "server.log", env=no_limits)
        try:
            yield live
        finally:
            stop_server(live)


@pytest.fixture(scope="module", params=["api_key", "customer_session"])
def token(request: pytest.FixtureRequest, server: LiveServer) -> str:
    key = server.new_key("fuzz")
    # Some real data for the fuzzer's lookups to find.
    for customer in ("cus_1", ""):
        httpx.post(
            f"{server.url}/graphql",
            json={
                "query": "mutation($c: String!) { topUpWallet(input: {customerId: $c, "
                'currency: "usd", amount: 100, idempotencyKey: $c}) { wallet { id } } }',
                "variables": {"c": customer},
            },
            headers={"Authorization": f"Bearer {key}"},
        )
    if request.param == "api_key":
        return key
    response = httpx.post(
        f"{server.url}/graphql",
        json={
            "query": 'mutation { createCustomerSession(input: {customerId: "cus_1"}) { token } }'
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    return str(response.json()["data"]["createCustomerSession"]["token"])


def check(status: int, text: str) -> None:
    assert status < 500, text
    assert "Traceback" not in text and "Internal server error" not in text, text


def test_schemathesis_operations(server: LiveServer, token: str) -> None:
    schema = schemathesis.graphql.from_path(ROOT / "schema.graphql")
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for operation in operations:

            @given(case=operation.as_strategy())
            @FUZZ_SETTINGS
            def run(case: schemathesis.Case) -> None:
                response = client.post("/graphql", json=case.body, headers=headers)
                check(response.status_code, response.text)

            run()
    assert "0 problems" in cli(server.database_url, "verify").stdout


def test_hypothesis_graphql_documents(server: LiveServer, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        scalars = {"SafeInt": SAFE_INTS, "DateTime": DATETIMES}

        @given(
            document=st.one_of(
                queries(SDL, custom_scalars=scalars), mutations(SDL, custom_scalars=scalars)
            )
        )
        @settings(FUZZ_SETTINGS, max_examples=EXAMPLES * 8)
        def run(document: str) -> None:
            response = client.post("/graphql", json={"query": document}, headers=headers)
            check(response.status_code, response.text)
            if token.startswith("gqlw_cs_") and document.lstrip().startswith("mutation"):
                # Refused as FORBIDDEN, or invalid before it ran: either way nothing ran.
                assert response.json().get("data") is None, response.text

        run()
    assert "0 problems" in cli(server.database_url, "verify").stdout
