"""Commit-to-client latency of walletUpdated with many subscribers.

Starts `gql-wallet serve` on PostgreSQL (or SQLite), connects SUBSCRIBERS WebSocket clients from
several client processes (so that the clients' own parsing does not queue up behind one core),
then commits top-ups one at a time and records, for every subscriber and event, the time from the
transaction's createdAt (taken just before its commit) to its arrival at the client.

    .venv/bin/python bench/subscriptions.py --subscribers 1000 --events 50 [--database-url URL]

Loopback only. Prints p50/p90/p99/max and writes bench/results/subscriptions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("gql-wallet"))
QUERY = (
    "subscription($c: String!) { walletUpdated(customerId: $c) "
    "{ wallet { balance } transaction { createdAt } } }"
)
TOP_UP = (
    'mutation($k: String!) { topUpWallet(input: {customerId: "bench", currency: "usd", '
    "amount: 1, idempotencyKey: $k}) { userErrors { code } } }"
)

EXECUTIONS = "gql_wallet_subscription_executions_total"


def metric_total(text: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text format."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )


async def client_process_main(
    url: str, key: str, count: int, events: int, out: multiprocessing.Queue[Any]
) -> None:
    latencies: list[float] = []
    ready = 0

    async def one() -> None:
        nonlocal ready
        async with websockets.connect(
            url, subprotocols=[Subprotocol("graphql-transport-ws")], max_queue=None
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"token": key}}))
            await ws.recv()
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "1",
                        "payload": {"query": QUERY, "variables": {"c": "bench"}},
                    }
                )
            )
            await ws.recv()  # the current state
            ready += 1
            if ready == count:
                out.put(("ready", 0))
            for _ in range(events):
                message = json.loads(await ws.recv())
                arrived = time.time()
                created = message["payload"]["data"]["walletUpdated"]["transaction"]["createdAt"]
                latencies.append(arrived - datetime.fromisoformat(created).timestamp())

    await asyncio.gather(*[one() for _ in range(count)])
    out.put(("latencies", latencies))


def client_process(
    url: str, key: str, count: int, events: int, out: multiprocessing.Queue[Any]
) -> None:
    asyncio.run(client_process_main(url, key, count, events, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between commits")
    parser.add_argument("--port", type=int, default=8765, help="the server's port on 127.0.0.1")
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/bench_subscriptions"
    )
    args = parser.parse_args()

    if args.database_url.startswith("postgresql"):
        name = args.database_url.rsplit("/", 1)[1]
        admin = args.database_url.rsplit("/", 1)[0] + "/postgres"
        subprocess.run(
            ["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=True
        )
        subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
    env = {
        **os.environ,
        "GQL_WALLET_DATABASE_URL": args.database_url,
        "GQL_WALLET_RATE_LIMIT_API_KEY": "",
        "GQL_WALLET_SUBSCRIPTION_MAX_CONNECTIONS": str(args.subscribers + 10),
    }
    key = subprocess.run(
        [CLI, "api-keys", "create", "--organization", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()[-1]
    port = args.port
    log = tempfile.NamedTemporaryFile(prefix="bench-subscriptions-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/graphql", headers={"Accept": "text/html"})
                break
            except httpx.TransportError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        httpx.post(
            f"{base}/graphql", json={"query": TOP_UP, "variables": {"k": "seed"}}, headers=headers
        )

        out: multiprocessing.Queue[Any] = multiprocessing.Queue()
        per_process = args.subscribers // args.client_processes
        processes = [
            multiprocessing.Process(
                target=client_process,
                args=(f"ws://127.0.0.1:{port}/graphql", key, per_process, args.events, out),
            )
            for _ in range(args.client_processes)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            assert out.get(timeout=300)[0] == "ready"
        started = time.time()
        for i in range(args.events):
            response = httpx.post(
                f"{base}/graphql",
                json={"query": TOP_UP, "variables": {"k": f"e{i}"}},
                headers=headers,
                timeout=60,
            )
            assert response.json()["data"]["topUpWallet"]["userErrors"] == []
            time.sleep(args.interval)
        latencies: list[float] = []
        for _ in processes:
            _kind, values = out.get(timeout=300)
            latencies += values
        for process in processes:
            process.join()
        elapsed = time.time() - started
        executions = metric_total(httpx.get(f"{base}/metrics").text, EXECUTIONS)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()

    latencies.sort()
    expected = per_process * args.client_processes * args.events

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    result = {
        "subscribers": per_process * args.client_processes,
        "events": args.events,
        "deliveries": len(latencies),
        "expected_deliveries": expected,
        "server_workers": args.workers,
        "database": args.database_url.split(":")[0],
        "p50_ms": round(pct(0.50), 1),
        "p90_ms": round(pct(0.90), 1),
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        # Feed events executed, summed over the server's processes (each shares one per event).
        "event_executions": executions,
        "seconds": round(elapsed, 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "subscriptions.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    if len(latencies) != expected:
        sys.exit(f"only {len(latencies)} of {expected} deliveries arrived")


if __name__ == "__main__":
    main()
