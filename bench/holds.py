"""Holds under load: `.venv/bin/python -m bench.holds`.

gql_wallet with 2 workers on PostgreSQL, 32 clients, one database seeded by `bench.seed` (one
organization, 2,000 customers, each `usd` wallet opened with 1,000,000 cents in one PAID block,
so that nothing is ever refused). Measured, in rounds that alternate so that a slow spell of the
machine hits both sides:

- charges: `chargeWallet` of 60 cents;
- pairs: `createHold` of 100 cents, then, once it answers, `captureHold` of 60 cents of it (the
  rest is released): a pair spends what a charge spends, in two requests.

Issue 18's target: a pair costs at most 2x a charge, i.e. pairs/s >= 0.5x charges/s in the same
run (the ratio printed is charges/s over pairs/s, the cost of a pair in charges). Also printed:
the CPU per operation of gql_wallet's processes and of the bench database's PostgreSQL backends,
and that cost's ratio, which other work on the machine moves less than the throughput.

The clients are asyncio tasks in this process, one keep-alive HTTP/1.1 connection each: a pair's
capture needs the hold's id from the answer before it, which wrk's load.lua cannot chain. The
charges go through the same clients, so that both sides pay the same client costs. The latency
of a pair is from the hold's request to the capture's answer; each step's is recorded too.

The holds' tables are empty when the server starts, and the plans its connections cache then
scan them whole, ever longer as holds pile up, until an ANALYZE drops those plans (autovacuum
does within a minute, where it is on). So after the warm-up (5 s of each) the bench runs
ANALYZE, as autovacuum would (`--no-analyze`: not), and reports how many rows of the holds'
tables sequential scans read during the measured rounds.

Every response is checked (HTTP 200, no `errors`, empty `userErrors`, an OPEN hold, a
transaction of -60 cents); afterwards no hold may be left OPEN and `gql-wallet verify` must pass.
Writes bench/results/holds.json and .md (`--output`); exits 1 on a failure or a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import seed
from bench.credits import WORK_DIR, _cli
from bench.load import Cell, Measurement, _percentile
from bench.peers import BENCH_DIR, gql_wallet, serving

CUSTOMERS = 2_000
CHARGE = 60
HOLD = 100
CAPTURE = 60
TARGET = 2.0  # a pair costs at most this many charges
DATABASE = "bench_gql_wallet_holds"
KINDS = ("charges", "pairs")

_CHARGE = (
    "mutation($i: ChargeWalletInput!) { chargeWallet(input: $i) "
    "{ transaction { id amount } userErrors { code } } }"
)
_CREATE_HOLD = (
    "mutation($i: CreateHoldInput!) { createHold(input: $i) "
    "{ hold { id status } userErrors { code } } }"
)
_CAPTURE_HOLD = (
    "mutation($i: CaptureHoldInput!) { captureHold(input: $i) "
    "{ transaction { id amount } userErrors { code } } }"
)


@dataclass
class _Tally:
    """One round of one kind: latencies in seconds of each operation (a charge or a pair) and
    of each step of a pair, and what failed."""

    latencies: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=lambda: {"hold": [], "capture": []})
    failures: int = 0
    first_failure: str = ""

    def fail(self, why: str) -> None:
        self.failures += 1
        self.first_failure = self.first_failure or why


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON to /graphql: a few lines of asyncio
    where httpx spent more CPU per request than the server did (the clients share its cores)."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.head = (
            "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {api_key}\r\nContent-Length: %d\r\n\r\n"
        ).encode()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        try:
            async with asyncio.timeout(10):
                writer.write(self.head % len(body) + body)
                status = int((await reader.readline()).split()[1])
                length = None
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise ValueError("an answer without Content-Length")
                return status, await reader.readexactly(length)
        except BaseException:
            self.streams = None  # a new connection for the next request
            writer.close()
            raise

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def _step(
    connection: _Connection,
    query: str,
    variables: dict[str, Any],
    field_name: str,
    ok: Callable[[dict[str, Any]], bool],
    tally: _Tally,
) -> dict[str, Any] | None:
    """POST one mutation; its payload if it succeeded, else None (the failure counted)."""
    body = json.dumps({"query": query, "variables": {"i": variables}}).encode()
    try:
        status, text = await connection.post(body)
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as error:
        tally.fail(f"{field_name}: {type(error).__name__}: {error}")
        return None
    if status != 200:
        tally.fail(f"{field_name}: {status} {text[:300]!r}")
        return None
    try:
        answer = json.loads(text)
        payload = (answer.get("data") or {}).get(field_name)
        good = not answer.get("errors") and payload and not payload["userErrors"] and ok(payload)
    except (ValueError, KeyError, TypeError, AttributeError):
        good = False
    if not good:
        tally.fail(f"{field_name}: {text[:300]!r}")
        return None
    return payload


def _charged(payload: dict[str, Any]) -> bool:
    return payload["transaction"] is not None and payload["transaction"]["amount"] == -CHARGE


def _held(payload: dict[str, Any]) -> bool:
    return payload["hold"] is not None and payload["hold"]["status"] == "OPEN"


def _captured(payload: dict[str, Any]) -> bool:
    return payload["transaction"] is not None and payload["transaction"]["amount"] == -CAPTURE


async def _client(
    port: int, api_key: str, kind: str, deadline: float, prefix: str, tally: _Tally
) -> None:
    """One client: charges, or pairs, one after another until `deadline`."""
    client = _Connection(port, api_key)
    try:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            customer = f"cus_{random.randrange(CUSTOMERS)}"
            started = time.perf_counter()
            if kind == "charges":
                done = await _step(
                    client, _CHARGE,
                    {"customerId": customer, "currency": "usd", "amount": CHARGE,
                     "idempotencyKey": f"{prefix}-{n}"},
                    "chargeWallet", _charged, tally,
                )  # fmt: skip
            else:
                held = await _step(
                    client, _CREATE_HOLD,
                    {"customerId": customer, "currency": "usd", "amount": HOLD,
                     "idempotencyKey": f"{prefix}-{n}-hold", "description": "bench"},
                    "createHold", _held, tally,
                )  # fmt: skip
                if held is None:
                    continue
                half = time.perf_counter()
                done = await _step(
                    client, _CAPTURE_HOLD,
                    {"holdId": held["hold"]["id"], "amount": CAPTURE,
                     "idempotencyKey": f"{prefix}-{n}-capture"},
                    "captureHold", _captured, tally,
                )  # fmt: skip
                tally.steps["hold"].append(half - started)
                tally.steps["capture"].append(time.perf_counter() - half)
            if done is not None:
                tally.latencies.append(time.perf_counter() - started)
    finally:
        client.close()


def _cpu_seconds(server: psutil.Process) -> dict[str, float]:
    """CPU time so far of the server's processes (supervisor and workers), of the PostgreSQL
    backends connected to the bench database (not those of other databases, nor PostgreSQL's
    shared background processes), of this process (the clients), and of the whole machine
    (busy: neither idle nor waiting for I/O; whatever else runs on it counts too)."""
    totals = {"server": 0.0, "postgres": 0.0}
    processes = [("server", p) for p in (server, *server.children(recursive=True))]
    processes += [("postgres", p) for p in psutil.process_iter() if p.name() == "postgres"]
    for name, process in processes:
        try:
            if name == "postgres" and f" {DATABASE} " not in process.cmdline()[0]:
                continue
            times = process.cpu_times()
        except (psutil.NoSuchProcess, IndexError):
            continue
        totals[name] += times.user + times.system
    usage = resource.getrusage(resource.RUSAGE_SELF)
    machine = psutil.cpu_times()
    return {
        **totals,
        "client": usage.ru_utime + usage.ru_stime,
        "machine": sum(machine) - machine.idle - machine.iowait,
    }


def _ms(sorted_seconds: list[float], percent: float) -> float:
    return _percentile(sorted_seconds, percent) * 1000 if sorted_seconds else 0.0


def _round(
    port: int, api_key: str, kind: str, concurrency: int, seconds: int, server: psutil.Process
) -> tuple[Measurement, dict[str, Any]]:
    """`concurrency` clients doing `kind` for `seconds`: the measurement (of charges or of
    pairs) and its extras (each step's latency; CPU per operation of gql_wallet, of the bench
    database's backends, of the clients and of the machine)."""
    tally = _Tally()
    prefix = f"{kind}-{time.time_ns()}"
    cpu_before = _cpu_seconds(server)
    started = time.monotonic()

    async def run() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _client(port, api_key, kind, deadline, f"{prefix}-{c}", tally)
                for c in range(concurrency)
            )
        )

    asyncio.run(run())
    elapsed = time.monotonic() - started
    latencies = sorted(tally.latencies)
    done = len(latencies)
    measured = Measurement(
        requests=done + tally.failures,
        failures=tally.failures,
        seconds=elapsed,
        p50_ms=_ms(latencies, 50),
        p99_ms=_ms(latencies, 99),
        first_failure=tally.first_failure,
    )
    cpu_after = _cpu_seconds(server)
    extras: dict[str, Any] = {
        f"{name}_cpu_ms_per_op": round((cpu_after[name] - before) * 1000 / max(done, 1), 3)
        for name, before in cpu_before.items()
    }
    # The machine's CPU that none of the above took: other users' work (and the kernel's).
    extras["others_cpu_ms_per_op"] = round(
        extras["machine_cpu_ms_per_op"]
        - sum(extras[f"{name}_cpu_ms_per_op"] for name in ("server", "postgres", "client")),
        3,
    )
    extras["machine_busy_percent"] = round(
        (cpu_after["machine"] - cpu_before["machine"]) * 100 / (elapsed * psutil.cpu_count()), 1
    )
    for step, values in tally.steps.items() if kind == "pairs" else ():
        ordered = sorted(values)
        extras[f"{step}_p50_ms"] = round(_ms(ordered, 50), 2)
        extras[f"{step}_p99_ms"] = round(_ms(ordered, 99), 2)
    return measured, extras


async def _sql(database_url: str, *statements: str) -> list[list[asyncpg.Record]]:
    """Run each statement in one connection to the bench database; the rows of each."""
    conn = await asyncpg.connect(database_url)
    try:
        return [await conn.fetch(statement) for statement in statements]
    finally:
        await conn.close()


# Rows read by sequential scans of the holds' tables: an index lookup reads none, so this
# stays near 0 unless a plan scans the tables whole (see --no-analyze).
_SEQ_READ = (
    "SELECT coalesce(sum(seq_tup_read), 0) AS n FROM pg_stat_user_tables "
    "WHERE relname IN ('wallet_holds', 'hold_reservations')"
)


def _seq_read(database_url: str, wait: float) -> int:
    # A busy backend reports its counters once idle, at the latest 10 s later (PostgreSQL
    # 15), and when it exits: wait for them.
    time.sleep(wait)
    return int(asyncio.run(_sql(database_url, _SEQ_READ))[0][0]["n"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.holds", description=__doc__)
    options: tuple[tuple[str, Callable[[str], Any], Any], ...] = (
        ("--postgres-url", str, "postgresql://postgres@127.0.0.1:5432/postgres"),
        ("--rounds", int, 3),
        ("--seconds", int, 10),
        ("--concurrency", int, 32),
        ("--port", int, 8712),
        ("--output", Path, BENCH_DIR / "results" / "holds"),
    )
    for flag, kind, default in options:
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip the ANALYZE after the warm-up: the plans the server's connections cached "
        "while the holds' tables were empty stay, and scan them whole",
    )
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    WORK_DIR.mkdir(exist_ok=True)
    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/{DATABASE}"
    tenants = seed.prepare_postgres(args.postgres_url, database_url, CUSTOMERS * 2, 1)
    # The seed's WAL flushed now, not by a checkpoint in the middle of the measurements.
    (autovacuum,) = asyncio.run(_sql(database_url, "CHECKPOINT", "SHOW autovacuum"))[1]
    peer = gql_wallet("gql_pg_w2", database_url, 2, args.port, args.concurrency)
    api_key = tenants.api_keys[0]
    rounds: dict[str, list[Measurement]] = {kind: [] for kind in KINDS}
    extras: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with serving(peer, tenants, WORK_DIR) as server:
        for kind in KINDS:  # warm-up, not counted
            _round(args.port, api_key, kind, args.concurrency, 5, server)
        if not args.no_analyze:
            # What autovacuum's ANALYZE does within a minute of the holds' tables filling up:
            # statistics that know them, and the plans cached while they were empty dropped.
            asyncio.run(_sql(database_url, "ANALYZE"))
        seq_read = _seq_read(database_url, 11)
        for round_no in range(args.rounds):
            for kind in KINDS if round_no % 2 == 0 else KINDS[::-1]:
                measured, extra = _round(
                    args.port, api_key, kind, args.concurrency, args.seconds, server
                )
                rounds[kind].append(measured)
                extras[kind].append(extra)
                print(
                    f"[holds] {kind} round {round_no + 1}: {measured.throughput:,.0f}/s "
                    f"p50 {measured.p50_ms:.1f} ms p99 {measured.p99_ms:.1f} ms "
                    f"failures {measured.failures} {measured.first_failure}".rstrip(),
                    flush=True,
                )
    seq_read = _seq_read(database_url, 1) - seq_read  # the server's connections are closed
    verified = _cli(database_url, "verify")
    rows = asyncio.run(
        _sql(database_url, "SELECT status, count(*) AS n FROM wallet_holds GROUP BY status")
    )[0]
    holds = {row["status"]: int(row["n"]) for row in rows}
    cells = {
        kind: Cell(peer.name, peer.label, kind, args.concurrency, tuple(rounds[kind]))
        for kind in KINDS
    }
    ratio = cells["charges"].throughput / cells["pairs"].throughput
    # The same cost counted in CPU (gql_wallet's and the bench database's backends), which
    # what else runs on the machine moves less than it moves the throughput.
    cpu = {
        kind: statistics.median(
            e["server_cpu_ms_per_op"] + e["postgres_cpu_ms_per_op"] for e in extras[kind]
        )
        for kind in KINDS
    }
    report = {
        # Load averages (1 min) as the run started and ended: other work on the machine.
        "machine": {"cpus": os.cpu_count(), "load": [load_at_start, os.getloadavg()[0]]},
        "customers": CUSTOMERS,
        "cents": {"charge": CHARGE, "hold": HOLD, "capture": CAPTURE},
        **{
            kind: {
                **cells[kind].to_json(),
                # Medians over rounds of each step's latency and the CPU per operation.
                "extra": {
                    name: round(statistics.median(e[name] for e in extras[kind]), 3)
                    for name in extras[kind][0]
                },
                "rounds_extra": extras[kind],
            }
            for kind in KINDS
        },
        "pair_over_charge": round(ratio, 3),
        "per_round_pair_over_charge": [
            round(c.throughput / p.throughput, 3)
            for c, p in zip(rounds["charges"], rounds["pairs"], strict=True)
        ],
        "pair_over_charge_cpu": round(cpu["pairs"] / cpu["charges"], 3),
        "target": f"<= {TARGET}x",
        "result": "PASS" if ratio <= TARGET else "FAIL",
        "holds_by_status": holds,
        "analyzed_after_warm_up": not args.no_analyze,
        "postgres_autovacuum": autovacuum["autovacuum"],
        "holds_tables_rows_read_by_seq_scans": seq_read,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "verify": verified.strip().splitlines()[-1],
    }
    markdown = _markdown(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown)):
        args.output.with_suffix(suffix).write_text(text)
    print(markdown)
    failures = cells["charges"].failures + cells["pairs"].failures
    sound = "0 problems" in report["verify"] and holds.get("OPEN", 0) == 0
    return 0 if failures == 0 and sound and report["result"] == "PASS" else 1


def _markdown(report: dict[str, Any]) -> str:
    rows = "".join(
        f"| {label} | {cell['median']['throughput']:,.0f} | {cell['median']['p50_ms']} | "
        f"{cell['median']['p99_ms']} | {cell['extra']['server_cpu_ms_per_op']} | "
        f"{cell['extra']['postgres_cpu_ms_per_op']} | {cell['extra']['others_cpu_ms_per_op']} | "
        f"{cell['failures']} |\n"
        for label, cell in (
            (f"a charge of {report['cents']['charge']} cents", report["charges"]),
            (
                f"a pair: hold {report['cents']['hold']}, capture {report['cents']['capture']}",
                report["pairs"],
            ),
        )
    )
    steps = report["pairs"]["extra"]
    return (
        "| operation | per s (median) | p50 ms | p99 ms | gql_wallet CPU ms/op | "
        "PostgreSQL CPU ms/op | other processes' CPU ms/op | failed |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"A pair costs {report['pair_over_charge']}x a charge (charges/s over pairs/s; per "
        f"round {', '.join(f'{r}x' for r in report['per_round_pair_over_charge'])}), target "
        f"{report['target']}: {report['result']}. In CPU (gql_wallet and PostgreSQL) a pair costs "
        f"{report['pair_over_charge_cpu']}x a charge. Steps of a pair, p50 / p99: hold "
        f"{steps['hold_p50_ms']} / {steps['hold_p99_ms']} ms, capture {steps['capture_p50_ms']} / "
        f"{steps['capture_p99_ms']} ms. Holds afterwards: {report['holds_by_status']}. "
        f"ANALYZE after the warm-up: {report['analyzed_after_warm_up']} (autovacuum "
        f"{report['postgres_autovacuum']}); rows of the holds' tables read by sequential scans "
        f"in the measured rounds: {report['holds_tables_rows_read_by_seq_scans']:,}. "
        f"`gql-wallet verify`: {report['verify']}\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
