"""Credit blocks under load: `.venv/bin/python -m bench.credits`.

gql_wallet with 2 workers on PostgreSQL, wrk at c=32 (as `bench.run`), one database seeded in
SQL with three organizations of 2,000 `usd` wallets each:

- `spans`: 250 PROMOTIONAL blocks of 1 cent per wallet (same priority, never expiring), so that
  a charge of 5 cents spans exactly 5 blocks: one entry, 5 allocations;
- `single`: one PAID block of 1,000,000 cents per wallet: a charge of 5 cents spans 1 block;
- `expiring`: one PAID block of 1,000,000 cents (priority 10: charges spend it first) and 5
  PROMOTIONAL blocks of 100 cents (priority 90) per wallet, all 10,000 expiring at one instant
  a few seconds into a charge run.

Measured, in rounds that alternate so that a slow spell of the machine hits both sides:

1. charges spanning 5 blocks against charges from 1 block (the ratio is the cost of the spans);
2. charges on the `expiring` wallets across the instant their 10,000 blocks expire, against
   charges on `single` in the same round, and how long after that instant the last EXPIRATION
   entry is written (the write path writes a wallet's due expiries first; the sweeper, every
   30 s by default, writes the rest).

Every response is checked (a CHARGE, no userErrors); afterwards `gql-wallet verify` must pass.
Writes bench/results/credits.json and .md (`--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import seed
from bench.load import Measurement, run_wrk
from bench.peers import BENCH_DIR, GQL_LOOKUP, Operation, _graphql, gql_wallet, serving
from gql_wallet.ledger.credits import CreditCategory, burn_key

WORK_DIR = BENCH_DIR / ".work"
WALLETS = 2_000
CHARGE = 5
SPAN_BLOCKS = 250
EXPIRING_BLOCKS = 5
ORGANIZATIONS = ("spans", "single", "expiring")

_CHARGE = Operation(
    "/graphql",
    _graphql(
        "mutation Charge($input: ChargeWalletInput!) { chargeWallet(input: $input) { "
        "wallet { balance } transaction { id type amount allocations { amount } } "
        "userErrors { code field message } } }",
        f'{{"input": {{"customerId": "$CUSTOMER", "currency": "usd", "amount": {CHARGE}, '
        '"idempotencyKey": "$KEY"}}',
        "Charge",
    ),
    ('"type":"CHARGE"', '"userErrors":[]'),
)

# One organization's wallets and their blocks, in one statement: $2 .. $7 describe the blocks
# every wallet gets (entry type, amount, category, priority, expiry, burn key), in order.
_SEED = """
WITH made AS (
  INSERT INTO wallets (id, organization_id, customer_id, currency, balance, created_at,
                       modified_at)
  SELECT gen_random_uuid(), $1, 'cus_' || k, 'usd', 0, now(), now()
  FROM generate_series(0, $8 - 1) AS k
  RETURNING seq, organization_id
), spec AS (
  SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::int[], $6::timestamptz[],
                       $7::text[]) WITH ORDINALITY AS s(type, amount, category, priority,
                                                         expires_at, burn_key, i)
), entries AS (
  INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                   idempotency_key, created_at)
  SELECT gen_random_uuid(), m.organization_id, m.seq, s.type, s.amount,
         sum(s.amount) OVER (PARTITION BY m.seq ORDER BY s.i), 'seed_' || m.seq || '_' || s.i,
         now()
  FROM made m CROSS JOIN spec s
  RETURNING seq, organization_id, wallet_seq, idempotency_key
)
INSERT INTO credit_blocks (id, organization_id, wallet_seq, source_seq, category, priority,
                           expires_at, burn_key, amount, remaining, created_at)
SELECT gen_random_uuid(), e.organization_id, e.wallet_seq, e.seq, s.category, s.priority,
       s.expires_at, s.burn_key, s.amount, s.amount, now()
FROM entries e JOIN spec s ON e.idempotency_key = 'seed_' || e.wallet_seq || '_' || s.i
"""
_BALANCES = """
UPDATE wallets w SET balance = b.total, next_expiry_at = b.soonest
FROM (SELECT wallet_seq, sum(remaining) AS total, min(expires_at) AS soonest
      FROM credit_blocks GROUP BY wallet_seq) AS b
WHERE b.wallet_seq = w.seq
"""


def _blocks(*specs: tuple[int, int, CreditCategory, int, datetime | None]) -> list[list[Any]]:
    """(count, amount, category, priority, expiry) -> the columns of _SEED's block arrays."""
    rows = [
        (
            "TOP_UP" if category is CreditCategory.PAID else "GRANT",
            amount,
            category.value,
            priority,
            expires_at,
            burn_key(priority, expires_at, category),
        )
        for count, amount, category, priority, expires_at in specs
        for _ in range(count)
    ]
    return [list(column) for column in zip(*rows, strict=True)]


async def _seed(database_url: str, expire_at: datetime) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        blocks = {
            "spans": _blocks((SPAN_BLOCKS, 1, CreditCategory.PROMOTIONAL, 50, None)),
            "single": _blocks((1, 1_000_000, CreditCategory.PAID, 50, None)),
            "expiring": _blocks(
                (1, 1_000_000, CreditCategory.PAID, 10, None),
                (EXPIRING_BLOCKS, 100, CreditCategory.PROMOTIONAL, 90, expire_at),
            ),
        }
        ids = {}
        async with conn.transaction():
            for name in ORGANIZATIONS:
                org = await conn.fetchval("SELECT id FROM organizations WHERE name = $1", name)
                ids[name] = str(org)
                await conn.execute(_SEED, org, *blocks[name], WALLETS)
            await conn.execute(_BALANCES)
        await conn.execute("VACUUM ANALYZE")
        # The seed's WAL flushed now, not by a checkpoint in the middle of the measurements.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return ids


async def _expirations(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM wallet_transactions WHERE type = 'EXPIRATION'"
            )
        )
    finally:
        await conn.close()


def _cli(database_url: str, *args: str) -> str:
    return subprocess.run(
        [seed.CLI, *args],
        env={"GQL_WALLET_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout


def _summary(rounds: list[Measurement]) -> dict[str, float]:
    return {
        "throughput": round(statistics.median(m.throughput for m in rounds), 1),
        "p99_ms": round(statistics.median(m.p99_ms for m in rounds), 2),
        "failures": sum(m.failures for m in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.credits", description=__doc__)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8711)
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "credits")
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(exist_ok=True)
    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/bench_gql_wallet_credits"
    asyncio.run(seed._recreate_postgres_database(args.postgres_url, "bench_gql_wallet_credits"))
    _cli(database_url, "migrate")
    keys = {
        name: _cli(database_url, "api-keys", "create", "--organization", name).splitlines()[-1]
        for name in ORGANIZATIONS
    }
    # The expiring blocks expire this long into the expiry run (seeded a day ahead, so that
    # nothing expires before it; moved just before it).
    expiry_offset = 4.0
    expiry_seconds = args.seconds * 2
    ids = asyncio.run(_seed(database_url, datetime.now(UTC) + timedelta(days=1)))
    tenants = {
        name: seed.Tenants((ids[name],), (keys[name],), WALLETS, 0) for name in ORGANIZATIONS
    }
    peer = gql_wallet("gql_pg_w2", database_url, 2, args.port, args.concurrency)
    # `lookup` is what `serving` asks to know that the server answers.
    peer = type(peer)(**{**peer.__dict__, "workload": {"lookup": GQL_LOOKUP, "charge": _CHARGE}})
    results: dict[str, list[Measurement]] = {"spans": [], "single": []}
    expiry: dict[str, Any] = {}
    with serving(peer, tenants["single"], WORK_DIR):
        run_wrk(peer, tenants["single"], mix={"charge": 1.0}, concurrency=args.concurrency,
                seconds=5, key_prefix=f"warm-{time.time_ns()}")  # fmt: skip
        for round_no in range(args.rounds):
            order = ("spans", "single") if round_no % 2 == 0 else ("single", "spans")
            for name in order:
                measured = run_wrk(
                    peer, tenants[name], mix={"charge": 1.0}, concurrency=args.concurrency,
                    seconds=args.seconds, key_prefix=f"{name}-{round_no}-{time.time_ns()}",
                )  # fmt: skip
                results[name].append(measured)
                print(
                    f"[credits] {name} round {round_no + 1}: {measured.throughput:,.0f}/s "
                    f"p99 {measured.p99_ms:.1f} ms failures {measured.failures}",
                    flush=True,
                )
        # The expiry run: the 10,000 blocks expire `expiry_offset` s into it.
        instant = datetime.now(UTC) + timedelta(seconds=expiry_offset + 1)
        asyncio.run(_move_expiry(database_url, ids["expiring"], instant))
        counted: list[tuple[float, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                counted.append((time.monotonic(), asyncio.run(_expirations(database_url))))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        while datetime.now(UTC) < instant - timedelta(seconds=expiry_offset):
            time.sleep(0.05)
        instant_monotonic = time.monotonic() + expiry_offset
        watcher.start()
        during = run_wrk(
            peer, tenants["expiring"], mix={"charge": 1.0}, concurrency=args.concurrency,
            seconds=expiry_seconds, key_prefix=f"expiring-{time.time_ns()}",
        )  # fmt: skip
        beside = run_wrk(
            peer, tenants["single"], mix={"charge": 1.0}, concurrency=args.concurrency,
            seconds=expiry_seconds, key_prefix=f"beside-{time.time_ns()}",
        )  # fmt: skip
        deadline = time.monotonic() + 90
        total = WALLETS * EXPIRING_BLOCKS
        while time.monotonic() < deadline and (not counted or counted[-1][1] < total):
            time.sleep(0.5)
        stop.set()
        watcher.join()
        done_at = next((t for t, n in counted if n >= WALLETS * EXPIRING_BLOCKS), None)
        expiry = {
            "blocks": WALLETS * EXPIRING_BLOCKS,
            "expired": counted[-1][1] if counted else 0,
            "seconds_after_expiry_until_all_written": (
                None if done_at is None else round(max(0.0, done_at - instant_monotonic), 1)
            ),
            "during": {**_summary([during])},
            "beside": {**_summary([beside])},
        }
    verified = _cli(database_url, "verify")
    spans, single = _summary(results["spans"]), _summary(results["single"])
    report = {
        "machine": {"cpus": os.cpu_count()},
        "wallets_per_organization": WALLETS,
        "charge_cents": CHARGE,
        "spans": spans,
        "single": single,
        "spans_over_single": round(spans["throughput"] / single["throughput"], 3),
        "expiry": expiry,
        "expiry_over_beside": round(
            expiry["during"]["throughput"] / expiry["beside"]["throughput"], 3
        ),
        "verify": verified.strip().splitlines()[-1],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    failures = spans["failures"] + single["failures"]
    failures += expiry["during"]["failures"] + expiry["beside"]["failures"]
    complete = expiry["expired"] == expiry["blocks"]
    return 0 if failures == 0 and complete and "0 problems" in report["verify"] else 1


async def _move_expiry(database_url: str, organization_id: str, instant: datetime) -> None:
    """Set the expiring organization's promotional blocks to expire at `instant` (they were
    seeded far in the future, so that nothing expired during the earlier runs)."""
    conn = await asyncpg.connect(database_url)
    try:
        key = burn_key(90, instant, CreditCategory.PROMOTIONAL)
        async with conn.transaction():
            await conn.execute(
                "UPDATE credit_blocks SET expires_at = $2, burn_key = $3 "
                "WHERE organization_id = $1 AND expires_at IS NOT NULL",
                organization_id, instant, key,
            )  # fmt: skip
            await conn.execute(
                "UPDATE wallets SET next_expiry_at = $2 WHERE organization_id = $1",
                organization_id, instant,
            )  # fmt: skip
    finally:
        await conn.close()


def _markdown(report: dict[str, Any]) -> str:
    spans, single, expiry = report["spans"], report["single"], report["expiry"]
    return (
        "| measurement | charges/s (median) | p99 ms | failed |\n|---|---:|---:|---:|\n"
        f"| a charge spanning 5 blocks | {spans['throughput']:,.0f} | {spans['p99_ms']} | "
        f"{spans['failures']} |\n"
        f"| a charge from 1 block | {single['throughput']:,.0f} | {single['p99_ms']} | "
        f"{single['failures']} |\n"
        f"| charges while {expiry['blocks']:,} blocks expire | "
        f"{expiry['during']['throughput']:,.0f} | {expiry['during']['p99_ms']} | "
        f"{expiry['during']['failures']} |\n"
        f"| charges from 1 block, same round | {expiry['beside']['throughput']:,.0f} | "
        f"{expiry['beside']['p99_ms']} | {expiry['beside']['failures']} |\n\n"
        f"5 blocks / 1 block: {report['spans_over_single']}x. During the expiry / beside it: "
        f"{report['expiry_over_beside']}x. All {expiry['blocks']:,} expiries written "
        f"{expiry['seconds_after_expiry_until_all_written']} s after the instant "
        f"({expiry['expired']:,} written). `gql-wallet verify`: {report['verify']}\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
