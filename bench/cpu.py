"""CPU per request of the app itself: `.venv/bin/python -m bench.cpu [--scenario wallet_page]`.

Drives the ASGI application in this process (no HTTP server, no load generator, no request
log line) with the scenario's own request bodies (bench/peers.py) at a fixed concurrency, on the
profile database that `python -m bench.profile` seeds (run it once first), and prints the
process's CPU time per request. Every response is checked as the benchmark checks it. The
figure leaves out uvicorn and wrk, which share the machine in the benchmark, so two versions of
the code compare better here than in req/s on a noisy machine; run them alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import time
from typing import Any

from bench.load import SCENARIOS
from bench.peers import GQL_WALLET
from bench.seed import CLI


def _body(template: str, customers: int) -> bytes:
    # Organization 0's customers (customer k belongs to organization k % 4).
    customer = random.randrange(0, customers) // 4 * 4
    body = template.replace("$CUSTOMER", f"cus_{customer}")
    return body.replace("$KEY", f"cpu-{random.random()}").encode()


async def _request(app: Any, key: str, body: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def measure(scenario: str, requests: int, concurrency: int, key: str) -> float:
    from gql_wallet.app import create_app  # after the environment is set

    operation = GQL_WALLET[scenario]
    customers = 5_000 if operation.history else 50_000
    app = create_app()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            status, answer = await _request(app, key, _body(operation.body, customers))
        if status != 200 or not all(part.encode() in answer for part in operation.expect):
            raise SystemExit(f"unexpected answer ({status}): {answer[:300]!r}")

    async with app.router.lifespan_context(app):
        await asyncio.gather(*(one() for _ in range(min(requests, 200))))  # warm-up
        started = time.process_time()
        await asyncio.gather(*(one() for _ in range(requests)))
        return (time.process_time() - started) / requests


def scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this module and bench.instructions share."""
    parser.add_argument("--scenario", choices=SCENARIOS, default="lookup")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/bench_gql_wallet_profile",
        help="a database seeded by python -m bench.profile",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    scenario_arguments(parser)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    os.environ["GQL_WALLET_DATABASE_URL"] = args.database_url
    os.environ["GQL_WALLET_DB_POOL_SIZE"] = str(args.concurrency)
    os.environ["GQL_WALLET_RATE_LIMIT_API_KEY"] = "1000000/second"  # as bench.run does
    created = subprocess.run(
        [CLI, "api-keys", "create", "--organization", "bench_org_0"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    key = created.stdout.strip().splitlines()[-1]
    seconds = asyncio.run(measure(args.scenario, args.requests, args.concurrency, key))
    print(
        f"{args.scenario}: {seconds * 1000:.3f} ms of CPU per request (in-process, c={args.concurrency})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
