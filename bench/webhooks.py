"""Writes with and without a webhook endpoint: `.venv/bin/python -m bench.webhooks`.

gql_wallet with 2 workers on PostgreSQL, 32 clients, one database seeded by `bench.seed` with
two organizations (customers alternate between them; every `usd` wallet 1,000,000 cents, so
nothing is refused). The second organization has one endpoint, subscribed to every event type,
on a receiver in its own process on loopback (niced: it stands for a backend on another
machine) that answers 204 at once and notes when each event arrived. Measured in rounds that
alternate, so that a slow spell of the machine hits both:

- none: `chargeWallet` of 60 cents for the first organization's customers (no endpoint: its
  changes are not even recorded for webhooks);
- one endpoint: the same for the second organization's, each charge also recorded, dispatched
  as an event and delivered by the delivery process `gql-wallet serve` starts (niced, as by
  default), while the clients write.

Each round starts once the deliveries of the rounds before it are all made and the database is
vacuumed, as autovacuum would between bursts. Issue 19's target: write throughput with one
subscribed endpoint at least 0.8x that with none, in the same run. Also reported: the delivery
lag of each event (from the change's commit time, `createdAt`, to the receiver's answer),
p50/p99/max, under that load and at a steady `--paced-rate` (200/s) that does not saturate the
machine; and that every charge of the second organization reached the receiver. Writes
bench/results/webhooks.json and .md (`--output`); exits 1 on a failure or a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import seed
from bench.credits import WORK_DIR, _cli
from bench.holds import _charged, _Connection, _sql, _step, _Tally
from bench.load import Cell, Measurement, _percentile
from bench.peers import BENCH_DIR, gql_wallet, serving
from gql_wallet.webhooks.events import EVENT_TYPES

CUSTOMERS = 2_000
CHARGE = 60
TARGET = 0.8  # with one endpoint / with none
DATABASE = "bench_gql_wallet_webhooks"
KINDS = ("none", "one endpoint")
_CHARGE = (
    "mutation($i: ChargeWalletInput!) { chargeWallet(input: $i) "
    "{ transaction { id amount } userErrors { code } } }"
)


# ---- the receiver (its own process: `python -m bench.webhooks --receiver PORT FILE`) ----


async def _receive(port: int, out: Path) -> None:
    """Answer every POST with 204; append `<arrival unix time> <event createdAt>` per event."""
    sink = out.open("a", buffering=1)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
                event = json.loads(body)
                sink.write(f"{time.time()} {event['createdAt']} {event['id']}\n")
                del line
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# ---- the load ----


async def _clients(
    port: int, api_key: str, parity: int, concurrency: int, seconds: float, prefix: str
) -> _Tally:
    tally = _Tally()
    deadline = time.monotonic() + seconds

    async def one(c: int) -> None:
        connection = _Connection(port, api_key)
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                customer = f"cus_{random.randrange(CUSTOMERS // 2) * 2 + parity}"
                started = time.perf_counter()
                done = await _step(
                    connection, _CHARGE,
                    {"customerId": customer, "currency": "usd", "amount": CHARGE,
                     "idempotencyKey": f"{prefix}-{c}-{n}"},
                    "chargeWallet", _charged, tally,
                )  # fmt: skip
                if done is not None:
                    tally.latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    await asyncio.gather(*(one(c) for c in range(concurrency)))
    return tally


async def _paced_clients(
    port: int, api_key: str, parity: int, rate: float, seconds: float, prefix: str
) -> _Tally:
    """Charges at `rate` per second (the n-th due at n / rate s), from 16 clients."""
    tally = _Tally()
    started = time.monotonic()
    slots = itertools.count()

    async def one(c: int) -> None:
        connection = _Connection(port, api_key)
        try:
            while (n := next(slots)) < rate * seconds:
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                customer = f"cus_{random.randrange(CUSTOMERS // 2) * 2 + parity}"
                await _step(
                    connection, _CHARGE,
                    {"customerId": customer, "currency": "usd", "amount": CHARGE,
                     "idempotencyKey": f"{prefix}-{n}"},
                    "chargeWallet", _charged, tally,
                )  # fmt: skip
        finally:
            connection.close()

    await asyncio.gather(*(one(c) for c in range(16)))
    return tally


def _lags(events: list[tuple[float, float, str]], start: float, end: float) -> dict[str, Any]:
    lags = sorted(
        (arrived - created) * 1000 for arrived, created, _e in events if start <= created <= end
    )
    return {
        "events": len(lags),
        "p50": round(statistics.median(lags), 1) if lags else None,
        "p99": round(_percentile(lags, 99), 1) if lags else None,  # type: ignore[arg-type]
        "max": round(lags[-1], 1) if lags else None,
    }


def _round(
    port: int, api_key: str, parity: int, concurrency: int, seconds: float, prefix: str
) -> Measurement:
    started = time.monotonic()
    tally = asyncio.run(_clients(port, api_key, parity, concurrency, seconds, prefix))
    elapsed = time.monotonic() - started
    latencies = sorted(tally.latencies)
    return Measurement(
        requests=len(latencies) + tally.failures,
        failures=tally.failures,
        seconds=elapsed,
        p50_ms=_percentile(latencies, 50) * 1000 if latencies else 0.0,
        p99_ms=_percentile(latencies, 99) * 1000 if latencies else 0.0,
        first_failure=tally.first_failure,
    )


def _create_endpoint(port: int, api_key: str, url: str) -> None:
    async def run() -> dict[str, Any] | None:
        connection = _Connection(port, api_key)
        try:
            tally = _Tally()
            return await _step(
                connection,
                "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) "
                "{ endpoint { id } userErrors { code message } } }",
                {"url": url, "events": list(EVENT_TYPES)},
                "createWebhookEndpoint",
                lambda payload: payload["endpoint"] is not None,
                tally,
            )
        finally:
            connection.close()

    if asyncio.run(run()) is None:
        raise RuntimeError("could not create the bench's webhook endpoint")


def _drained(database_url: str, seconds: float = 180) -> None:
    """Until every recorded change is dispatched and every delivery made."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = asyncio.run(
            _sql(
                database_url,
                "SELECT (SELECT count(*) FROM webhook_outbox) + (SELECT count(*) FROM "
                "webhook_deliveries WHERE status = 'PENDING') AS n",
            )
        )[0][0]["n"]
        if left == 0:
            # What autovacuum does between bursts in production (this machine's PostgreSQL runs
            # without it): every delivery leaves dead rows behind, which claims would wade through.
            asyncio.run(_sql(database_url, "VACUUM ANALYZE"))
            return
        time.sleep(0.5)
    raise RuntimeError("webhook deliveries did not catch up within 3 minutes")


def _arrivals(path: Path) -> list[tuple[float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        arrived, created, event_id = line.split(" ")
        rows.append((float(arrived), datetime.fromisoformat(created).timestamp(), event_id))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--paced-rate", type=float, default=200.0)
    parser.add_argument("--port", type=int, default=8714)
    parser.add_argument("--receiver-port", type=int, default=8715)
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "webhooks")
    parser.add_argument("--receiver", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        # It stands for the organization's backend, on a machine of its own: here it takes only
        # the CPU the server leaves, so that what is measured is the server's cost.
        os.nice(19)
        asyncio.run(_receive(int(args.receiver[0]), Path(args.receiver[1])))
        return 0

    load_at_start = os.getloadavg()[0]
    WORK_DIR.mkdir(exist_ok=True)
    database_url = f"{args.postgres_url.rsplit('/', 1)[0]}/{DATABASE}"
    tenants = seed.prepare_postgres(args.postgres_url, database_url, CUSTOMERS * 2, 2)
    asyncio.run(_sql(database_url, "CHECKPOINT"))
    arrivals = WORK_DIR / "webhooks-arrivals.txt"
    arrivals.write_text("")
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.webhooks", "--receiver", str(args.receiver_port),
         str(arrivals)],
        cwd=BENCH_DIR.parent,
    )  # fmt: skip
    peer = gql_wallet("gql_pg_w2", database_url, 2, args.port, args.concurrency)
    peer.env["GQL_WALLET_WEBHOOKS_ALLOW_LOOPBACK_HTTP"] = "true"
    rounds: dict[str, list[Measurement]] = {kind: [] for kind in KINDS}
    try:
        time.sleep(1)
        with serving(peer, tenants, WORK_DIR):
            _create_endpoint(
                args.port, tenants.api_keys[1], f"http://127.0.0.1:{args.receiver_port}/hooks"
            )
            for parity in range(len(KINDS)):  # warm-up, not counted
                _round(args.port, tenants.api_keys[parity], parity, args.concurrency, 5, "w")
            measured_from = time.time()
            for round_no in range(args.rounds):
                order = list(enumerate(KINDS))
                for parity, kind in order if round_no % 2 == 0 else order[::-1]:
                    _drained(database_url)  # no backlog of the last round works into this one
                    prefix = f"{kind.replace(' ', '')}-{round_no}-{time.time_ns()}"
                    measured = _round(
                        args.port, tenants.api_keys[parity], parity, args.concurrency,
                        args.seconds, prefix,
                    )  # fmt: skip
                    rounds[kind].append(measured)
                    print(
                        f"[webhooks] {kind} round {round_no + 1}: {measured.throughput:,.0f}/s "
                        f"p50 {measured.p50_ms:.1f} ms p99 {measured.p99_ms:.1f} ms "
                        f"failures {measured.failures} {measured.first_failure}".rstrip(),
                        flush=True,
                    )
            measured_to = time.time()
            # Lag when the machine is not saturated: charges at a steady, lower rate.
            _drained(database_url)
            paced_from = time.time()
            paced = asyncio.run(
                _paced_clients(
                    args.port, tenants.api_keys[1], 1, args.paced_rate, args.seconds, "paced"
                )
            )
            paced_to = time.time()
            # Every entry of the second organization since its endpoint reaches the receiver.
            wanted = asyncio.run(
                _sql(
                    database_url,
                    "SELECT count(*) AS n FROM wallet_transactions AS t "
                    "JOIN webhook_endpoints AS e ON e.organization_id = t.organization_id "
                    "WHERE t.created_at >= e.created_at",
                )
            )[0][0]["n"]
            deadline = time.monotonic() + 120
            while len({e for _a, _c, e in _arrivals(arrivals)}) < wanted:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    events = _arrivals(arrivals)
    distinct = {event_id for _a, _c, event_id in events}
    verified = _cli(database_url, "verify")
    cells = {
        kind: Cell(peer.name, peer.label, kind, args.concurrency, tuple(rounds[kind]))
        for kind in KINDS
    }
    ratio = cells["one endpoint"].throughput / cells["none"].throughput
    report = {
        "machine": {"cpus": os.cpu_count(), "load": [load_at_start, os.getloadavg()[0]]},
        **{kind: cells[kind].to_json() for kind in KINDS},
        "with_over_without": round(ratio, 3),
        "per_round_with_over_without": [
            round(w.throughput / n.throughput, 3)
            for n, w in zip(rounds["none"], rounds["one endpoint"], strict=True)
        ],
        "target": f">= {TARGET}x",
        "result": "PASS" if ratio >= TARGET else "FAIL",
        "entries_of_the_endpoint_organization": wanted,
        "events_received": len(distinct),
        "deliveries_received": len(events),
        "lag_ms": _lags(events, measured_from, measured_to),
        "paced": {"rate": args.paced_rate, "failures": paced.failures},
        "paced_lag_ms": _lags(events, paced_from, paced_to),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "verify": verified.strip().splitlines()[-1],
    }
    markdown = _markdown(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown)):
        args.output.with_suffix(suffix).write_text(text)
    print(markdown)
    failures = sum(cells[kind].failures for kind in KINDS) + paced.failures
    complete = len(distinct) >= wanted and "0 problems" in report["verify"]
    return 0 if failures == 0 and complete and report["result"] == "PASS" else 1


def _markdown(report: dict[str, Any]) -> str:
    rows = "".join(
        f"| {kind} | {report[kind]['median']['throughput']:,.0f} | "
        f"{report[kind]['median']['p50_ms']} | {report[kind]['median']['p99_ms']} | "
        f"{report[kind]['failures']} |\n"
        for kind in KINDS
    )
    lag, paced, calm = report["lag_ms"], report["paced"], report["paced_lag_ms"]
    return (
        "| charges of 60 cents, c=32 | per s (median) | p50 ms | p99 ms | failed |\n"
        "|---|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"With one endpoint, writes run at {report['with_over_without']}x the rate without "
        f"(per round {', '.join(f'{r}x' for r in report['per_round_with_over_without'])}), "
        f"target {report['target']}: {report['result']}. Delivery lag under that load (commit "
        f"to the receiver's answer), over {lag['events']} events: p50 {lag['p50']} ms, p99 "
        f"{lag['p99']} ms, max {lag['max']} ms. At a steady {paced['rate']:g} charges/s "
        f"instead (the machine not saturated), over {calm['events']} events: p50 "
        f"{calm['p50']} ms, p99 {calm['p99']} ms, max {calm['max']} ms. The endpoint's "
        "organization made "
        f"{report['entries_of_the_endpoint_organization']} entries; the receiver got "
        f"{report['events_received']} distinct events in {report['deliveries_received']} "
        f"deliveries. `gql-wallet verify`: {report['verify']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
