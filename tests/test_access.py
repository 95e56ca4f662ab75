"""Access control: customer sessions, key scopes, token format, revocation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gql_wallet import repository
from gql_wallet.auth import API_KEY_PREFIX, SCOPE_READ, _checksum, new_token, parse_token
from tests.conftest import CHARGE, TOP_UP, Api, Env, cli

SESSION = """mutation($input: CreateCustomerSessionInput!) { createCustomerSession(input: $input) {
  token customerSession { id customerId createdAt expiresAt revokedAt } userErrors { code field } } }"""
REVOKE = """mutation($id: ID!) { revokeCustomerSession(input: {id: $id}) {
  customerSession { id revokedAt } userErrors { code field } } }"""
MUTATIONS = {
    "createWallet": 'mutation { createWallet(input: {customerId: "cus_1", currency: "usd"}) { wallet { id } } }',
    "topUpWallet": 'mutation { topUpWallet(input: {customerId: "cus_1", currency: "usd", amount: 5, idempotencyKey: "x"}) { wallet { id } } }',
    "chargeWallet": 'mutation { chargeWallet(input: {customerId: "cus_1", currency: "usd", amount: 5, idempotencyKey: "y"}) { wallet { id } } }',
    "createCustomerSession": 'mutation { createCustomerSession(input: {customerId: "cus_1"}) { token } }',
    "revokeCustomerSession": 'mutation { revokeCustomerSession(input: {id: "00000000-0000-4000-8000-000000000000"}) { userErrors { code } } }',
}


async def assert_unauthenticated(api: Api) -> None:
    response = await api.post('{ customerWallets(customerId: "cus_1") { balance } }')
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "data" not in response.json()


class TestCustomerSessions:
    async def test_session_defaults_to_one_hour(self, env: Env) -> None:
        payload = (await env.api(SESSION, {"input": {"customerId": "cus_1"}}))[
            "createCustomerSession"
        ]
        assert payload["userErrors"] == [] and payload["token"].startswith("gqlw_cs_")
        session = payload["customerSession"]
        from datetime import datetime

        lifetime = datetime.fromisoformat(session["expiresAt"]) - datetime.fromisoformat(
            session["createdAt"]
        )
        assert lifetime == timedelta(hours=1)
        assert session["customerId"] == "cus_1" and session["revokedAt"] is None

    @pytest.mark.parametrize(
        ("seconds", "ok"),
        [(60, True), (86_400, True), (59, False), (86_401, False), (0, False), (-5, False)],
    )
    async def test_lifetime_is_bounded_to_24_hours(self, env: Env, seconds: int, ok: bool) -> None:
        payload = (
            await env.api(SESSION, {"input": {"customerId": "cus_1", "expiresInSeconds": seconds}})
        )["createCustomerSession"]
        if ok:
            assert payload["userErrors"] == []
        else:
            assert payload["userErrors"] == [
                {"code": "INVALID_INPUT", "field": ["input", "expiresInSeconds"]}
            ]
            assert payload["token"] is None and payload["customerSession"] is None

    @pytest.mark.parametrize("customer_id", ["", "x" * 129, "a\tb"])
    async def test_invalid_customer_id(self, env: Env, customer_id: str) -> None:
        payload = (await env.api(SESSION, {"input": {"customerId": customer_id}}))[
            "createCustomerSession"
        ]
        assert [e["code"] for e in payload["userErrors"]] == ["INVALID_CUSTOMER_ID"]

    async def test_session_reads_only_its_customer(self, env: Env) -> None:
        mine = (await env.api.top_up("cus_1", 500, "k1"))["wallet"]
        theirs = (await env.api.top_up("cus_2", 700, "k2"))["wallet"]
        await env.api.top_up("cus_1", 9, "k3", currency="eur")
        customer = await env.customer_session(env.api, "cus_1")

        data = await customer(
            '{ own: customerWallets(customerId: "cus_1") { balance currency } '
            'other: customerWallets(customerId: "cus_2") { balance } '
            'one: customerWallet(customerId: "cus_1", currency: "USD") { balance transactions { edges { node { amount wallet { customerId } } } } } '
            'otherOne: customerWallet(customerId: "cus_2", currency: "usd") { balance } '
            f'byId: wallet(id: "{mine["id"]}") {{ balance }} '
            f'otherById: wallet(id: "{theirs["id"]}") {{ balance }} '
            "all: wallets { edges { node { customerId balance } } } "
            'filtered: wallets(customerId: "cus_2") { edges { node { customerId } } } }'
        )
        assert data == {
            "own": [{"balance": 500, "currency": "usd"}, {"balance": 9, "currency": "eur"}],
            "other": [],
            "one": {
                "balance": 500,
                "transactions": {
                    "edges": [{"node": {"amount": 500, "wallet": {"customerId": "cus_1"}}}]
                },
            },
            "otherOne": None,
            "byId": {"balance": 500},
            "otherById": None,
            "all": {
                "edges": [
                    {"node": {"customerId": "cus_1", "balance": 500}},
                    {"node": {"customerId": "cus_1", "balance": 9}},
                ]
            },
            "filtered": {"edges": []},
        }

    @pytest.mark.parametrize("mutation", sorted(MUTATIONS))
    async def test_session_changes_nothing(self, env: Env, mutation: str) -> None:
        await env.api.top_up("cus_1", 500, "k1")
        customer = await env.customer_session(env.api, "cus_1")
        before = await env.counts()
        response = await customer.post(MUTATIONS[mutation])
        body = response.json()
        assert response.status_code == 200 and body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert await env.counts() == before

    async def test_expired_session_is_unauthenticated(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        customer = await env.customer_session(env.api, "cus_1", expiresInSeconds=60)
        assert await customer('{ customerWallets(customerId: "cus_1") { id } }') == {
            "customerWallets": []
        }
        real_now = repository.now_utc
        monkeypatch.setattr(repository, "now_utc", lambda: real_now() + timedelta(seconds=61))
        await assert_unauthenticated(customer)

    async def test_revoked_session_is_unauthenticated(self, env: Env) -> None:
        data = await env.api(SESSION, {"input": {"customerId": "cus_1"}})
        customer = Api(env.client, data["createCustomerSession"]["token"])
        session_id = data["createCustomerSession"]["customerSession"]["id"]
        # Another organization cannot revoke it: the session looks like a missing one.
        other = (await env.other(REVOKE, {"id": session_id}))["revokeCustomerSession"]
        assert other == {
            "customerSession": None,
            "userErrors": [{"code": "CUSTOMER_SESSION_NOT_FOUND", "field": ["input", "id"]}],
        }
        await customer('{ customerWallets(customerId: "cus_1") { id } }')

        revoked = (await env.api(REVOKE, {"id": session_id}))["revokeCustomerSession"]
        assert revoked["userErrors"] == [] and revoked["customerSession"]["revokedAt"] is not None
        await assert_unauthenticated(customer)

    @pytest.mark.parametrize("session_id", ["nope", "00000000-0000-4000-8000-000000000000"])
    async def test_revoking_an_unknown_session(self, env: Env, session_id: str) -> None:
        payload = (await env.api(REVOKE, {"id": session_id}))["revokeCustomerSession"]
        assert payload["userErrors"][0]["code"] == "CUSTOMER_SESSION_NOT_FOUND"

    async def test_revoking_the_key_ends_its_sessions(self, env: Env, database_url: str) -> None:
        key = await env.new_key("org-c")
        customer = await env.customer_session(key, "cus_1")
        await customer('{ customerWallets(customerId: "cus_1") { id } }')
        cli(database_url, "api-keys", "revoke", key.key)
        await assert_unauthenticated(key)
        await assert_unauthenticated(customer)

    async def test_a_revoked_key_is_refused_from_its_next_request(
        self, env: Env, database_url: str
    ) -> None:
        """The server remembers a token's parse and hash, never whether it is valid."""
        key = await env.new_key("org-c")
        lookup = "query($c: String!) { customerWallets(customerId: $c) { id } }"
        for _ in range(3):  # the general path, then the plan, with the token remembered
            assert (await key.post(lookup, {"c": "cus_1"})).status_code == 200
        cli(database_url, "api-keys", "revoke", key.key)
        response = await key.post(lookup, {"c": "cus_1"})
        assert response.status_code == 401
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


class TestScopes:
    async def test_read_only_key_reads(self, env: Env) -> None:
        await env.api.top_up("cus_1", 500, "k1")
        reader = await env.new_key("org-a", (SCOPE_READ,))
        assert await reader('{ customerWallets(customerId: "cus_1") { balance } }') == {
            "customerWallets": [{"balance": 500}]
        }

    @pytest.mark.parametrize("mutation", sorted(MUTATIONS))
    async def test_read_only_key_is_forbidden_to_write(self, env: Env, mutation: str) -> None:
        await env.api.top_up("cus_1", 500, "k1")
        reader = await env.new_key("org-a", (SCOPE_READ,))
        before = await env.counts()
        response = await reader.post(MUTATIONS[mutation])
        body = response.json()
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert "wallets:write" in body["errors"][0]["message"]
        assert await env.counts() == before

    async def test_write_key_may_do_everything(self, env: Env) -> None:
        for name, mutation in MUTATIONS.items():
            response = await env.api.post(mutation)
            assert "errors" not in response.json(), name


class TestTokens:
    def test_tokens_carry_a_checksum(self) -> None:
        token, public_id = new_token(API_KEY_PREFIX)
        assert parse_token(token) == (API_KEY_PREFIX, public_id)
        for i in range(len("gqlw_sk_"), len(token)):
            if token[i] == "_":
                continue
            flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
            assert parse_token(flipped) is None, i

    async def test_a_mistyped_key_is_refused(self, env: Env) -> None:
        key = env.api.key
        await assert_unauthenticated(Api(env.client, key[:-1] + ("x" if key[-1] != "x" else "y")))
        await assert_unauthenticated(Api(env.client, key + "x"))
        await assert_unauthenticated(Api(env.client, key.replace("gqlw_sk_", "gqlw_cs_")))

    async def test_another_secret_under_a_known_public_id_is_refused(self, env: Env) -> None:
        """A token whose parse and hash the server remembers vouches for no other token."""
        prefix, public_id = parse_token(env.api.key)  # type: ignore[misc]
        body = f"{prefix}{public_id}_{'A' * 32}"
        forged = body + _checksum(body)
        assert parse_token(forged) == (prefix, public_id)
        await env.api('{ customerWallets(customerId: "cus_1") { id } }')
        await assert_unauthenticated(Api(env.client, forged))
        await env.api('{ customerWallets(customerId: "cus_1") { id } }')

    async def test_keys_only_work_with_the_server_secret(self, env: Env, database_url: str) -> None:
        other_secret = cli(
            database_url,
            "api-keys",
            "create",
            "--organization",
            "x",
            env={"GQL_WALLET_TOKEN_SECRET": "another-secret-that-is-long-enough-1234567890"},
        ).stdout.splitlines()[-1]
        await assert_unauthenticated(Api(env.client, other_secret))

    def test_list_shows_keys_without_secrets_and_revoke_works(self, database_url: str) -> None:
        key = cli(
            database_url, "api-keys", "create", "--organization", "acme", "--scope", "wallets:read"
        ).stdout.splitlines()[-1]
        listing = cli(database_url, "api-keys", "list").stdout
        public_id = key.removeprefix("gqlw_sk_").split("_")[0]
        assert public_id in listing and "acme" in listing and "wallets:read" in listing
        assert key not in listing and key.split("_")[-1] not in listing
        assert "revoked API key" in cli(database_url, "api-keys", "revoke", public_id).stdout
        assert cli(database_url, "api-keys", "revoke", "nonexistent", check=False).returncode == 1
        revoked_row = next(
            line
            for line in cli(database_url, "api-keys", "list").stdout.splitlines()
            if public_id in line
        )
        assert not revoked_row.rstrip().endswith("-")


async def test_payload_shapes_of_mutations_used_elsewhere(env: Env) -> None:
    for query in (TOP_UP, CHARGE):
        response = await env.api.post(
            query,
            {
                "input": {
                    "customerId": "c",
                    "currency": "usd",
                    "amount": 1,
                    "idempotencyKey": f"k{len(query)}",
                }
            },
        )
        assert "errors" not in response.json()
