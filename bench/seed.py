"""Create and seed the benchmark databases: one PostgreSQL database and one SQLite file.

The schema comes from `gql-wallet migrate` and the organizations and API keys from
`gql-wallet api-keys create`, exactly as a user makes them. Wallets are then bulk-inserted in
SQL: customer `cus_<k>` belongs to organization `k % organizations` and has a `usd` and a `eur`
wallet, each opened by one seed top-up, with its ledger entry and idempotency record, so that
every balance equals the sum of its entries, as gql_wallet itself would have left it.

The first customers (`cus_0` up to `history_customers`, one in HISTORY_EVERY) also have a
history on their `usd` wallet: HISTORY_AMOUNTS more entries after the seed top-up, charges and
top-ups in turn, with a description and a reference, each with its idempotency record, so that
a page of that ledger (the `wallet_page` scenario) is a full page with more to follow.

Each wallet holds its balance in one PAID credit block that never expires, whose source is its
seed top-up: what revision 0007 makes of a wallet with a history (the history's entries are
older than the block, without allocations).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from gql_wallet.ledger.credits import DEFAULT_PRIORITY, CreditCategory, burn_key

CLI = str(Path(sys.executable).with_name("gql-wallet"))
CURRENCIES = ("usd", "eur")
SEED_BALANCE = 1_000_000
# After the seed top-up: a charge, a top-up, a charge...: one entry more than the wallet_page
# scenario's page, so that its page is full and has a next one.
HISTORY_AMOUNTS = tuple(-250 if i % 2 == 0 else 1_000 for i in range(11))
# One customer in this many (the first ones) has the history above.
HISTORY_EVERY = 10
# Every seeded wallet's one block: PAID, the default priority, never expiring.
BLOCK_BURN_KEY = burn_key(DEFAULT_PRIORITY, None, CreditCategory.PAID)
SQL_FUNCTIONS = tuple(
    Path(__file__).with_name("sql") / name for name in ("bench_top_up.sql", "bench_charge.sql")
)


@dataclass(frozen=True)
class Tenants:
    """The seeded organizations, in the order that maps customers to them, and their keys."""

    organization_ids: tuple[str, ...]
    api_keys: tuple[str, ...]
    customers: int
    # cus_0 .. cus_<history_customers - 1> have a ledger history on their usd wallet.
    history_customers: int


def history_customer_count(customers: int, organizations: int) -> int:
    return max(organizations, customers // HISTORY_EVERY)


def customer_count(wallets: int, organizations: int) -> int:
    per_customer = len(CURRENCIES)
    if wallets % (per_customer * organizations):
        raise ValueError(f"--wallets must be a multiple of {per_customer * organizations}")
    return wallets // per_customer


def _gql_wallet(database_url: str, *args: str) -> str:
    env = {**os.environ, "GQL_WALLET_DATABASE_URL": database_url}
    done = subprocess.run(
        [CLI, *args], env=env, check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def _migrate_and_create_keys(database_url: str, organizations: int) -> tuple[str, ...]:
    _gql_wallet(database_url, "migrate")
    return tuple(
        _gql_wallet(database_url, "api-keys", "create", "--organization", f"bench_org_{i}")
        .strip()
        .splitlines()[-1]
        for i in range(organizations)
    )


# --- PostgreSQL ----------------------------------------------------------------------------

_PG_WALLETS = """
INSERT INTO wallets (id, organization_id, customer_id, currency, balance, created_at, modified_at)
SELECT gen_random_uuid(), ($1::uuid[])[k % cardinality($1::uuid[]) + 1], 'cus_' || k, c.code,
       $3, now(), now()
FROM generate_series(0, $2 - 1) AS k CROSS JOIN unnest($4::text[]) AS c(code)
ORDER BY k, c.code
"""
_PG_ENTRIES = """
INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                 idempotency_key, created_at)
SELECT gen_random_uuid(), organization_id, seq, 'TOP_UP', balance, balance, 'seed_' || seq,
       created_at
FROM wallets ORDER BY seq
"""
# The history: $1 the amounts in ledger order, $2 the number of customers that have one.
_PG_HISTORY = """
INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                 description, reference, idempotency_key, created_at)
SELECT gen_random_uuid(), w.organization_id, w.seq,
       CASE WHEN h.amount < 0 THEN 'CHARGE' ELSE 'TOP_UP' END, h.amount,
       w.balance + sum(h.amount) OVER (PARTITION BY w.seq ORDER BY h.i),
       CASE WHEN h.amount < 0 THEN 'Usage' ELSE 'Top-up' END,
       CASE WHEN h.amount < 0 THEN 'inv_' ELSE 'pay_' END || w.seq || '_' || h.i,
       'history_' || w.seq || '_' || h.i, w.created_at
FROM wallets w CROSS JOIN unnest($1::bigint[]) WITH ORDINALITY AS h(amount, i)
WHERE w.currency = 'usd' AND substr(w.customer_id, 5)::int < $2
ORDER BY w.seq, h.i
"""
_PG_HISTORY_BALANCES = """
UPDATE wallets SET balance = balance + $1
WHERE currency = 'usd' AND substr(customer_id, 5)::int < $2
"""
_PG_KEYS = """
INSERT INTO idempotency_keys (organization_id, key, request, transaction_seq, created_at)
SELECT t.organization_id, t.idempotency_key,
       json_build_object('amount', abs(t.amount), 'currency', w.currency,
                         'customerId', w.customer_id, 'description', t.description,
                         'reference', t.reference, 'type', t.type)::text,
       t.seq, t.created_at
FROM wallet_transactions t JOIN wallets w ON w.seq = t.wallet_seq
"""

_PG_BLOCKS = """
INSERT INTO credit_blocks (id, organization_id, wallet_seq, source_seq, category, priority,
                           expires_at, burn_key, amount, remaining, created_at)
SELECT gen_random_uuid(), w.organization_id, w.seq, t.seq, $3, $2, NULL, $1, w.balance,
       w.balance, w.created_at
FROM wallets w JOIN wallet_transactions t
  ON t.organization_id = w.organization_id AND t.idempotency_key = 'seed_' || w.seq
ORDER BY w.seq
"""


async def _recreate_postgres_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _seed_postgres(
    database_url: str, organizations: int, customers: int, history_customers: int
) -> tuple[str, ...]:
    conn = await asyncpg.connect(database_url)
    try:
        org_ids = [
            await conn.fetchval("SELECT id FROM organizations WHERE name = $1", f"bench_org_{i}")
            for i in range(organizations)
        ]
        async with conn.transaction():
            await conn.execute(_PG_WALLETS, org_ids, customers, SEED_BALANCE, list(CURRENCIES))
            await conn.execute(_PG_ENTRIES)
            await conn.execute(_PG_HISTORY, list(HISTORY_AMOUNTS), history_customers)
            await conn.execute(_PG_HISTORY_BALANCES, sum(HISTORY_AMOUNTS), history_customers)
            await conn.execute(_PG_KEYS)
            await conn.execute(
                _PG_BLOCKS, BLOCK_BURN_KEY, DEFAULT_PRIORITY, CreditCategory.PAID.value
            )
            for function in SQL_FUNCTIONS:
                await conn.execute(function.read_text())
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return tuple(str(org_id) for org_id in org_ids)


def prepare_postgres(
    admin_url: str, database_url: str, wallets: int, organizations: int
) -> Tenants:
    """Drop and recreate the bench database at `database_url`, migrate it and seed it."""
    name = database_url.rsplit("/", 1)[-1]
    if not name.startswith("bench_"):
        raise ValueError(f"refusing to recreate {name!r}: bench databases are named bench_*")
    customers = customer_count(wallets, organizations)
    history = history_customer_count(customers, organizations)
    asyncio.run(_recreate_postgres_database(admin_url, name))
    keys = _migrate_and_create_keys(database_url, organizations)
    org_ids = asyncio.run(_seed_postgres(database_url, organizations, customers, history))
    return Tenants(org_ids, keys, customers, history)


# --- SQLite --------------------------------------------------------------------------------

# SQLAlchemy stores a UUID on SQLite as 32 hex digits and a datetime as naive UTC text.
_SQLITE_WALLETS = """
WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n + 1 < :customers),
orgs AS (SELECT id, row_number() OVER (ORDER BY name) - 1 AS position FROM organizations
         WHERE name LIKE 'bench_org_%')
INSERT INTO wallets (id, organization_id, customer_id, currency, balance, created_at, modified_at)
SELECT lower(hex(randomblob(16))), orgs.id, 'cus_' || k.n, c.code, :balance, :now, :now
FROM k JOIN orgs ON orgs.position = k.n % :organizations
CROSS JOIN (SELECT 'eur' AS code UNION ALL SELECT 'usd') AS c
ORDER BY k.n, c.code
"""
_SQLITE_ENTRIES = """
INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                 idempotency_key, created_at)
SELECT lower(hex(randomblob(16))), organization_id, seq, 'TOP_UP', balance, balance,
       'seed_' || seq, created_at
FROM wallets ORDER BY seq
"""
# As _PG_HISTORY; :amounts is a JSON array (json_each's key is the 0-based position).
_SQLITE_HISTORY = """
INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                 description, reference, idempotency_key, created_at)
SELECT lower(hex(randomblob(16))), w.organization_id, w.seq,
       CASE WHEN h.value < 0 THEN 'CHARGE' ELSE 'TOP_UP' END, h.value,
       w.balance + sum(h.value) OVER (PARTITION BY w.seq ORDER BY h.key),
       CASE WHEN h.value < 0 THEN 'Usage' ELSE 'Top-up' END,
       CASE WHEN h.value < 0 THEN 'inv_' ELSE 'pay_' END || w.seq || '_' || (h.key + 1),
       'history_' || w.seq || '_' || (h.key + 1), w.created_at
FROM wallets w CROSS JOIN json_each(:amounts) AS h
WHERE w.currency = 'usd' AND CAST(substr(w.customer_id, 5) AS INTEGER) < :customers
ORDER BY w.seq, h.key
"""
_SQLITE_HISTORY_BALANCES = """
UPDATE wallets SET balance = balance + :delta
WHERE currency = 'usd' AND CAST(substr(customer_id, 5) AS INTEGER) < :customers
"""
_SQLITE_KEYS = """
INSERT INTO idempotency_keys (organization_id, key, request, transaction_seq, created_at)
SELECT t.organization_id, t.idempotency_key,
       json_object('amount', abs(t.amount), 'currency', w.currency, 'customerId', w.customer_id,
                   'description', t.description, 'reference', t.reference, 'type', t.type),
       t.seq, t.created_at
FROM wallet_transactions t JOIN wallets w ON w.seq = t.wallet_seq
"""

_SQLITE_BLOCKS = """
INSERT INTO credit_blocks (id, organization_id, wallet_seq, source_seq, category, priority,
                           expires_at, burn_key, amount, remaining, created_at)
SELECT lower(hex(randomblob(16))), w.organization_id, w.seq, t.seq, :category, :priority, NULL,
       :burn_key, w.balance, w.balance, w.created_at
FROM wallets w JOIN wallet_transactions t
  ON t.organization_id = w.organization_id AND t.idempotency_key = 'seed_' || w.seq
ORDER BY w.seq
"""


def prepare_sqlite(path: Path, wallets: int, organizations: int) -> Tenants:
    """Recreate the SQLite file at `path`, migrate it and seed it."""
    if organizations > 10:
        raise ValueError("the SQLite seed orders organizations by name: at most 10")
    customers = customer_count(wallets, organizations)
    history = history_customer_count(customers, organizations)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    keys = _migrate_and_create_keys(f"sqlite:///{path}", organizations)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    with sqlite3.connect(path) as conn:
        params = {
            "customers": customers,
            "organizations": organizations,
            "balance": SEED_BALANCE,
            "now": now,
        }
        conn.execute(_SQLITE_WALLETS, params)
        conn.execute(_SQLITE_ENTRIES)
        conn.execute(
            _SQLITE_HISTORY, {"amounts": json.dumps(HISTORY_AMOUNTS), "customers": history}
        )
        conn.execute(
            _SQLITE_HISTORY_BALANCES, {"delta": sum(HISTORY_AMOUNTS), "customers": history}
        )
        conn.execute(_SQLITE_KEYS)
        conn.execute(
            _SQLITE_BLOCKS,
            {
                "category": CreditCategory.PAID.value,
                "priority": DEFAULT_PRIORITY,
                "burn_key": BLOCK_BURN_KEY,
            },
        )
        conn.execute("ANALYZE")
    return Tenants((), keys, customers, history)


# --- after the run -------------------------------------------------------------------------

_LEDGER_MISMATCHES = """
SELECT count(*) FROM wallets w
WHERE w.balance <> (SELECT coalesce(sum(t.amount), 0) FROM wallet_transactions t
                    WHERE t.wallet_seq = w.seq)
"""


async def _postgres_mismatches(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(_LEDGER_MISMATCHES))
    finally:
        await conn.close()


def ledger_mismatches_postgres(database_url: str) -> int:
    """Wallets whose balance is not the sum of their ledger entries (0 after a sound run)."""
    return asyncio.run(_postgres_mismatches(database_url))


def ledger_mismatches_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(_LEDGER_MISMATCHES).fetchone()[0])
