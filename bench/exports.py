"""Memory of an export of 1,000,000 entries: `.venv/bin/python -m bench.exports`.

One organization on PostgreSQL, seeded by `bench.seed` (2,000 wallets), then given
`--entries` (1,000,000) entries in all: a history of charges of 1 cent on its `usd` wallets,
each with a description, a reference and an idempotency key, in bulk SQL. Then:

- HTTP: `gql-wallet serve` (1 server process, no webhook delivery) answers
  `GET /exports/transactions?format=csv` for the whole period; the client reads the stream to
  its end, counting rows. The server's resident memory (RSS) is sampled every 50 ms, before and
  during the export. Issue 20's target: under 150 MB.
- the command: `gql-wallet export --format csv --output /dev/null`, its peak RSS as the kernel
  reports it for a finished child (ru_maxrss).

Writes bench/results/exports.json and .md (`--output`); exits 1 on a missed target or a row
count that is not the ledger's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench import seed
from bench.credits import WORK_DIR
from bench.peers import BENCH_DIR, CLI, gql_wallet, serving

DATABASE = "bench_gql_wallet_exports"
TARGET_MB = 150
WALLETS = 2_000
_HISTORY = """
WITH usd AS (SELECT seq, organization_id, balance, row_number() OVER (ORDER BY seq) - 1 AS k,
                    count(*) OVER () AS n
             FROM wallets WHERE currency = 'usd')
INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                 description, reference, idempotency_key, created_at)
SELECT gen_random_uuid(), u.organization_id, u.seq, 'CHARGE', -1, u.balance - g.i, 'Usage',
       'inv_' || u.seq || '_' || g.i, 'bulk_' || u.seq || '_' || g.i,
       now() + g.i * interval '1 microsecond'
FROM usd AS u
CROSS JOIN LATERAL generate_series(1, $1 / u.n + CASE WHEN u.k < $1 % u.n THEN 1 ELSE 0 END)
     AS g(i)
"""
_BALANCES = """
UPDATE wallets AS w SET balance = t.balance_after
FROM (SELECT DISTINCT ON (wallet_seq) wallet_seq, balance_after FROM wallet_transactions
      ORDER BY wallet_seq, seq DESC) AS t
WHERE t.wallet_seq = w.seq
"""


async def _fill(database_url: str, entries: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        have = await conn.fetchval("SELECT count(*) FROM wallet_transactions")
        if entries > have:
            await conn.execute(_HISTORY, entries - have)
            await conn.execute(_BALANCES)
        await conn.execute("VACUUM ANALYZE")
        return int(await conn.fetchval("SELECT count(*) FROM wallet_transactions"))
    finally:
        await conn.close()


class _Sampler(threading.Thread):
    """The peak RSS of a process, sampled every 50 ms until stopped."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)


def _mb(value: float) -> float:
    return round(value / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exports", description=__doc__)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=8716)
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "exports")
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(exist_ok=True)
    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/{DATABASE}"
    tenants = seed.prepare_postgres(args.postgres_url, database_url, WALLETS, 1)
    started = time.monotonic()
    entries = asyncio.run(_fill(database_url, args.entries))
    print(f"[exports] {entries:,} entries ({time.monotonic() - started:.0f} s to add)", flush=True)
    period = {
        "from": (datetime.now(UTC) - timedelta(days=30)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }
    peer = gql_wallet("gql_pg_w1", database_url, 1, args.port, 4)
    peer.env["GQL_WALLET_WEBHOOK_DELIVERY"] = "none"
    with serving(peer, tenants, WORK_DIR) as server:
        time.sleep(1)
        before = server.memory_info().rss
        sampler = _Sampler(server)
        sampler.start()
        clock, rows, size = time.monotonic(), 0, 0
        with httpx.stream(
            "GET", f"{peer.base_url}/exports/transactions",
            params={**period, "format": "csv"},
            headers={"Authorization": f"Bearer {tenants.api_keys[0]}"}, timeout=600,
        ) as answer:  # fmt: skip
            answer.raise_for_status()
            for chunk in answer.iter_bytes():
                size += len(chunk)
                rows += chunk.count(b"\n")  # a "\r\n" may straddle two chunks
        http_seconds = time.monotonic() - clock
        sampler.stopping.set()
        sampler.join()
    rows -= 1  # the header
    clock = time.monotonic()
    subprocess.run(
        [CLI, "export", "--organization", "bench_org_0", "--from", period["from"], "--to",
         period["to"], "--output", os.devnull],
        env={**os.environ, "GQL_WALLET_DATABASE_URL": database_url}, check=True,
        capture_output=True,
    )  # fmt: skip
    cli_seconds = time.monotonic() - clock
    cli_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "entries": entries,
        "http": {
            "rows": rows, "megabytes": _mb(size), "seconds": round(http_seconds, 1),
            "rows_per_second": round(rows / http_seconds),
            "server_rss_before_mb": _mb(before), "server_rss_peak_mb": _mb(sampler.peak),
        },
        "cli": {"seconds": round(cli_seconds, 1), "rss_peak_mb": _mb(cli_peak)},
        "target": f"server RSS < {TARGET_MB} MB",
        "result": "PASS" if sampler.peak < TARGET_MB * 2**20 and rows == entries else "FAIL",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    markdown = (
        f"Export of {entries:,} entries as CSV over HTTP: {rows:,} rows, {_mb(size)} MB in "
        f"{http_seconds:.1f} s ({rows / http_seconds:,.0f} rows/s). Server RSS "
        f"{_mb(before)} MB before, peak {_mb(sampler.peak)} MB during (target < {TARGET_MB} "
        f"MB): {report['result']}. `gql-wallet export` to /dev/null: {cli_seconds:.1f} s, peak "
        f"RSS {_mb(cli_peak)} MB.\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0 if report["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
