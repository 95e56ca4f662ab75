"""The HTTP peers of the benchmark: what each one serves, how to start it, what to send it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.seed import CLI, Tenants

BENCH_DIR = Path(__file__).resolve().parent
POSTGRAPHILE_DIR = BENCH_DIR / "postgraphile"
TOP_UP_AMOUNT = 100
CHARGE_AMOUNT = 1
WALLETS_PAGE_SIZE = 100


@dataclass(frozen=True)
class Operation:
    """One request kind: where it goes, its body template (see load.lua) and what success
    looks like (substrings that every successful response body contains, all of them).
    `history`: draw only the customers whose usd wallet has a seeded ledger history
    (seed.Tenants.history_customers) instead of any seeded customer."""

    path: str
    body: str
    expect: tuple[str, ...]
    history: bool = False


# What a peer serves, by scenario (load.SCENARIOS). A peer without a scenario skips it.
Workload = Mapping[str, Operation]


def _graphql(query: str, variables: str, operation_name: str | None = None) -> str:
    """A GraphQL POST body; `variables` is JSON text that may hold load.lua's placeholders."""
    body = {"query": query}
    if operation_name is not None:
        body = {"operationName": operation_name, **body}
    return json.dumps(body).removesuffix("}") + f', "variables": {variables}}}'


def _document(*parts: str) -> str:
    """A document as a client's source file holds it: an operation and its fragments."""
    return "\n\n".join(textwrap.dedent(part).strip() for part in parts) + "\n"


# --- issue 7's scenarios: the shapes the first targets were set on --------------------------

GQL_LOOKUP = Operation(
    "/graphql",
    _graphql(
        "query($c: String!) { customerWallets(customerId: $c) "
        "{ id customerId currency balance modifiedAt } }",
        '{"c": "$CUSTOMER"}',
    ),
    ('"customerWallets":[{',),
)
GQL_TOP_UP = Operation(
    "/graphql",
    _graphql(
        "mutation($i: TopUpWalletInput!) { topUpWallet(input: $i) "
        "{ transaction { id balanceAfter } userErrors { code } } }",
        f'{{"i": {{"customerId": "$CUSTOMER", "currency": "usd", "amount": {TOP_UP_AMOUNT}, '
        '"idempotencyKey": "$KEY"}}',
    ),
    ('"transaction":{"id":', '"userErrors":[]'),
)

# --- issue 16's scenarios: documents as a client application writes them ---------------------
# Named operations, variables for what changes per request, and fragments shared by the
# operations that select the same objects. The same documents for every gql_wallet peer.

GQL_WALLET_FIELDS = """
    fragment WalletFields on CustomerWallet {
      id
      customerId
      currency
      balance
      createdAt
      modifiedAt
    }
"""
GQL_TRANSACTION_FIELDS = """
    fragment TransactionFields on WalletTransaction {
      id
      type
      amount
      balanceAfter
      description
      reference
      idempotencyKey
      createdAt
    }
"""
GQL_WALLET_PAGE = Operation(
    "/graphql",
    _graphql(
        _document(
            """
            query WalletPage($customerId: String!) {
              customerWallet(customerId: $customerId, currency: "usd") {
                ...WalletFields
                transactions(first: 10) {
                  edges {
                    cursor
                    node {
                      ...TransactionFields
                    }
                  }
                  pageInfo {
                    hasNextPage
                    endCursor
                  }
                }
              }
            }
            """,
            GQL_WALLET_FIELDS,
            GQL_TRANSACTION_FIELDS,
        ),
        '{"customerId": "$CUSTOMER"}',
        "WalletPage",
    ),
    ('"customerWallet":{"id":', '"edges":[{"cursor":', '"hasNextPage":true'),
    history=True,
)
GQL_CHARGE = Operation(
    "/graphql",
    _graphql(
        _document(
            """
            mutation Charge($input: ChargeWalletInput!) {
              chargeWallet(input: $input) {
                wallet {
                  ...WalletFields
                }
                transaction {
                  ...TransactionFields
                }
                userErrors {
                  code
                  field
                  message
                }
              }
            }
            """,
            GQL_WALLET_FIELDS,
            GQL_TRANSACTION_FIELDS,
        ),
        f'{{"input": {{"customerId": "$CUSTOMER", "currency": "usd", "amount": {CHARGE_AMOUNT}, '
        '"idempotencyKey": "$KEY"}}',
        "Charge",
    ),
    ('"wallet":{"id":', '"transaction":{"id":', '"type":"CHARGE"', '"userErrors":[]'),
)
GQL_WALLETS_PAGE = Operation(
    "/graphql",
    _graphql(
        _document(
            """
            query WalletsPage($first: Int!) {
              wallets(first: $first) {
                edges {
                  cursor
                  node {
                    ...WalletFields
                  }
                }
                pageInfo {
                  hasNextPage
                  endCursor
                }
              }
            }
            """,
            GQL_WALLET_FIELDS,
        ),
        f'{{"first": {WALLETS_PAGE_SIZE}}}',
        "WalletsPage",
    ),
    ('"wallets":{"edges":[{"cursor":', '"hasNextPage":true'),
)

GQL_WALLET: Workload = {
    "lookup": GQL_LOOKUP,
    "top_up": GQL_TOP_UP,
    "wallet_page": GQL_WALLET_PAGE,
    "charge": GQL_CHARGE,
    "wallets_page": GQL_WALLETS_PAGE,
}

# PostGraphile's own generated API over the same tables: the wallets connection filtered by a
# condition on the (organization_id, customer_id) index, the wallet by its unique owner key
# with its ledger through the wallet_seq foreign key, and the bench_top_up and bench_charge
# functions as mutations. It has no API keys, so the organization is passed in the request.
PG_WALLET_FIELDS = """
    fragment WalletFields on Wallet {
      rowId
      customerId
      currency
      balance
      createdAt
      modifiedAt
    }
"""
PG_TRANSACTION_FIELDS = """
    fragment TransactionFields on WalletTransaction {
      rowId
      type
      amount
      balanceAfter
      description
      reference
      idempotencyKey
      createdAt
    }
"""
POSTGRAPHILE: Workload = {
    "lookup": Operation(
        "/graphql",
        _graphql(
            "query($o: UUID!, $c: String!) { allWallets(condition: "
            "{organizationId: $o, customerId: $c}, orderBy: SEQ_ASC) "
            "{ nodes { rowId customerId currency balance modifiedAt } } }",
            '{"o": "$ORG", "c": "$CUSTOMER"}',
        ),
        ('"nodes":[{',),
    ),
    "top_up": Operation(
        "/graphql",
        _graphql(
            "mutation($i: BenchTopUpInput!) { benchTopUp(input: $i) "
            "{ result { rowId balanceAfter } } }",
            f'{{"i": {{"organizationId": "$ORG", "customerId": "$CUSTOMER", "currency": "usd", '
            f'"amount": "{TOP_UP_AMOUNT}", "idempotencyKey": "$KEY"}}}}',
        ),
        ('"result":{"rowId":',),
    ),
    "wallet_page": Operation(
        "/graphql",
        _graphql(
            _document(
                """
                query WalletPage($organizationId: UUID!, $customerId: String!) {
                  walletByOrganizationIdAndCustomerIdAndCurrency(
                    organizationId: $organizationId
                    customerId: $customerId
                    currency: "usd"
                  ) {
                    ...WalletFields
                    walletTransactionsByWalletSeq(first: 10, orderBy: SEQ_DESC) {
                      edges {
                        cursor
                        node {
                          ...TransactionFields
                        }
                      }
                      pageInfo {
                        hasNextPage
                        endCursor
                      }
                    }
                  }
                }
                """,
                PG_WALLET_FIELDS,
                PG_TRANSACTION_FIELDS,
            ),
            '{"organizationId": "$ORG", "customerId": "$CUSTOMER"}',
            "WalletPage",
        ),
        (
            '"walletByOrganizationIdAndCustomerIdAndCurrency":{"rowId":',
            '"edges":[{"cursor":',
            '"hasNextPage":true',
        ),
        history=True,
    ),
    "charge": Operation(
        "/graphql",
        _graphql(
            _document(
                """
                mutation Charge($input: BenchChargeInput!) {
                  benchCharge(input: $input) {
                    result {
                      ...TransactionFields
                      walletByWalletSeq {
                        ...WalletFields
                      }
                    }
                  }
                }
                """,
                PG_WALLET_FIELDS,
                PG_TRANSACTION_FIELDS,
            ),
            f'{{"input": {{"organizationId": "$ORG", "customerId": "$CUSTOMER", '
            f'"currency": "usd", "amount": "{CHARGE_AMOUNT}", "idempotencyKey": "$KEY"}}}}',
            "Charge",
        ),
        ('"result":{"rowId":', '"type":"CHARGE"', '"walletByWalletSeq":{"rowId":'),
    ),
    "wallets_page": Operation(
        "/graphql",
        _graphql(
            _document(
                """
                query WalletsPage($organizationId: UUID!, $first: Int!) {
                  allWallets(
                    first: $first
                    condition: {organizationId: $organizationId}
                    orderBy: SEQ_ASC
                  ) {
                    edges {
                      cursor
                      node {
                        ...WalletFields
                      }
                    }
                    pageInfo {
                      hasNextPage
                      endCursor
                    }
                  }
                }
                """,
                PG_WALLET_FIELDS,
            ),
            f'{{"organizationId": "$ORG", "first": {WALLETS_PAGE_SIZE}}}',
            "WalletsPage",
        ),
        ('"allWallets":{"edges":[{"cursor":', '"hasNextPage":true'),
    ),
}

# The bare endpoints model issue 7's two scenarios only (gql_wallet's exact SQL for each).
BARE_STARLETTE: Workload = {
    "lookup": Operation("/lookup", '{"customerId": "$CUSTOMER"}', ('"wallets":[{',)),
    "top_up": Operation(
        "/top-up",
        f'{{"customerId": "$CUSTOMER", "currency": "usd", "amount": {TOP_UP_AMOUNT}, '
        '"idempotencyKey": "$KEY"}',
        ('"transaction":{"id":',),
    ),
}


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
    lookup = peer.workload["lookup"]
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
