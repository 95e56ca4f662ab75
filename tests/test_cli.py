"""The command line: api-keys, export-schema (and the committed schema), verify."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gql_wallet.auth import token_hash
from gql_wallet.db import create_database
from gql_wallet.graphql.schema import schema
from gql_wallet.settings import Settings
from tests.conftest import Env, LiveServer, cli

ROOT = Path(__file__).resolve().parents[1]


async def sql(database_url: str, *statements: str) -> list[list[Any]]:
    """Run raw statements in one transaction, as an operator with database access would."""
    database = create_database(Settings(database_url=database_url))
    try:
        async with database.engine.begin() as conn:
            results = []
            for statement in statements:
                result = await conn.execute(text(statement))
                results.append([tuple(row) for row in result] if result.returns_rows else [])
            return results
    finally:
        await database.dispose()


def disable_append_only(dialect: str) -> str:
    if dialect == "postgresql":
        return "ALTER TABLE wallet_transactions DISABLE TRIGGER wallet_transactions_append_only"
    return "DROP TRIGGER wallet_transactions_no_update"


class TestSchemaDrift:
    def test_committed_schema_matches_the_code(self) -> None:
        committed = (ROOT / "schema.graphql").read_text()
        assert committed == schema.as_str() + "\n", (
            "schema.graphql is stale: run `gql-wallet export-schema > schema.graphql`"
        )

    def test_export_schema_prints_the_committed_file(self, database_url: str) -> None:
        assert cli(database_url, "export-schema").stdout == (ROOT / "schema.graphql").read_text()

    def test_money_is_never_a_graphql_int_or_float(self) -> None:
        sdl = schema.as_str()
        assert "Float" not in sdl
        for field in ("balance", "amount", "balanceAfter"):
            assert f"{field}: SafeInt!" in sdl


class TestApiKeys:
    def test_create_prints_a_working_key_last(self, live_server: LiveServer) -> None:
        result = cli(live_server.database_url, "api-keys", "create", "--organization", "acme")
        key = result.stdout.splitlines()[-1]
        assert key.startswith("gqlw_sk_") and len(key) > 40
        response = httpx.post(
            f"{live_server.url}/graphql",
            json={"query": "{ wallets { edges { cursor } } }"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.json() == {"data": {"wallets": {"edges": []}}}

    async def test_keys_are_stored_only_as_hashes(self, database_url: str) -> None:
        result = cli(database_url, "api-keys", "create", "--organization", "acme")
        key = result.stdout.splitlines()[-1]
        [rows] = await sql(database_url, "SELECT * FROM api_keys")
        assert len(rows) == 1
        stored = {str(value) for value in rows[0]}
        assert not any(key in value for value in stored)
        assert key.removeprefix("gqlw_sk_").split("_")[0] in stored  # the public key id
        secret = Settings(database_url=database_url).token_secret_bytes
        assert token_hash(secret, key) in stored  # keyed: not a plain digest of the key
        assert hashlib.sha256(key.encode()).hexdigest() not in stored

    async def test_same_organization_gets_a_second_key(self, database_url: str) -> None:
        for _ in range(2):
            cli(database_url, "api-keys", "create", "--organization", "acme")
        organizations, keys = await sql(
            database_url, "SELECT count(*) FROM organizations", "SELECT count(*) FROM api_keys"
        )
        assert (organizations, keys) == ([(1,)], [(2,)])

    def test_bad_database_url_is_a_clear_error(self) -> None:
        result = cli("mysql://nope", "verify", check=False)
        assert result.returncode == 2 and "GQL_WALLET_DATABASE_URL" in result.stderr


class TestVerifyAndLedgerIntegrity:
    async def test_verify_passes_on_a_consistent_ledger(self, env: Env, database_url: str) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        await env.api.charge("cus_1", 30, "k2")
        result = cli(database_url, "verify")
        assert "verified 1 wallet and 2 transactions: 0 problems" in result.stdout

    async def test_verify_names_a_wallet_whose_balance_was_tampered(
        self, env: Env, database_url: str
    ) -> None:
        good = (await env.api.top_up("cus_good", 100, "k1"))["wallet"]["id"]
        bad = (await env.api.top_up("cus_bad", 100, "k2"))["wallet"]["id"]
        await sql(database_url, "UPDATE wallets SET balance = 99 WHERE customer_id = 'cus_bad'")
        result = cli(database_url, "verify", check=False)
        assert result.returncode == 1
        assert bad in result.stdout and "balance 99 != sum of entries 100" in result.stdout
        assert good not in result.stdout

    async def test_verify_finds_a_broken_balance_after_chain(
        self, env: Env, database_url: str
    ) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        # Only by removing the append-only guard can history be rewritten at all.
        await sql(
            database_url,
            disable_append_only(env.database.dialect.name),
            "UPDATE wallet_transactions SET balance_after = 90",
        )
        result = cli(database_url, "verify", check=False)
        assert result.returncode == 1 and "balanceAfter 90, expected 100" in result.stdout

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE wallet_transactions SET amount = 1",
            "DELETE FROM wallet_transactions",
            "UPDATE wallet_transactions SET description = 'rewritten'",
            "TRUNCATE wallet_transactions CASCADE",
        ],
    )
    async def test_the_database_refuses_to_rewrite_the_ledger(
        self, env: Env, statement: str
    ) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        if statement.startswith("TRUNCATE") and env.database.dialect.name == "sqlite":
            statement = "DELETE FROM wallet_transactions WHERE 1"  # SQLite's TRUNCATE
        with pytest.raises(Exception, match="append-only"):
            async with env.database.engine.begin() as conn:
                await conn.execute(text(statement))
        assert (await env.counts())[1] == 1

    async def test_the_database_refuses_a_negative_balance(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        with pytest.raises(Exception, match=r"(?i)check constraint"):
            async with env.database.engine.begin() as conn:
                await conn.execute(text("UPDATE wallets SET balance = -1"))
