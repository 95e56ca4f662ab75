"""Throughput through PgBouncer beside a direct connection: `.venv/bin/python -m bench.pgbouncer`.

One PostgreSQL database seeded by `bench.seed` (2,000 wallets), one PgBouncer (Debian's, in
transaction pooling mode, `--pool` server connections, as docs/deploy.md sets it up) in front
of it, and `gql-wallet serve --workers 2` twice: once on PostgreSQL directly, once through
PgBouncer (GQL_WALLET_DB_TRANSACTION_POOLER, LISTEN on the direct URL). wrk drives each with 32
connections, one scenario at a time (lookup, wallet_page, top_up, charge, and a mix of all
four), in rounds that alternate the two, so that a slow spell of the machine hits both.
Issue 21 sets no target: it asks for the two side by side, measured in one run. Writes
bench/results/pgbouncer.json and .md (`--output`); exits 1 if a request failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import seed
from bench.credits import WORK_DIR
from bench.load import run_wrk
from bench.peers import BENCH_DIR, gql_wallet, serving
from tests.pgbouncer import pgbouncer_directory, run_pgbouncer

DATABASE = "bench_gql_wallet_pgbouncer"
WALLETS = 2_000
SCENARIOS: dict[str, dict[str, float]] = {
    "lookup": {"lookup": 1.0},
    "wallet_page": {"wallet_page": 1.0},
    "top_up": {"top_up": 1.0},
    "charge": {"charge": 1.0},
    "mixed": {"lookup": 0.4, "wallet_page": 0.2, "top_up": 0.2, "charge": 0.2},
}
KINDS = ("direct", "pgbouncer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer", description=__doc__)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer's default_pool_size")
    parser.add_argument("--port", type=int, default=8717)
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "pgbouncer")
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(exist_ok=True)
    direct_url = f"{args.postgres_url.rsplit('/', 1)[0]}/{DATABASE}"
    tenants = seed.prepare_postgres(args.postgres_url, direct_url, WALLETS, 1)
    measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with (
        pgbouncer_directory() as directory,
        run_pgbouncer(directory, args.postgres_url, pool_size=args.pool) as bouncer,
    ):
        peers = {
            "direct": gql_wallet("pg_direct", direct_url, 2, args.port, 10),
            "pgbouncer": gql_wallet("pg_bouncer", bouncer.url(DATABASE), 2, args.port, 10),
        }
        peers["pgbouncer"].env.update(
            GQL_WALLET_DB_TRANSACTION_POOLER="true", GQL_WALLET_LISTEN_DATABASE_URL=direct_url
        )
        for peer in peers.values():
            peer.env["GQL_WALLET_WEBHOOK_DELIVERY"] = "none"
        for round_no in range(1, args.rounds + 1):
            order = KINDS if round_no % 2 else tuple(reversed(KINDS))
            for kind in order:
                peer = peers[kind]
                with serving(peer, tenants, WORK_DIR):
                    run_id = f"{kind}-{round_no}-{time.time_ns()}"
                    run_wrk(peer, tenants, mix=SCENARIOS["mixed"], concurrency=args.concurrency,
                            seconds=3, key_prefix=f"{run_id}-warmup")  # fmt: skip
                    for scenario, mix in SCENARIOS.items():
                        result = run_wrk(
                            peer, tenants, mix=mix, concurrency=args.concurrency,
                            seconds=args.seconds, key_prefix=f"{run_id}-{scenario}",
                        )  # fmt: skip
                        row = {
                            "rps": round(result.requests / result.seconds, 1),
                            "p50_ms": round(result.p50_ms, 2),
                            "p99_ms": round(result.p99_ms, 2),
                            "requests": result.requests,
                            "failures": result.failures,
                        }
                        measured.setdefault((kind, scenario), []).append(row)
                        print(f"[pgbouncer] round {round_no} {kind:9} {scenario:11} "
                              f"{row['rps']:8.1f}/s p50 {row['p50_ms']:6.2f} ms "
                              f"p99 {row['p99_ms']:7.2f} ms failures {row['failures']}",
                              flush=True)  # fmt: skip
    report = _report(measured, args)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    return 0 if report["failures"] == 0 else 1


def _report(
    measured: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    rows = []
    for scenario in SCENARIOS:
        direct = [r["rps"] for r in measured[("direct", scenario)]]
        pooled = [r["rps"] for r in measured[("pgbouncer", scenario)]]
        rows.append(
            {
                "scenario": scenario,
                "direct_rps": statistics.median(direct),
                "pgbouncer_rps": statistics.median(pooled),
                "ratio": round(statistics.median(pooled) / statistics.median(direct), 3),
                "round_ratios": [round(p / d, 3) for p, d in zip(pooled, direct, strict=True)],
                "direct_p99_ms": statistics.median(
                    r["p99_ms"] for r in measured[("direct", scenario)]
                ),
                "pgbouncer_p99_ms": statistics.median(
                    r["p99_ms"] for r in measured[("pgbouncer", scenario)]
                ),
            }
        )
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "pool": args.pool,
        "scenarios": rows,
        "failures": sum(r["failures"] for runs in measured.values() for r in runs),
        "runs": {f"{kind}/{scenario}": runs for (kind, scenario), runs in measured.items()},
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"PgBouncer (transaction mode, pool {report['pool']}) beside a direct connection: "
        f"gql-wallet serve --workers 2, {report['concurrency']} connections, median of "
        f"{report['rounds']} alternating rounds of {report['seconds']} s, run at "
        f"{report['at']}. Failed requests: {report['failures']}.",
        "",
        "| scenario | direct req/s | PgBouncer req/s | PgBouncer / direct | rounds | "
        "p99 direct | p99 PgBouncer |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in report["scenarios"]:
        lines.append(
            f"| {row['scenario']} | {row['direct_rps']:,.0f} | {row['pgbouncer_rps']:,.0f} | "
            f"{row['ratio']:.2f}x | {', '.join(f'{r:.2f}' for r in row['round_ratios'])} | "
            f"{row['direct_p99_ms']:.1f} ms | {row['pgbouncer_p99_ms']:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
