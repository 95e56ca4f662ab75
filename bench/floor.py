"""The floor of one execution path: `.venv/bin/python -m bench.floor`.

What the cheapest authenticated GraphQL request costs gql_wallet, next to the references of
issue 7's two ratio targets, in one run (3 rounds, alternating, c=32, 2 workers each):

- `typename_sqlite`: gql_wallet on the seeded SQLite file answering `{ __typename }` with an
  API key: authentication, the rate limiter, the request log line and Strawberry's pipeline
  (the cached parse and validation, the executor), and no database read but the key's;
- `bare_lookup`: the bare Starlette endpoint's wallet lookup on the same file (bench.run's
  `bare_sqlite_w2`), the reference of "SQLite lookups >= 0.67x the bare endpoint";
- `typename_pg`: the same `{ __typename }` on the seeded PostgreSQL database;
- `pgbench_top_up`: pgbench's top-ups (bench.run's `pgbench`), the reference of "top-ups >= 0.5x
  pgbench".

A lookup or a top-up does all that `{ __typename }` does and more, so if `{ __typename }`
is below a target's line, no lookup or top-up through the same pipeline reaches it.
Needs the databases `bench.run` seeds (run it, or `bench.profile`, first); prints the ratios.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench import seed
from bench.load import Measurement, run_pgbench, run_wrk
from bench.peers import BENCH_DIR, Operation, _graphql, bare_starlette, gql_wallet, serving

WORK_DIR = BENCH_DIR / ".work"
_TYPENAME = Operation("/graphql", _graphql("{ __typename }", "{}"), ('"__typename":"Query"',))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=8721)
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(exist_ok=True)
    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/bench_gql_wallet"
    sqlite_path = WORK_DIR / "bench.db"
    pg_tenants = seed.prepare_postgres(args.postgres_url, database_url, args.wallets, 4)
    sqlite_tenants = seed.prepare_sqlite(Path(sqlite_path), args.wallets, 4)
    typename_sqlite = gql_wallet("gql_sqlite_w2", f"sqlite:///{sqlite_path}", 2, args.port, 32)
    typename_sqlite = type(typename_sqlite)(
        **{**typename_sqlite.__dict__, "workload": {"lookup": _TYPENAME}}
    )
    typename_pg = gql_wallet("gql_pg_w2", database_url, 2, args.port + 1, 32)
    typename_pg = type(typename_pg)(**{**typename_pg.__dict__, "workload": {"lookup": _TYPENAME}})
    bare = bare_starlette(Path(sqlite_path), 2, args.port + 2, 32)
    measured: dict[str, list[Measurement]] = {
        "typename_sqlite": [], "bare_lookup": [], "typename_pg": [], "pgbench_top_up": [],
    }  # fmt: skip
    for round_no in range(args.rounds):
        for name, peer, tenants in (
            ("typename_sqlite", typename_sqlite, sqlite_tenants),
            ("bare_lookup", bare, sqlite_tenants),
            ("typename_pg", typename_pg, pg_tenants),
        ):
            with serving(peer, tenants, WORK_DIR):
                run_wrk(peer, tenants, mix={"lookup": 1.0}, concurrency=args.concurrency,
                        seconds=3, key_prefix=f"warm-{name}-{round_no}")  # fmt: skip
                measured[name].append(
                    run_wrk(
                        peer,
                        tenants,
                        mix={"lookup": 1.0},
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                        key_prefix=f"{name}-{round_no}",
                    )
                )
        measured["pgbench_top_up"].append(
            run_pgbench(
                database_url,
                pg_tenants,
                "top_up",
                concurrency=args.concurrency,
                seconds=args.seconds,
                work_dir=WORK_DIR,
            )
        )
        print(
            f"[floor] round {round_no + 1}: "
            + ", ".join(f"{k} {v[-1].throughput:,.0f}/s" for k, v in measured.items()),
            flush=True,
        )
    median = {k: statistics.median(m.throughput for m in v) for k, v in measured.items()}
    failures = sum(m.failures for v in measured.values() for m in v)
    print(
        f"{{ __typename }} on SQLite / bare Starlette SQLite lookups: "
        f"{median['typename_sqlite'] / median['bare_lookup']:.2f}x (the lookup target: 0.67x)\n"
        f"{{ __typename }} on PostgreSQL / pgbench top-ups: "
        f"{median['typename_pg'] / median['pgbench_top_up']:.2f}x (the top-up target: 0.5x)\n"
        f"medians: "
        + ", ".join(f"{k} {v:,.0f}/s" for k, v in median.items())
        + f"; failed requests: {failures}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
