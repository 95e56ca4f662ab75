"""The PostgreSQL reference of the benchmark: bare Starlette endpoints doing gql_wallet's SQL.

What Python can do here with no GraphQL and no SQLAlchemy: plain JSON endpoints on asyncpg that
send exactly the statements gql_wallet sends on PostgreSQL, each in autocommit mode as gql_wallet
does: the API key lookup by public id (then the HMAC check), then either the wallets SELECT or
one call of `gql_wallet_balance_change` (migrations/sql/), the function gql_wallet's top-up calls.
The gap between this and gql_wallet on the same database is what the GraphQL and ORM layers
cost; the gap between this and PostGraphile is what the Python web stack costs.
It serves only what the benchmark sends (no input validation, no replays).

Run: uvicorn bench.bare_starlette_pg:create_app --factory --workers 2, with BENCH_POSTGRES_URL
(the seeded database) and BENCH_POOL_SIZE (connections per process) in the environment.
"""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.bare_starlette import _json, read_top_up
from gql_wallet.auth import bearer_token, parse_token, token_hash
from gql_wallet.ledger.credits import DEFAULT_PRIORITY, CreditCategory, burn_key
from gql_wallet.ledger.service import EXPIRATION
from gql_wallet.money import MAX_SAFE_INT
from gql_wallet.repository import LEDGER_CHANNEL
from gql_wallet.settings import Settings

AUTHENTICATE = (
    "SELECT api_keys.organization_id, api_keys.key_hash FROM api_keys "
    "JOIN organizations ON organizations.id = api_keys.organization_id "
    "WHERE api_keys.public_id = $1 AND api_keys.revoked_at IS NULL"
)
CUSTOMER_WALLETS = (
    "SELECT seq, id, organization_id, customer_id, currency, balance, created_at, modified_at "
    "FROM wallets WHERE organization_id = $1 AND customer_id = $2 ORDER BY seq"
)
BALANCE_CHANGE = (
    "SELECT r.outcome, (r.wallet).id, (r.wallet).customer_id, (r.wallet).currency, "
    "(r.wallet).balance, (r.wallet).modified_at, (r.entry).id AS entry_id, "
    "(r.entry).balance_after FROM gql_wallet_balance_change("
    + ", ".join(f"${i}" for i in range(1, 25))
    + ") AS r"
)


PAID_BURN_KEY = burn_key(DEFAULT_PRIORITY, None, CreditCategory.PAID)


def _wallet(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "customerId": row["customer_id"],
        "currency": row["currency"],
        "balance": row["balance"],
        "modifiedAt": row["modified_at"].isoformat(),
    }


def create_app() -> Starlette:
    url = os.environ["BENCH_POSTGRES_URL"]
    size = int(os.environ.get("BENCH_POOL_SIZE", "32"))
    secret = Settings().token_secret_bytes
    pools: list[asyncpg.Pool] = []

    async def organization(request: Request) -> uuid.UUID | None:
        token = bearer_token(request.headers.get("authorization"))
        parsed = parse_token(token) if token else None
        if parsed is None or token is None:
            return None
        row = await pools[0].fetchrow(AUTHENTICATE, parsed[1])
        if row is None or not hmac.compare_digest(row[1], token_hash(secret, token)):
            return None
        return row[0]  # type: ignore[no-any-return]

    async def lookup(request: Request) -> Response:
        org = await organization(request)
        if org is None:
            return _json({"error": "UNAUTHENTICATED"}, 401)
        body = orjson.loads(await request.body())
        rows = await pools[0].fetch(CUSTOMER_WALLETS, org, body["customerId"])
        return _json({"wallets": [_wallet(row) for row in rows]})

    async def top_up(request: Request) -> Response:
        org = await organization(request)
        if org is None:
            return _json({"error": "UNAUTHENTICATED"}, 401)
        customer, currency, amount, key, canonical = await read_top_up(request)
        row = await pools[0].fetchrow(
            BALANCE_CHANGE,
            org,
            key,
            canonical,
            customer,
            currency,
            "TOP_UP",
            amount,
            0,
            MAX_SAFE_INT,
            None,
            None,
            True,
            uuid.uuid4(),
            uuid.uuid4(),
            LEDGER_CHANNEL,
            "WALLET_NOT_FOUND",
            "BALANCE_LIMIT_EXCEEDED",
            uuid.uuid4(),  # the top-up's credit block: PAID, the default priority, never expiring
            CreditCategory.PAID.value,
            DEFAULT_PRIORITY,
            None,
            PAID_BURN_KEY,
            EXPIRATION.type,
            EXPIRATION.key_prefix,
        )
        assert row is not None
        if row["outcome"] != "applied":
            return _json({"error": row["outcome"]}, 409)
        return _json(
            {
                "transaction": {"id": str(row["entry_id"]), "balanceAfter": row["balance_after"]},
                "wallet": _wallet(row),
            }
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        pools.append(await asyncpg.create_pool(url, min_size=size, max_size=size))
        try:
            yield
        finally:
            await pools[0].close()

    return Starlette(
        routes=[
            Route("/lookup", lookup, methods=["POST"]),
            Route("/top-up", top_up, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
