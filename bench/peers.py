"""The HTTP peers of the benchmark: what each one serves, how to start it, what to send it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.seed import CLI, Tenants

BENCH_DIR = Path(__file__).resolve().parent
POSTGRAPHILE_DIR = BENCH_DIR / "postgraphile"
TOP_UP_AMOUNT = 100


@dataclass(frozen=True)
class Operation:
    """One request kind: where it goes, its body template (see load.lua) and what success
    looks like (substrings that every successful response body contains, all of them)."""

    path: str
    body: str
    expect: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    lookup: Operation
    top_up: Operation


def _graphql(query: str, variables: str) -> str:
    return json.dumps({"query": query}).removesuffix("}") + f', "variables": {variables}}}'


GQL_WALLET = Workload(
    lookup=Operation(
        "/graphql",
        _graphql(
            "query($c: String!) { customerWallets(customerId: $c) "
            "{ id customerId currency balance modifiedAt } }",
            '{"c": "$CUSTOMER"}',
        ),
        ('"customerWallets":[{',),
    ),
    top_up=Operation(
        "/graphql",
        _graphql(
            "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) "
            "{ transaction { id balanceAfter } userErrors { code } } }",
            f'{{"i": {{"customerId": "$CUSTOMER", "currency": "usd", "amount": {TOP_UP_AMOUNT}, '
            '"idempotencyKey": "$KEY"}}',
        ),
        ('"transaction":{"id":', '"userErrors":[]'),
    ),
)

# PostGraphile's own generated API over the same tables: the wallets connection filtered by a
# condition on the (organization_id, customer_id) index, and the bench_top_up function as a
# mutation. It has no API keys, so the organization is passed in the request instead.
POSTGRAPHILE = Workload(
    lookup=Operation(
        "/graphql",
        _graphql(
            "query($o: UUID!, $c: String!) { allWallets(condition: "
            "{organizationId: $o, customerId: $c}, orderBy: SEQ_ASC) "
            "{ nodes { rowId customerId currency balance modifiedAt } } }",
            '{"o": "$ORG", "c": "$CUSTOMER"}',
        ),
        ('"nodes":[{',),
    ),
    top_up=Operation(
        "/graphql",
        _graphql(
            "mutation($i: BenchTopUpInput!) { benchTopUp(input: $i) "
            "{ result { rowId balanceAfter } } }",
            f'{{"i": {{"organizationId": "$ORG", "customerId": "$CUSTOMER", "currency": "usd", '
            f'"amount": "{TOP_UP_AMOUNT}", "idempotencyKey": "$KEY"}}}}',
        ),
        ('"result":{"rowId":',),
    ),
)

BARE_STARLETTE = Workload(
    lookup=Operation("/lookup", '{"customerId": "$CUSTOMER"}', ('"wallets":[{',)),
    top_up=Operation(
        "/top-up",
        f'{{"customerId": "$CUSTOMER", "currency": "usd", "amount": {TOP_UP_AMOUNT}, '
        '"idempotencyKey": "$KEY"}',
        ('"transaction":{"id":',),
    ),
)


@dataclass(frozen=True)
class Peer:
    """A server under test. `name` is the short id used in results; `label` is for people."""

    name: str
    label: str
    database: str
    workload: Workload
    port: int
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = BENCH_DIR.parent

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def gql_wallet(name: str, database_url: str, workers: int, port: int, pool_size: int) -> Peer:
    database = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    return Peer(
        name=name,
        label=f"gql_wallet, {database}, {workers} worker{'s' if workers > 1 else ''}",
        database=database,
        workload=GQL_WALLET,
        port=port,
        command=(CLI, "serve", "--port", str(port), "--workers", str(workers)),
        env={
            "GQL_WALLET_DATABASE_URL": database_url,
            "GQL_WALLET_DB_POOL_SIZE": str(pool_size),
            "GQL_WALLET_GRAPHIQL": "false",
            # The limiter runs on every request as in production (its cost is measured), but
            # at a limit no run reaches: the default 1000/s per key and process is below what
            # one process serves for one of the bench's few keys.
            "GQL_WALLET_RATE_LIMIT_API_KEY": "1000000/second",
        },
    )


def postgraphile(database_url: str, port: int, pool_size: int) -> Peer:
    return Peer(
        name="postgraphile",
        label="PostGraphile v5, postgresql, 1 process",
        database="postgresql",
        workload=POSTGRAPHILE,
        port=port,
        command=(str(POSTGRAPHILE_DIR / "node_modules" / ".bin" / "node"), "server.mjs"),
        env={
            "DATABASE_URL": database_url,
            "PORT": str(port),
            "POOL_SIZE": str(pool_size),
            "NODE_ENV": "production",
            "GRAPHILE_ENV": "production",
        },
        cwd=POSTGRAPHILE_DIR,
    )


def _uvicorn(app_factory: str, port: int, workers: int) -> tuple[str, ...]:
    return (
        sys.executable,
        "-m",
        "uvicorn",
        app_factory,
        "--factory",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    )


def bare_starlette(sqlite_path: Path, workers: int, port: int, pool_size: int) -> Peer:
    return Peer(
        name=f"bare_sqlite_w{workers}",
        label=f"bare Starlette (same SQL, no GraphQL), sqlite, {workers} workers",
        database="sqlite",
        workload=BARE_STARLETTE,
        port=port,
        command=_uvicorn("bench.bare_starlette:create_app", port, workers),
        env={"BENCH_SQLITE_PATH": str(sqlite_path), "BENCH_POOL_SIZE": str(pool_size)},
    )


def bare_starlette_pg(database_url: str, workers: int, port: int, pool_size: int) -> Peer:
    return Peer(
        name=f"bare_pg_w{workers}",
        label=f"bare Starlette + asyncpg (same SQL, no GraphQL), postgresql, {workers} workers",
        database="postgresql",
        workload=BARE_STARLETTE,
        port=port,
        command=_uvicorn("bench.bare_starlette_pg:create_app", port, workers),
        env={"BENCH_POSTGRES_URL": database_url, "BENCH_POOL_SIZE": str(pool_size)},
    )


def _answers(peer: Peer, tenants: Tenants) -> bool:
    """True once the peer serves a real lookup successfully."""
    lookup = peer.workload.lookup
    body = lookup.body.replace("$CUSTOMER", "cus_0").replace(
        "$ORG", tenants.organization_ids[0] if tenants.organization_ids else ""
    )
    request = urllib.request.Request(
        peer.base_url + lookup.path,
        data=body.encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {tenants.api_keys[0]}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return all(part in text for part in lookup.expect)


@contextmanager
def serving(
    peer: Peer, tenants: Tenants, log_dir: Path, timeout: float = 90
) -> Iterator[psutil.Process]:
    """Start the peer in its own process group, wait until it answers, stop it afterwards."""
    log_path = log_dir / f"{peer.name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            peer.command,
            cwd=peer.cwd,
            env={**os.environ, **peer.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(peer, tenants):
            if process.poll() is not None:
                raise RuntimeError(f"{peer.name} exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name} did not answer within {timeout}s; see {log_path}")
            time.sleep(0.5)
        yield psutil.Process(process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
