"""Fixtures: an app per test on its own database, API clients, and real server processes."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, make_url, select
from starlette.applications import Starlette

from gql_wallet.app import create_app
from gql_wallet.auth import SCOPES, create_api_key
from gql_wallet.db import Database, asyncpg_dsn
from gql_wallet.repository import idempotency_keys, transactions, wallets
from gql_wallet.settings import Settings
from tests import pgbouncer as pooler
from tests.pgbouncer import Bouncer, free_port, pgbouncer_directory

CLI = str(Path(sys.executable).with_name("gql-wallet"))

# The PostgreSQL server the tests create their databases on (one per test, from a template).
POSTGRES_URL = os.environ.get(
    "GQL_WALLET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# CI sets this: there a missing PostgreSQL is a failure, never a skip.
REQUIRE_POSTGRES = os.environ.get("GQL_WALLET_TEST_REQUIRE_POSTGRES") == "1"

TOP_UP = """
mutation TopUp($input: TopUpWalletInput!) {
  topUpWallet(input: $input) {
    wallet { id customerId currency balance createdAt modifiedAt }
    transaction { id type amount balanceAfter description reference idempotencyKey createdAt }
    userErrors { code field message }
  }
}"""

CHARGE = """
mutation Charge($input: ChargeWalletInput!) {
  chargeWallet(input: $input) {
    wallet { id customerId currency balance createdAt modifiedAt }
    transaction { id type amount balanceAfter description reference idempotencyKey createdAt }
    userErrors { code field message }
  }
}"""


@dataclass
class Api:
    """A GraphQL client for one organization's API key."""

    client: httpx.AsyncClient
    key: str

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.key}"},
        )

    async def answer(self, query: str, variables: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The status and the body of the answer, whatever they are."""
        response = await self.post(query, variables)
        return response.status_code, response.json()

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = await self.post(query, variables)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    async def top_up(self, customer_id: str, amount: int, key: str, **extra: Any) -> Any:
        return await self._balance_change(TOP_UP, "topUpWallet", customer_id, amount, key, extra)

    async def charge(self, customer_id: str, amount: int, key: str, **extra: Any) -> Any:
        return await self._balance_change(CHARGE, "chargeWallet", customer_id, amount, key, extra)

    async def _balance_change(
        self, query: str, field: str, customer_id: str, amount: int, key: str, extra: dict
    ) -> Any:
        currency = extra.pop("currency", "usd")
        data = await self(
            query,
            {
                "input": {
                    "customerId": customer_id,
                    "currency": currency,
                    "amount": amount,
                    "idempotencyKey": key,
                    **extra,
                }
            },
        )
        return data[field]


@dataclass
class Env:
    app: Starlette
    client: httpx.AsyncClient
    database: Database
    settings: Settings
    api: Api
    other: Api  # a second organization

    async def new_key(self, organization: str, scopes: tuple[str, ...] = SCOPES) -> Api:
        token = await create_api_key(
            self.database, self.settings.token_secret_bytes, organization, scopes
        )
        return Api(self.client, token)

    async def customer_session(self, api: Api, customer_id: str, **extra: Any) -> Api:
        data = await api(
            "mutation($input: CreateCustomerSessionInput!) { createCustomerSession(input: $input) "
            "{ token customerSession { id } userErrors { code } } }",
            {"input": {"customerId": customer_id, **extra}},
        )
        payload = data["createCustomerSession"]
        assert payload["userErrors"] == [], payload
        return Api(self.client, payload["token"])

    async def counts(self) -> tuple[int, int, int]:
        """(wallets, ledger entries, idempotency records): what a write leaves behind."""
        async with self.database.read_transaction() as conn:
            return tuple(  # type: ignore[return-value]
                [
                    (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                    for t in (wallets, transactions, idempotency_keys)
                ]
            )


def postgres_admin(*statements: str) -> None:
    """Run statements on the PostgreSQL server's maintenance database, outside any loop."""

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_url(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str | None]:
    """A migrated template database that every PostgreSQL test database is copied from.

    None when PostgreSQL is not reachable (and not required): those tests are then skipped.
    """
    name = f"gqlw_template_{os.getpid()}"
    try:
        postgres_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError) as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but not reachable at {POSTGRES_URL}: {error}")
        yield None
        return
    cli(postgres_url(name), "migrate")
    yield name
    postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "wallet.db"
    cli(f"sqlite:///{path}", "migrate")
    return path


@contextmanager
def fresh_database(
    kind: str, directory: Path, sqlite_template: Path, postgres_template: str | None
) -> Iterator[str]:
    """A new, migrated database of `kind`, dropped afterwards."""
    if kind == "sqlite":
        shutil.copy(sqlite_template, directory / "wallet.db")
        yield f"sqlite:///{directory / 'wallet.db'}"
        return
    if postgres_template is None:
        pytest.skip(
            f"PostgreSQL not reachable at {POSTGRES_URL} (set GQL_WALLET_TEST_POSTGRES_URL)"
        )
    name = f"gqlw_test_{uuid.uuid4().hex[:12]}"
    postgres_admin(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    try:
        yield postgres_url(name)
    finally:
        postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def advisory_locks(url: str, key: int) -> list[tuple[str, bool]]:
    """PostgreSQL: (mode, granted) of every session's hold on, or wait for, advisory lock `key`
    in the database at `url`."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = $1 AND objid = $2 AND objsubid = 1",
            key >> 32,
            key & 0xFFFFFFFF,
        )
        return sorted((row["mode"], row["granted"]) for row in rows)
    finally:
        await conn.close()


# CI sets this: there a missing PgBouncer is a failure, never a skip.
REQUIRE_PGBOUNCER = os.environ.get("GQL_WALLET_TEST_REQUIRE_PGBOUNCER") == "1"
# Every test that races server processes runs on these, and the ones that must hold behind a
# connection pooler also on "pgbouncer" (`database_url`).
WITH_PGBOUNCER = pytest.mark.parametrize(
    "database_url", ["sqlite", "postgresql", "pgbouncer"], indirect=True
)


@contextmanager
def run_pgbouncer(directory: Path, **options: Any) -> Iterator[Bouncer]:
    """tests.pgbouncer.run_pgbouncer in front of the test PostgreSQL: skipped where PgBouncer
    is not installed, failed where it is required (CI)."""
    if (missing := pooler.missing()) is not None:
        if REQUIRE_PGBOUNCER:
            pytest.fail(missing)
        pytest.skip(missing)
    with pooler.run_pgbouncer(directory, POSTGRES_URL, **options) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[Bouncer]:
    with pgbouncer_directory() as directory, run_pgbouncer(directory) as bouncer:
        yield bouncer


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each kind for every test; "pgbouncer" only where a test
    asks for it (`WITH_PGBOUNCER`, see `database_of_kind`)."""
    with database_of_kind(request, request.param, tmp_path) as url:
        yield url


@contextmanager
def database_of_kind(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of `kind`: sqlite, postgresql, or pgbouncer (a PostgreSQL
    database reached through the session's `pgbouncer`, with the settings that tell every
    process and command of the test: GQL_WALLET_DB_TRANSACTION_POOLER, and
    GQL_WALLET_LISTEN_DATABASE_URL the database itself)."""
    sqlite_template = request.getfixturevalue("sqlite_template")
    postgres_template = request.getfixturevalue("postgres_template")
    base = "postgresql" if kind == "pgbouncer" else kind
    with fresh_database(base, tmp_path, sqlite_template, postgres_template) as url:
        if kind != "pgbouncer":
            yield url
            return
        bouncer: Bouncer = request.getfixturevalue("pgbouncer")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("GQL_WALLET_DB_TRANSACTION_POOLER", "true")
        monkeypatch.setenv("GQL_WALLET_LISTEN_DATABASE_URL", url)
        yield bouncer.url(make_url(url).database or "")


@pytest.fixture
def sqlite_url(
    tmp_path: Path, sqlite_template: Path, postgres_template: str | None
) -> Iterator[str]:
    """A fresh, migrated SQLite database, for tests that need one process's view of it."""
    with fresh_database("sqlite", tmp_path, sqlite_template, postgres_template) as url:
        yield url


def changed(settings: Settings, update: dict[str, Any]) -> Settings:
    """`settings` with some fields changed, validated like settings read at start."""
    return Settings.model_validate({**settings.model_dump(), **update})


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Rate limits are off here: tests that need them turn them on (tests/test_hardening.py).
    # The app sends its own webhooks here (`gql-wallet serve` starts delivery processes).
    return Settings(
        database_url=database_url,
        rate_limit_api_key="",
        rate_limit_customer_session="",
        webhook_delivery="app",
    )


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with app_env(settings) as env:
        yield env


@asynccontextmanager
async def app_env(settings: Settings) -> AsyncIterator[Env]:
    """The app on `settings`, served in-process, with a key for each of two organizations."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        database = app.state.database
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            secret = settings.token_secret_bytes
            yield Env(
                app=app,
                client=client,
                database=database,
                settings=settings,
                api=Api(client, await create_api_key(database, secret, "org-a")),
                other=Api(client, await create_api_key(database, secret, "org-b")),
            )


def cli(
    database_url: str, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env={**os.environ, "GQL_WALLET_DATABASE_URL": database_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@dataclass
class LiveServer:
    url: str
    database_url: str
    process: subprocess.Popen[bytes]

    def new_key(self, organization: str) -> str:
        return cli(
            self.database_url, "api-keys", "create", "--organization", organization
        ).stdout.splitlines()[-1]


def start_server(
    database_url: str, workers: int, log: Path, env: dict[str, str] | None = None
) -> LiveServer:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env={**os.environ, "GQL_WALLET_DATABASE_URL": database_url, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/graphql", headers={"Accept": "text/html"}).status_code == 200:
                return LiveServer(url, database_url, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)
            server.process.wait()


@pytest.fixture
def live_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """`gql-wallet serve --workers 2` on its own database, as a user runs it."""
    server = start_server(database_url, workers=2, log=tmp_path / "server.log")
    try:
        yield server
    finally:
        stop_server(server)


# The npm graphql-ws client that tests/test_subscriptions.py drives, pinned by its lock file.
NODE_CLIENT = Path(__file__).parent / "node"


def _node_modules_match_lock(directory: Path) -> bool:
    """Whether `directory`/node_modules holds exactly the versions its package-lock.json pins."""
    lock = json.loads((directory / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if not path:  # the project itself
            continue
        try:
            installed = json.loads((directory / path / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            if entry.get("optional"):
                continue
            return False
        if installed != entry["version"]:
            return False
    return True


def install_node_client(directory: Path = NODE_CLIENT) -> bool:
    """`npm ci` in `directory` unless its node_modules already matches the lock file; True if it
    ran. Fails the test when node or npm is missing: the suite requires them (README).

    An exclusive lock on a file beside the lock file makes concurrent pytest processes (xdist
    workers) install once: the others wait, then find node_modules current."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found on PATH: the test suite needs Node.js 20+ with "
            f"npm for the npm graphql-ws client in {directory}"
        )
    with (directory / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _node_modules_match_lock(directory):
            return False
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(directory), "--no-audit", "--no-fund", "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not _node_modules_match_lock(directory):
            pytest.fail(
                f"`npm ci --prefix {directory}` failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return True


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` executable, with tests/node/node_modules installed from its lock file."""
    install_node_client()
    path = shutil.which("node")
    assert path is not None
    return path
