"""Load generators, each in its own process: wrk (HTTP peers) and pgbench (the database)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peers import BENCH_DIR, CHARGE_AMOUNT, TOP_UP_AMOUNT, Operation, Peer
from bench.seed import Tenants

LOAD_SCRIPT = BENCH_DIR / "load.lua"
# Issue 7's two, then issue 16's three (bench/peers.py has what each peer sends for each).
SCENARIOS = ("lookup", "top_up", "wallet_page", "charge", "wallets_page")


@dataclass(frozen=True)
class Measurement:
    """One round of one load run. Only successful responses count towards throughput."""

    requests: int
    failures: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_failure: str = ""

    @property
    def throughput(self) -> float:
        return (self.requests - self.failures) / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": round(self.throughput, 1)}


@dataclass(frozen=True)
class Cell:
    """All rounds of one (peer, scenario, concurrency)."""

    peer: str
    label: str
    scenario: str
    concurrency: int
    rounds: tuple[Measurement, ...]

    @property
    def throughput(self) -> float:
        return statistics.median(m.throughput for m in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(m.p50_ms for m in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(m.p99_ms for m in self.rounds)

    @property
    def failures(self) -> int:
        return sum(m.failures for m in self.rounds)

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.rounds)

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "label": self.label,
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "median": {
                "throughput": round(self.throughput, 1),
                "p50_ms": round(self.p50_ms, 2),
                "p99_ms": round(self.p99_ms, 2),
            },
            "requests": self.requests,
            "failures": self.failures,
            "rounds": [m.to_json() for m in self.rounds],
        }


def run_wrk(
    peer: Peer,
    tenants: Tenants,
    *,
    mix: Mapping[str, float],
    concurrency: int,
    seconds: int,
    key_prefix: str,
) -> Measurement:
    """Drive `peer` with wrk: `mix` maps scenarios to weights (one scenario: only that one;
    several: each request is one of them, in proportion to the weights)."""
    operations = [
        arg
        for scenario, weight in mix.items()
        if weight > 0
        for arg in _operation_args(peer.workload[scenario], weight, tenants)
    ]
    if not operations:
        raise ValueError("the mix needs at least one scenario with a weight above 0")
    command = [
        "wrk",
        f"--threads={min(concurrency, 2)}",
        f"--connections={concurrency}",
        f"--duration={seconds}s",
        "--timeout=10s",
        f"--script={LOAD_SCRIPT}",
        peer.base_url,
        "--",
        ",".join(tenants.organization_ids),
        ",".join(tenants.api_keys),
        key_prefix,
        *operations,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = re.search(r"^BENCH_RESULT (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = json.loads(match.group(1))
    # Connection errors and timeouts are failed requests that never produced a response.
    failures = result["failures"] + result["socket_errors"]
    return Measurement(
        requests=result["requests"] + result["socket_errors"],
        failures=failures,
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        first_failure=result["first_failure"],
    )


def _operation_args(operation: Operation, weight: float, tenants: Tenants) -> list[str]:
    customers = tenants.history_customers if operation.history else tenants.customers
    return [
        operation.path,
        operation.body,
        "&&".join(operation.expect),
        str(weight),
        str(customers),
    ]


# --- pgbench: the same SQL straight from the database's own benchmark client ---------------

_PGBENCH_SCRIPTS = {
    # Customer cus_<k> belongs to organization k % organizations: one script per organization,
    # equally weighted, draws only that organization's customers.
    "lookup": (
        "\\set n random(0, {per_org} - 1)\n"
        "SELECT seq, id, organization_id, customer_id, currency, balance, created_at, "
        "modified_at FROM wallets WHERE organization_id = '{org}' "
        "AND customer_id = 'cus_' || (:n * {orgs} + {index}) ORDER BY seq;\n"
    ),
    "top_up": (
        "\\set n random(0, {per_org} - 1)\n"
        "\\set r random(1, 9000000000000000000)\n"
        "SELECT bench_top_up('{org}', 'cus_' || (:n * {orgs} + {index}), 'usd', "
        "{top_up_amount}, 'pgbench-' || :client_id || '-' || :r);\n"
    ),
    "charge": (
        "\\set n random(0, {per_org} - 1)\n"
        "\\set r random(1, 9000000000000000000)\n"
        "SELECT bench_charge('{org}', 'cus_' || (:n * {orgs} + {index}), 'usd', "
        "{charge_amount}, 'pgbench-charge-' || :client_id || '-' || :r);\n"
    ),
}
# pgbench models the scenarios that are one statement of SQL; the pages are GraphQL shapes.
PGBENCH_SCENARIOS = tuple(_PGBENCH_SCRIPTS)


def run_pgbench(
    database_url: str,
    tenants: Tenants,
    scenario: str,
    *,
    concurrency: int,
    seconds: int,
    work_dir: Path,
) -> Measurement:
    """One pgbench run of the scenario's SQL, prepared statements, one transaction each."""
    run_dir = work_dir / f"pgbench-{scenario}-c{concurrency}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("*"):
        stale.unlink()
    orgs = len(tenants.organization_ids)
    scripts = []
    for index, org in enumerate(tenants.organization_ids):
        script = run_dir / f"org{index}.sql"
        script.write_text(
            _PGBENCH_SCRIPTS[scenario].format(
                per_org=tenants.customers // orgs,
                orgs=orgs,
                index=index,
                org=org,
                top_up_amount=TOP_UP_AMOUNT,
                charge_amount=CHARGE_AMOUNT,
            )
        )
        scripts += ["-f", f"{script}@1"]
    command = [
        "pgbench",
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={concurrency}",
        f"--jobs={min(concurrency, 2)}",
        f"--time={seconds}",
        "--log",
        f"--log-prefix={run_dir / 'tx'}",
        *scripts,
        database_url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr}")
    latencies_us = sorted(
        int(fields[2])
        for log in run_dir.glob("tx.*")
        for fields in (line.split() for line in log.read_text().splitlines())
        if fields[2].isdigit()
    )
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    tps = re.search(r"tps = ([\d.]+)", done.stdout)
    if processed is None or tps is None or not latencies_us:
        raise RuntimeError(f"unexpected pgbench output: {done.stdout}")
    successes = int(processed.group(1))
    failures = int(failed.group(1)) if failed else 0
    return Measurement(
        requests=successes + failures,
        failures=failures,
        seconds=successes / float(tps.group(1)),
        p50_ms=_percentile(latencies_us, 50) / 1000,
        p99_ms=_percentile(latencies_us, 99) / 1000,
    )


def _percentile(sorted_values: list[int], percent: float) -> float:
    index = min(len(sorted_values) - 1, round(percent / 100 * (len(sorted_values) - 1)))
    return float(sorted_values[index])
