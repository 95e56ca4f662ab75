"""Profile gql_wallet under load: `.venv/bin/python -m bench.profile [--scenario top_up]`.

Seeds the bench PostgreSQL database, serves gql_wallet with one worker (so one process holds
all the work), drives it with wrk at c=32 and samples it with py-spy. Writes a flame graph
(bench/results/profile-<scenario>.svg) and prints where the CPU time goes: the share of
samples spent inside each stage of a request, and the hottest functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import psutil

from bench import seed
from bench.load import SCENARIOS, run_wrk
from bench.peers import BENCH_DIR, gql_wallet, serving

RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
# An idle PostgreSQL backend publishes its statistics after at most 10 s.
PGSTAT_IDLE_FLUSH_SECONDS = 11

# A sample counts for a stage when any frame of its stack matches (a stage's time includes
# everything it calls, so stages nest: SQLAlchemy compile time is also in "ledger" time).
STAGES = {
    "authentication (API key lookup)": ("authenticate (gql_wallet/auth.py",),
    "GraphQL parse": ("parse_document", "graphql/language/parser"),
    "GraphQL validation": ("validate_document", "graphql/validation/"),
    "GraphQL execution (strawberry, graphql-core)": ("graphql/execution/",),
    "ledger write service": ("gql_wallet/ledger.py",),
    "SQLAlchemy statement compile": ("sqlalchemy/sql/compiler.py",),
    "SQLAlchemy pool checkout (incl. pre-ping)": ("sqlalchemy/pool/",),
    "asyncpg driver": ("asyncpg/",),
    "JSON (orjson, json)": ("orjson", "json/"),
}
# Own time (the innermost frame) grouped by where that frame's code lives.
LIBRARIES = (
    "asyncpg/", "sqlalchemy/", "graphql/", "strawberry/", "uvicorn/", "starlette/",
    "gql_wallet/", "asyncio/",
)  # fmt: skip


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def summarize(raw: Path, top: int = 20) -> str:
    """Stage shares and the hottest functions from py-spy's raw (collapsed stack) output."""
    total = 0
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        total += count
        own[frames[-1]] += count
        library = next((lib for lib in LIBRARIES if lib in frames[-1]), "other")
        libraries[library.rstrip("/")] += count
        for stage, needles in STAGES.items():
            if any(needle in frame for frame in frames for needle in needles):
                stages[stage] += count
    lines = [f"{total} samples", "", "share of samples inside each stage (stages nest):"]
    lines += [f"  {stages[stage] / total:6.1%}  {stage}" for stage in STAGES]
    lines += ["", "own time by library:"]
    lines += [f"  {count / total:6.1%}  {lib}" for lib, count in libraries.most_common()]
    lines += ["", f"top {top} functions by own time:"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    return "\n".join(lines)


def _cpu_seconds(server: psutil.Process) -> float:
    times = server.cpu_times()
    return float(times.user + times.system)


def _transactions(database_url: str) -> int:
    """Commits plus rollbacks of the database so far (a pre-ping is one rolled-back BEGIN)."""

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def _py_spy(pid: int, seconds: int, fmt: str, output: Path) -> None:
    # py-spy writes its command line into the flame graph: keep this machine's paths out of it.
    root = BENCH_DIR.parent
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--duration", str(seconds)]
    command += ["--format", fmt, "--output", str(output.relative_to(root))]
    environment = {**os.environ, "PATH": f"{Path(PY_SPY).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        command, check=True, capture_output=True, timeout=seconds + 60, cwd=root, env=environment
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--scenario", choices=SCENARIOS, default="lookup")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="bench_gql_wallet_profile")
    parser.add_argument("--port", type=int, default=8710)
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(exist_ok=True)
    RESULTS_DIR.mkdir(exist_ok=True)

    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/{args.database}"
    tenants = seed.prepare_postgres(args.postgres_url, database_url, args.wallets, 4)
    peer = gql_wallet("gql_pg_w1", database_url, 1, args.port, args.concurrency)
    raw = WORK_DIR / f"profile-{args.scenario}.txt"
    svg = RESULTS_DIR / f"profile-{args.scenario}.svg"
    with serving(peer, tenants, WORK_DIR) as server:
        # Unprofiled first: what one request costs the server's CPU and the database.
        cpu_before, xacts_before = _cpu_seconds(server), _transactions(database_url)
        plain = run_wrk(
            peer,
            tenants,
            mix={args.scenario: 1.0},
            concurrency=args.concurrency,
            seconds=args.seconds,
            key_prefix=f"profile-plain-{time.time_ns()}",
        )
        cpu = _cpu_seconds(server) - cpu_before
        time.sleep(PGSTAT_IDLE_FLUSH_SECONDS)
        xacts = _transactions(database_url) - xacts_before
        with ThreadPoolExecutor(1) as pool:
            # With one worker, uvicorn serves in the process that `gql-wallet serve` started.
            profiled = pool.submit(
                run_wrk,
                peer,
                tenants,
                mix={args.scenario: 1.0},
                concurrency=args.concurrency,
                seconds=args.seconds + 4,
                key_prefix=f"profile-{time.time_ns()}",
            )
            time.sleep(2)
            for output, fmt in ((raw, "raw"), (svg, "flamegraph")):
                _py_spy(server.pid, args.seconds // 2, fmt, output)
            failures = plain.failures + profiled.result().failures
    print(
        f"{args.scenario} at c={args.concurrency}, 1 worker: {plain.throughput:,.0f}/s, "
        f"p50 {plain.p50_ms:.1f} ms, {failures} failed; per request: "
        f"{cpu / plain.requests * 1000:.2f} ms of server CPU "
        f"({cpu / plain.seconds:.0%} of a core), "
        f"{xacts / plain.requests:.2f} PostgreSQL transactions"
    )
    print(summarize(raw))
    print(f"flame graph: {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
