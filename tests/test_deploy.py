"""docs/deploy.md, booted as written: its PgBouncer configuration, its environment file, its
migration step and its systemd unit's command, on this machine, then a rolling restart of two
instances under load. The only changes are the machine's: host names and ports (everything on
the loopback address), the database's name, the role, PgBouncer's authentication (trust, as
the test PostgreSQL) and the file paths."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url

from tests.conftest import (
    CLI,
    POSTGRES_URL,
    Bouncer,
    free_port,
    pgbouncer_directory,
    postgres_admin,
    postgres_url,
    run_pgbouncer,
)

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "docs" / "deploy.md"
TOP_UP = """mutation($input: TopUpWalletInput!) { topUpWallet(input: $input) {
  transaction { id } userErrors { code } } }"""


def documented_files() -> dict[str, str]:
    """The files the guide gives, by name (the `<!-- file: NAME -->` before each block)."""
    found = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DEPLOY.read_text(), re.S)
    return dict(found)


@dataclass
class Machine:
    """What differs on this machine from the guide's hosts."""

    database: str
    bouncer_port: int = 0

    def localize(self, text: str) -> str:
        server = make_url(POSTGRES_URL)
        role = server.username or "postgres"
        text = text.replace("wallet:secret@", f"{role}@")
        text = text.replace("db.internal:6432", f"127.0.0.1:{self.bouncer_port}")
        text = text.replace("db.internal:5432", f"{server.host}:{server.port or 5432}")
        return re.sub(r"(:\d+)/wallet\b", rf"\1/{self.database}", text)

    def pgbouncer_ini(self, ini: str, directory: str, port: int) -> str:
        server = make_url(POSTGRES_URL)
        self.bouncer_port = port
        changes = {
            r"^wallet = host=db\.internal port=5432 dbname=wallet$": (
                f"{self.database} = host={server.host} port={server.port or 5432} "
                f"dbname={self.database}"
            ),
            r"^listen_addr = .*$": "listen_addr = 127.0.0.1",
            r"^listen_port = .*$": f"listen_port = {port}",
            r"^auth_type = .*$": "auth_type = trust",
            r"^auth_file = .*$": f"auth_file = {directory}/users.txt\nunix_socket_dir =\n"
            f"logfile = {directory}/pgbouncer.log",
        }
        for pattern, replacement in changes.items():
            ini, count = re.subn(pattern, replacement, ini, flags=re.M)
            assert count == 1, f"docs/deploy.md's pgbouncer.ini has no {pattern}"
        return ini


def environment(env_file: str, machine: Machine) -> dict[str, str]:
    """The variables of an EnvironmentFile, as systemd reads it."""
    variables = {}
    for line in env_file.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name.strip()] = machine.localize(value.strip())
    return variables


def exec_start(unit: str, machine: Machine, port: int | None = None) -> list[str]:
    """A unit's ExecStart command, with this checkout's gql-wallet and this machine's port."""
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(machine.localize(line.removeprefix("ExecStart=")))
    command = [CLI if part.endswith("/bin/gql-wallet") else part for part in command]
    if port is not None:
        command[command.index("--host") + 1] = "127.0.0.1"
        command[command.index("--port") + 1] = str(port)
    return command


def unit_setting(unit: str, name: str) -> str:
    (value,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{name}=")]
    return value


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new, empty PostgreSQL database: the guide's migration step makes its schema."""
    name = f"gqlw_deploy_{uuid.uuid4().hex[:12]}"
    postgres_admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def documented_bouncer(empty_database: str) -> Iterator[tuple[Bouncer, Machine]]:
    machine = Machine(empty_database)
    ini = documented_files()["pgbouncer.ini"]
    with (
        pgbouncer_directory() as directory,
        run_pgbouncer(
            directory, configure=lambda where, port: machine.pgbouncer_ini(ini, where, port)
        ) as bouncer,
    ):
        yield bouncer, machine


@dataclass
class Instance:
    """One host's `gql-wallet serve`, started as the unit starts it."""

    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, env={**os.environ, **self.env}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the load balancer's readiness check
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready: {self.log.read_text()}")

    def stop(self, kill_signal: int, timeout: float) -> int:
        """What systemd does on stop: the signal to every process of the service, then wait."""
        assert self.process is not None
        os.killpg(self.process.pid, kill_signal)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


async def test_the_deployment_guide_boots_and_restarts_without_losing_a_write(
    documented_bouncer: tuple[Bouncer, Machine], tmp_path: Path
) -> None:
    _, machine = documented_bouncer
    files = documented_files()
    env = environment(files["gql-wallet.env"], machine)
    assert env["GQL_WALLET_DB_TRANSACTION_POOLER"] == "true"

    # Migrations, as their own step, on PostgreSQL itself.
    migrate = exec_start(files["gql-wallet-migrate.service"], machine)
    done = subprocess.run(
        migrate, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "schema is at revision" in done.stdout + done.stderr, done

    unit = files["gql-wallet.service"]
    kill_signal = signal.Signals[unit_setting(unit, "KillSignal")]
    stop_timeout = float(unit_setting(unit, "TimeoutStopSec"))
    hosts = []
    for n in range(2):
        port = free_port()
        hosts.append(Instance(exec_start(unit, machine, port), env, port, tmp_path / f"{n}.log"))
    for host in hosts:
        host.start()
    try:
        made = subprocess.run(
            [CLI, "api-keys", "create", "--organization", "acme"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        key = made.stdout.split()[-1]
        acknowledged = await _rolling_restart_under_load(hosts, key, kill_signal, stop_timeout)
    finally:
        for host in hosts:
            if host.process is not None and host.process.poll() is None:
                host.stop(signal.SIGTERM, 30)

    assert len(acknowledged) > 50
    # Every acknowledged top-up of 1 cent is in the ledger once, and nothing else is.
    direct = postgres_url(machine.database)
    verified = subprocess.run(
        [CLI, "verify"], env={**os.environ, "GQL_WALLET_DATABASE_URL": direct,
                              "GQL_WALLET_DB_TRANSACTION_POOLER": "false"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "0 problems" in verified.stdout, verified
    entries = await _ledger_keys(direct)
    assert sorted(entries) == sorted(acknowledged)


async def _rolling_restart_under_load(
    hosts: list[Instance], key: str, kill_signal: int, stop_timeout: float
) -> list[str]:
    """Clients top up through whichever instance is up, as behind a load balancer, and retry a
    write whose answer was lost, with its key, on another; meanwhile each instance is
    restarted in turn. The keys of the acknowledged writes."""
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                write_key = f"c{n}-{i}"
                for attempt in range(40):
                    host = hosts[(n + i + attempt) % len(hosts)]
                    try:
                        response = await http.post(
                            f"{host.url}/graphql",
                            json={"query": TOP_UP, "variables": {"input": {
                                "customerId": f"cus_{n}", "currency": "usd", "amount": 1,
                                "idempotencyKey": write_key}}},
                            headers={"Authorization": f"Bearer {key}"},
                        )  # fmt: skip
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code >= 500:
                        await asyncio.sleep(0.05)
                        continue
                    payload = response.json()["data"]["topUpWallet"]
                    assert payload["userErrors"] == [], payload
                    acknowledged.append(write_key)
                    break
                else:
                    raise AssertionError(f"{write_key} never acknowledged")

    clients = [asyncio.create_task(client(n)) for n in range(6)]
    await asyncio.sleep(1)
    for host in hosts:
        code = await asyncio.to_thread(host.stop, kill_signal, stop_timeout)
        assert code == 0, host.log.read_text()[-2000:]
        await asyncio.to_thread(host.start)
        await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*clients)
    return acknowledged


async def _ledger_keys(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT idempotency_key FROM wallet_transactions")
        return [row["idempotency_key"] for row in rows]
    finally:
        await conn.close()
