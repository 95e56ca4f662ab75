"""The SQLite reference of the benchmark: bare Starlette endpoints doing gql_wallet's SQL.

No GraphQL, no SQLAlchemy: a wallet lookup and a top-up as plain JSON endpoints that send the
same statements, in the same transactions, as gql_wallet does on SQLite (the API key lookup as
one autocommit statement, then the lookup's SELECT likewise, or the top-up's BEGIN IMMEDIATE,
idempotency claim, the wallet's SELECT, the SELECT of its due expiries, the ledger INSERT, the
credit block's INSERT, the balance UPDATE ... RETURNING and the outcome UPDATE, COMMIT). The gap between this and gql_wallet on the same SQLite file is what the GraphQL stack
costs.
It serves only what the benchmark sends: top-ups of seeded wallets with fresh keys (no wallet
creation, no replays, no input validation).

Run: uvicorn bench.bare_starlette:create_app --factory --workers 2, with BENCH_SQLITE_PATH
(the seeded file) and BENCH_POOL_SIZE (connections per process) in the environment.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gql_wallet.auth import bearer_token, parse_token, token_hash
from gql_wallet.ledger.credits import DEFAULT_PRIORITY, CreditCategory, burn_key
from gql_wallet.settings import Settings

MAX_SAFE_INT = 2**53 - 1
PAID_BURN_KEY = burn_key(DEFAULT_PRIORITY, None, CreditCategory.PAID)
WALLET_COLUMNS = "seq, id, organization_id, customer_id, currency, balance, created_at, modified_at"

AUTHENTICATE = (
    "SELECT api_keys.organization_id, api_keys.key_hash FROM api_keys "
    "JOIN organizations ON organizations.id = api_keys.organization_id "
    "WHERE api_keys.public_id = ? AND api_keys.revoked_at IS NULL"
)
CUSTOMER_WALLETS = (
    f"SELECT {WALLET_COLUMNS} FROM wallets "
    "WHERE wallets.organization_id = ? AND wallets.customer_id = ? ORDER BY wallets.seq"
)
CLAIM_KEY = (
    'INSERT INTO idempotency_keys (organization_id, "key", request, created_at) '
    'VALUES (?, ?, ?, ?) ON CONFLICT (organization_id, "key") DO NOTHING RETURNING "key"'
)
EXPIRY_DUE = (
    "coalesce(wallets.next_expiry_at <= strftime('%Y-%m-%d %H:%M:%f', 'now'), 0) AS expiry_due"
)
WALLET_BY_OWNER = (
    f"SELECT {WALLET_COLUMNS}, {EXPIRY_DUE} FROM wallets "
    "WHERE wallets.organization_id = ? AND wallets.customer_id = ? AND wallets.currency = ?"
)
DUE_BLOCKS = (
    "SELECT seq, remaining FROM credit_blocks WHERE wallet_seq = ? AND remaining > 0 "
    "AND expires_at <= ? ORDER BY expires_at, seq"
)
INSERT_ENTRY = (
    "INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, "
    "balance_after, description, reference, idempotency_key, created_at, reverses_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) RETURNING seq, id, wallet_seq, type, "
    "amount, balance_after, description, reference, idempotency_key, created_at, reverses_seq"
)
INSERT_BLOCK = (
    "INSERT INTO credit_blocks (id, organization_id, wallet_seq, source_seq, category, "
    "priority, expires_at, burn_key, amount, remaining, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)"
)
SET_BALANCE = (
    "UPDATE wallets SET balance=?, modified_at=?, next_expiry_at=(SELECT min(expires_at) "
    "FROM credit_blocks WHERE credit_blocks.wallet_seq = wallets.seq AND remaining > 0 "
    f"AND expires_at IS NOT NULL) WHERE wallets.seq = ? RETURNING {WALLET_COLUMNS}, {EXPIRY_DUE}"
)
RECORD_OUTCOME = (
    "UPDATE idempotency_keys SET transaction_seq=?, error_code=? "
    'WHERE idempotency_keys.organization_id = ? AND idempotency_keys."key" = ?'
)


class Pool:
    """A fixed set of SQLite connections, configured as gql_wallet configures its own."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                await conn.execute(f"PRAGMA {pragma}")
            await conn.execute("PRAGMA busy_timeout=30000")
            self.idle.put_nowait(conn)

    async def close(self) -> None:
        for _ in range(self.size):
            await (await self.idle.get()).close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """For one statement, in autocommit mode (its own implicit transaction)."""
        conn = await self.idle.get()
        try:
            yield conn
        finally:
            self.idle.put_nowait(conn)

    @asynccontextmanager
    async def transaction(self, begin: str) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self.idle.get()
        try:
            await conn.execute(begin)
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
        finally:
            self.idle.put_nowait(conn)


def _timestamp(stored: str) -> str:
    return stored.replace(" ", "T") + "+00:00"


def _wallet(row: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(row[1])),
        "customerId": row[3],
        "currency": row[4],
        "balance": row[5],
        "modifiedAt": _timestamp(row[7]),
    }


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def read_top_up(request: Request) -> tuple[str, str, int, str, str]:
    """(customer, currency, amount, idempotency key, canonical request) of a top-up body, the
    canonical request as gql_wallet's ledger writes it (shared by the PostgreSQL reference)."""
    body = orjson.loads(await request.body())
    customer, currency, amount = body["customerId"], body["currency"].lower(), body["amount"]
    canonical = json.dumps(
        {
            "type": "TOP_UP",
            "customerId": customer,
            "currency": currency,
            "amount": amount,
            "description": None,
            "reference": None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return customer, currency, amount, body["idempotencyKey"], canonical


def create_app() -> Starlette:
    pool = Pool(os.environ["BENCH_SQLITE_PATH"], int(os.environ.get("BENCH_POOL_SIZE", "32")))
    secret = Settings().token_secret_bytes

    async def organization(request: Request) -> str | None:
        token = bearer_token(request.headers.get("authorization"))
        parsed = parse_token(token) if token else None
        if parsed is None or token is None:
            return None
        async with pool.connection() as conn:
            cursor = await conn.execute(AUTHENTICATE, (parsed[1],))
            row = await cursor.fetchone()
        if row is None or not hmac.compare_digest(row[1], token_hash(secret, token)):
            return None
        return str(row[0])

    async def lookup(request: Request) -> Response:
        org = await organization(request)
        if org is None:
            return _json({"error": "UNAUTHENTICATED"}, 401)
        body = orjson.loads(await request.body())
        async with pool.connection() as conn:
            cursor = await conn.execute(CUSTOMER_WALLETS, (org, body["customerId"]))
            rows = await cursor.fetchall()
        return _json({"wallets": [_wallet(row) for row in rows]})

    async def top_up(request: Request) -> Response:
        org = await organization(request)
        if org is None:
            return _json({"error": "UNAUTHENTICATED"}, 401)
        customer, currency, amount, key, canonical = await read_top_up(request)
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        async with pool.transaction("BEGIN IMMEDIATE") as conn:
            claimed = await (await conn.execute(CLAIM_KEY, (org, key, canonical, now))).fetchone()
            if claimed is None:
                return _json({"error": "KEY_ALREADY_USED"}, 409)
            owner = (org, customer, currency)
            found = await (await conn.execute(WALLET_BY_OWNER, owner)).fetchone()
            if found is None:
                return _json({"error": "WALLET_NOT_FOUND"}, 404)
            due = await (await conn.execute(DUE_BLOCKS, (found[0], now))).fetchall()
            assert not due, "the bench's blocks never expire"
            balance = found[5] + amount
            if balance > MAX_SAFE_INT:
                return _json({"error": "BALANCE_LIMIT_EXCEEDED"}, 409)
            entry_id = uuid.uuid4()
            entry = (entry_id.hex, org, found[0], "TOP_UP", amount, balance, None, None, key, now)
            row = await (await conn.execute(INSERT_ENTRY, entry)).fetchone()
            assert row is not None
            block = (
                uuid.uuid4().hex, org, found[0], row[0], CreditCategory.PAID.value,
                DEFAULT_PRIORITY, PAID_BURN_KEY, amount, amount, now,
            )  # fmt: skip
            await conn.execute(INSERT_BLOCK, block)
            cursor = await conn.execute(SET_BALANCE, (balance, now, found[0]))
            wallet = await cursor.fetchone()
            assert wallet is not None
            await conn.execute(RECORD_OUTCOME, (row[0], None, org, key))
        return _json(
            {
                "transaction": {"id": str(entry_id), "balanceAfter": row[5]},
                "wallet": _wallet(wallet),
            }
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/lookup", lookup, methods=["POST"]),
            Route("/top-up", top_up, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
