"""Profile gql_wallet under load: `.venv/bin/python -m bench.profile [--scenario top_up]`.

Seeds the bench PostgreSQL database, serves gql_wallet with one worker (so one process holds
all the work), drives it with wrk at c=32 and samples it with py-spy. Writes a flame graph
(bench/results/profile-<scenario>.svg) and prints where the CPU time goes: the share of
samples spent inside each stage of a request, and the hottest functions by own time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import seed
from bench.load import run_wrk
from bench.peers import BENCH_DIR, gql_wallet, serving

RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))

# A sample counts for a stage when any frame of its stack matches (a stage's time includes
# everything it calls, so stages nest: SQLAlchemy compile time is also in "ledger" time).
STAGES = {
    "HTTP server (uvicorn, httptools, starlette)": ("uvicorn/", "starlette/"),
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


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def summarize(raw: Path, top: int = 20) -> str:
    """Stage shares and the hottest functions from py-spy's raw (collapsed stack) output."""
    total = 0
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        total += count
        own[frames[-1]] += count
        for stage, needles in STAGES.items():
            if any(needle in frame for frame in frames for needle in needles):
                stages[stage] += count
    lines = [f"{total} samples", "", "share of samples inside each stage (stages nest):"]
    lines += [f"  {stages[stage] / total:6.1%}  {stage}" for stage in STAGES]
    lines += ["", f"top {top} functions by own time:"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--scenario", choices=("lookup", "top_up"), default="lookup")
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
    with serving(peer, tenants, WORK_DIR) as server, ThreadPoolExecutor(1) as pool:
        # With one worker, uvicorn serves in the process that `gql-wallet serve` started.
        load = pool.submit(
            run_wrk,
            peer,
            tenants,
            top_up_share=1.0 if args.scenario == "top_up" else 0.0,
            concurrency=args.concurrency,
            seconds=args.seconds + 4,
            key_prefix=f"profile-{time.time_ns()}",
        )
        time.sleep(2)
        for output, fmt in ((raw, "raw"), (svg, "flamegraph")):
            subprocess.run(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--rate",
                    "200",
                    "--duration",
                    str(args.seconds // 2),
                    "--format",
                    fmt,
                    "--output",
                    str(output),
                ],
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
        measurement = load.result()
    print(
        f"{args.scenario} at c={args.concurrency}, 1 worker, under py-spy: "
        f"{measurement.throughput:,.0f}/s, p50 {measurement.p50_ms:.1f} ms, "
        f"{measurement.failures} failed"
    )
    print(summarize(raw))
    print(f"flame graph: {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
