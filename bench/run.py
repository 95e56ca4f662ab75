"""The benchmark suite of issues 7 and 16, in one command: `.venv/bin/python -m bench.run`.

Seeds one PostgreSQL database and one SQLite file, then measures every peer in turn, from a
separate load process, at each concurrency and scenario it serves, for several rounds:
PostGraphile v5, pgbench (the database's own limit for the same SQL), gql_wallet on PostgreSQL
with 1 and 2 workers, gql_wallet on SQLite and bare Starlette endpoints doing the same SQL.
Then a memory soak of gql_wallet, and the ledger check. Writes bench/results/latest.{json,md,png}
(or --output's), prints PASS/FAIL per target and exits 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import report, seed
from bench.load import PGBENCH_SCENARIOS, SCENARIOS, Cell, Measurement, run_pgbench, run_wrk
from bench.peers import (
    BENCH_DIR,
    POSTGRAPHILE_DIR,
    Peer,
    bare_starlette,
    bare_starlette_pg,
    gql_wallet,
    postgraphile,
    serving,
)
from bench.soak import SoakResult, run_soak

RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"
PEERS = (
    "postgraphile",
    "pgbench",
    "gql_pg_w1",
    "gql_pg_w2",
    "gql_sqlite_w2",
    "bare_sqlite_w2",
    "bare_pg_w2",
)


@dataclass(frozen=True)
class Config:
    postgres_url: str
    database: str
    wallets: int
    organizations: int
    rounds: int
    seconds: int
    warmup_seconds: int
    concurrency: tuple[int, ...]
    pool_size: int
    peers: tuple[str, ...]
    scenarios: tuple[str, ...]
    soak_seconds: int
    soak_warmup_seconds: int
    soak_interval: float
    port: int
    output: Path

    @property
    def database_url(self) -> str:
        return f"{self.postgres_url.rsplit('/', 1)[0]}/{self.database}"

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "wallets": self.wallets,
            "organizations": self.organizations,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "warmup_seconds": self.warmup_seconds,
            "concurrency": list(self.concurrency),
            "pool_size": self.pool_size,
            "peers": list(self.peers),
            "scenarios": list(self.scenarios),
            "soak_seconds": self.soak_seconds,
            "soak_warmup_seconds": self.soak_warmup_seconds,
        }


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database on the server to benchmark, with the right to create databases",
    )
    parser.add_argument("--database", default="bench_gql_wallet", help="recreated; bench_*")
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--organizations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="per round and cell")
    parser.add_argument("--warmup-seconds", type=int, default=5, help="per peer, unmeasured")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated")
    parser.add_argument(
        "--pool-size", type=int, help="connections per server process (default: max concurrency)"
    )
    parser.add_argument("--peers", default=",".join(PEERS), help=f"subset of {','.join(PEERS)}")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"subset of {','.join(SCENARIOS)} (a peer skips those it does not serve)",
    )
    parser.add_argument("--soak-seconds", type=int, default=300, help="0 skips the soak")
    parser.add_argument("--soak-warmup-seconds", type=int, default=60)
    parser.add_argument("--port", type=int, default=8701, help="first of 6 consecutive ports")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "latest",
        help="where the results go: <output>.json, .md and .png (default: bench/results/latest)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round x 3 s, 20,000 wallets, 30 s soak"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup_seconds = 1, 3, 2
        args.wallets, args.soak_seconds, args.soak_warmup_seconds = 20_000, 30, 10
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    peers = tuple(p for p in args.peers.split(",") if p)
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    chosen = {s for s in args.scenarios.split(",") if s}
    if unknown := chosen - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if not chosen:
        parser.error("--scenarios needs at least one scenario")
    if not args.database.startswith("bench_"):
        parser.error("--database must start with bench_")
    return Config(
        postgres_url=args.postgres_url,
        database=args.database,
        wallets=args.wallets,
        organizations=args.organizations,
        rounds=args.rounds,
        seconds=args.seconds,
        warmup_seconds=args.warmup_seconds,
        concurrency=concurrency,
        pool_size=args.pool_size or max(concurrency),
        peers=peers,
        scenarios=tuple(s for s in SCENARIOS if s in chosen),
        soak_seconds=args.soak_seconds,
        soak_warmup_seconds=args.soak_warmup_seconds,
        soak_interval=2.0 if args.quick else 5.0,
        port=args.port,
        output=args.output,
    )


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def check_tools() -> None:
    missing = [tool for tool in ("wrk", "pgbench", "npm") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"missing tools: {', '.join(missing)}. On Debian: "
            "apt-get install wrk postgresql-client npm"
        )
    if not (POSTGRAPHILE_DIR / "node_modules" / ".bin" / "node").exists():
        log("installing PostGraphile (npm ci in bench/postgraphile)")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=POSTGRAPHILE_DIR,
            check=True,
            timeout=600,
        )


async def _postgres_version(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SELECT version()"))
    finally:
        await conn.close()


# One round's measurements by (peer, scenario, concurrency).
Round = dict[tuple[str, str, int], Measurement]


def measure_http(peer: Peer, tenants: seed.Tenants, config: Config, round_no: int) -> Round:
    """One round of one peer: start it, warm it up, run every (concurrency, scenario) once."""
    measured: Round = {}
    run_id = f"{peer.name}-{time.time_ns()}"
    scenarios = [s for s in config.scenarios if s in peer.workload]
    if not scenarios:
        return measured
    with serving(peer, tenants, WORK_DIR):
        # Warm-up: the scenarios of this run in equal parts.
        run_wrk(
            peer,
            tenants,
            mix=dict.fromkeys(scenarios, 1.0),
            concurrency=max(config.concurrency),
            seconds=config.warmup_seconds,
            key_prefix=f"{run_id}-warmup",
        )
        for concurrency in config.concurrency:
            for scenario in scenarios:
                measurement = run_wrk(
                    peer,
                    tenants,
                    mix={scenario: 1.0},
                    concurrency=concurrency,
                    seconds=config.seconds,
                    key_prefix=f"{run_id}-{scenario}-c{concurrency}",
                )
                _log_measurement(peer.name, scenario, concurrency, round_no, measurement)
                measured[(peer.name, scenario, concurrency)] = measurement
    return measured


def measure_pgbench(tenants: seed.Tenants, config: Config, round_no: int) -> Round:
    measured: Round = {}
    for concurrency in config.concurrency:
        for scenario in (s for s in config.scenarios if s in PGBENCH_SCENARIOS):
            measurement = run_pgbench(
                config.database_url,
                tenants,
                scenario,
                concurrency=concurrency,
                seconds=config.seconds,
                work_dir=WORK_DIR,
            )
            _log_measurement("pgbench", scenario, concurrency, round_no, measurement)
            measured[("pgbench", scenario, concurrency)] = measurement
    return measured


def _log_measurement(
    peer: str, scenario: str, concurrency: int, round_no: int, m: Measurement
) -> None:
    flag = f"  FAILED {m.failures}: {m.first_failure[:200]}" if m.failures else ""
    log(
        f"{peer} {scenario} c={concurrency} round {round_no + 1}: {m.throughput:,.0f}/s "
        f"p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms{flag}"
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    check_tools()
    WORK_DIR.mkdir(exist_ok=True)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    node = POSTGRAPHILE_DIR / "node_modules" / ".bin" / "node"
    machine = report.machine_facts(asyncio.run(_postgres_version(config.postgres_url)), node)
    sqlite_path = WORK_DIR / "bench.db"

    log(f"seeding {config.database_url} with {config.wallets:,} wallets")
    pg = seed.prepare_postgres(
        config.postgres_url, config.database_url, config.wallets, config.organizations
    )
    log(f"seeding {sqlite_path} with {config.wallets:,} wallets")
    lite = seed.prepare_sqlite(sqlite_path, config.wallets, config.organizations)

    port, pool = config.port, config.pool_size
    sqlite_url = f"sqlite:///{sqlite_path}"
    http_peers: dict[str, tuple[Peer, seed.Tenants]] = {
        "postgraphile": (postgraphile(config.database_url, port, pool), pg),
        "gql_pg_w1": (gql_wallet("gql_pg_w1", config.database_url, 1, port + 1, pool), pg),
        "gql_pg_w2": (gql_wallet("gql_pg_w2", config.database_url, 2, port + 2, pool), pg),
        "gql_sqlite_w2": (gql_wallet("gql_sqlite_w2", sqlite_url, 2, port + 3, pool), lite),
        "bare_sqlite_w2": (bare_starlette(sqlite_path, 2, port + 4, pool), lite),
        "bare_pg_w2": (bare_starlette_pg(config.database_url, 2, port + 5, pool), pg),
    }
    # Rounds go over all peers in turn, so that a slow spell of the (shared) machine lands on
    # one round of every peer rather than on every round of one peer; the medians absorb it.
    rounds: dict[tuple[str, str, int], list[Measurement]] = {}
    labels = {name: peer.label for name, (peer, _) in http_peers.items()}
    labels["pgbench"] = (
        "pgbench, same SQL (top-up, charge: the bench_top_up, bench_charge functions), postgresql"
    )
    for round_no in range(config.rounds):
        for name in config.peers:
            log(f"round {round_no + 1}/{config.rounds}: {name}")
            if name == "pgbench":
                measured = measure_pgbench(pg, config, round_no)
            else:
                peer, tenants = http_peers[name]
                measured = measure_http(peer, tenants, config, round_no)
            for key, measurement in measured.items():
                rounds.setdefault(key, []).append(measurement)
    cells = [
        Cell(
            peer, labels[peer], scenario, concurrency, tuple(rounds[(peer, scenario, concurrency)])
        )
        for peer in config.peers
        for scenario in config.scenarios
        for concurrency in config.concurrency
        if (peer, scenario, concurrency) in rounds
    ]

    soak: SoakResult | None = None
    if config.soak_seconds:
        peer = http_peers["gql_pg_w2"][0]
        log(f"soak: {peer.name} for {config.soak_seconds}s")
        soak = run_soak(
            peer,
            pg,
            seconds=config.soak_seconds,
            warmup_seconds=config.soak_warmup_seconds,
            interval=config.soak_interval,
            concurrency=max(config.concurrency),
            top_up_share=0.2,
            log_dir=WORK_DIR,
        )
        log(f"soak: RSS {soak.growth:+.1%} after warm-up, {soak.load.failures} failed")

    ledger = {
        "postgresql": seed.ledger_mismatches_postgres(config.database_url),
        "sqlite": seed.ledger_mismatches_sqlite(sqlite_path),
    }
    log(f"wallets whose balance != sum of entries: {ledger}")

    targets = report.check_targets(cells, soak)
    meta: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": config.to_json(),
    }
    results = {
        **meta,
        "cells": [cell.to_json() for cell in cells],
        "targets": [target.to_json() for target in targets],
        "soak": soak.to_json() if soak else None,
        "ledger_mismatches": ledger,
    }
    output = config.output
    report.write_json(output.with_name(output.name + ".json"), results)
    table = report.markdown(cells, targets, soak, meta)
    output.with_name(output.name + ".md").write_text(table)
    report.chart(
        output.with_name(output.name + ".png"),
        cells,
        soak,
        f"gql_wallet benchmark, {meta['finished_at']}, {meta['machine']['nproc']} x "
        f"{meta['machine']['cpu_model']} (shared machine)",
    )
    print(table)
    for target in targets:
        print(f"{target.result}  {target.name}: {target.measured}")
    print(f"wrote {output}.json, {output.name}.md, {output.name}.png")
    failed = any(cell.failures for cell in cells) or (soak is not None and soak.load.failures)
    broken = any(ledger.values())
    if failed or broken:
        print("RUN FLAGGED: failed requests or an inconsistent ledger; see the tables above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
