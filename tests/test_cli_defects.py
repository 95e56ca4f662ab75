"""Issue 22, the command line: a command that reads never creates a database, a database that is
not there is one clear line, a bad setting names its variable, and the small ones (Alembic's
chatter, help texts, plurals, revoking twice)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from gql_wallet.app import create_app
from gql_wallet.migrate import head_revision
from tests.conftest import CLI, POSTGRES_URL, Env, cli, free_port, postgres_admin, postgres_url
from tests.test_cli import sql

READING = [["verify"], ["api-keys", "list"], ["api-keys", "revoke", "nokey"]]
WRITING = [["migrate"], ["api-keys", "create", "--organization", "acme"]]
EVERY_DATABASE_COMMAND = [*READING, *WRITING, ["serve"]]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """gql-wallet in folder `cwd`, with no GQL_WALLET_* setting but those in `env`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("GQL_")}
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**clean, "GQL_WALLET_LOG_FORMAT": "text", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command wrote to stderr."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def schemaless_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_template: str | None
) -> Iterator[str]:
    """A database that exists but has no gql_wallet schema (some other application's)."""
    if request.param == "sqlite":
        with sqlite3.connect(tmp_path / "other.db") as conn:
            conn.execute("CREATE TABLE other (x)")
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    if postgres_template is None:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    name = f"gqlw_empty_{uuid.uuid4().hex[:12]}"
    postgres_admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_url(name)
    finally:
        postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def has_schema(database_url: str) -> bool:
    query = (
        "SELECT name FROM sqlite_master WHERE name = 'alembic_version'"
        if database_url.startswith("sqlite")
        else "SELECT tablename FROM pg_tables WHERE tablename = 'alembic_version'"
    )
    [rows] = await sql(database_url, query)
    return bool(rows)


class TestReadingNeverCreatesADatabase:
    @pytest.mark.parametrize("command", READING, ids=" ".join)
    def test_in_the_wrong_folder_it_says_so_and_creates_nothing(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        line = one_line(run(*command, cwd=tmp_path))
        assert line == (
            f"gql-wallet: no database at {tmp_path / 'gql_wallet.db'} (set "
            "GQL_WALLET_DATABASE_URL, or run `gql-wallet migrate` to create one)"
        )
        assert list(tmp_path.iterdir()) == []

    def test_serve_without_migrating_needs_a_database(self, tmp_path: Path) -> None:
        result = run("serve", cwd=tmp_path, env={"GQL_WALLET_MIGRATE_ON_START": "false"})
        assert one_line(result).startswith(f"gql-wallet: no database at {tmp_path}")
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("command", READING, ids=" ".join)
    async def test_a_database_without_the_schema_is_refused_and_left_alone(
        self, schemaless_url: str, tmp_path: Path, command: list[str]
    ) -> None:
        result = run(*command, cwd=tmp_path, env={"GQL_WALLET_DATABASE_URL": schemaless_url})
        assert "no gql_wallet schema in the database at" in one_line(result)
        assert not await has_schema(schemaless_url)

    def test_an_empty_file_is_refused_and_left_empty(self, tmp_path: Path) -> None:
        (tmp_path / "gql_wallet.db").touch()
        line = one_line(run("verify", cwd=tmp_path))
        assert line.startswith(f"gql-wallet: no gql_wallet schema in the database at {tmp_path}")
        assert (tmp_path / "gql_wallet.db").stat().st_size == 0

    async def test_verify_refuses_a_schema_behind_and_does_not_migrate_it(
        self, database_url: str, tmp_path: Path
    ) -> None:
        await sql(database_url, "UPDATE alembic_version SET version_num = '0003'")
        result = run("verify", cwd=tmp_path, env={"GQL_WALLET_DATABASE_URL": database_url})
        assert f"is at schema revision 0003, this gql-wallet reads {head_revision()}" in (
            one_line(result)
        )
        assert await sql(database_url, "SELECT version_num FROM alembic_version") == [[("0003",)]]


class TestWritingSaysItCreatedADatabase:
    @pytest.mark.parametrize("command", WRITING, ids=" ".join)
    def test_a_new_database_file_is_announced_once(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        first = run(*command, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert f"Created a new database at {tmp_path / 'gql_wallet.db'}\n" in first.stderr
        again = run(*command, cwd=tmp_path)
        assert again.returncode == 0 and "Created a new database" not in again.stderr
        assert run("verify", cwd=tmp_path).returncode == 0

    def test_a_relative_sqlite_url_is_announced_with_its_absolute_path(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "data").mkdir()
        env = {"GQL_WALLET_DATABASE_URL": "sqlite:///data/../wallet.db"}
        result = run("migrate", cwd=tmp_path, env=env)
        assert f"Created a new database at {tmp_path / 'wallet.db'}\n" in result.stderr
        assert (tmp_path / "wallet.db").is_file()

    def test_serve_announces_the_database_it_created(self, tmp_path: Path) -> None:
        # Stopped at once by the taken port, after opening the database in this process.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = run("serve", "--port", str(port), cwd=tmp_path)
        assert f"Created a new database at {tmp_path / 'gql_wallet.db'}\n" in result.stderr

    @pytest.mark.parametrize("command", [*WRITING, ["serve"]], ids=" ".join)
    def test_a_missing_folder_is_one_line_and_not_created(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        env = {"GQL_WALLET_DATABASE_URL": f"sqlite:///{tmp_path}/nowhere/wallet.db"}
        line = one_line(run(*command, cwd=tmp_path, env=env))
        assert line == (
            f"gql-wallet: cannot create a database at {tmp_path}/nowhere/wallet.db: "
            f"no folder {tmp_path}/nowhere"
        )
        assert not (tmp_path / "nowhere").exists()

    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
    def test_an_in_memory_database_is_refused(self, tmp_path: Path, url: str) -> None:
        line = one_line(run("migrate", cwd=tmp_path, env={"GQL_WALLET_DATABASE_URL": url}))
        assert line.startswith(f"gql-wallet: {url} is a SQLite database in memory")


class TestUnreachablePostgresql:
    @pytest.mark.parametrize("command", EVERY_DATABASE_COMMAND, ids=" ".join)
    def test_nothing_listening_is_one_line_without_the_password(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/wallets"
        line = one_line(run(*command, cwd=tmp_path, env={"GQL_WALLET_DATABASE_URL": url}))
        shown = make_url(url).render_as_string(hide_password=True)
        assert line.startswith(f"gql-wallet: cannot open the database at {shown}: ")
        assert "Connect call failed" in line and "hunter2" not in line

    @pytest.mark.parametrize("command", EVERY_DATABASE_COMMAND, ids=" ".join)
    def test_a_missing_database_is_one_line(
        self, tmp_path: Path, postgres_template: str | None, command: list[str]
    ) -> None:
        if postgres_template is None:
            pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
        url = postgres_url("gqlw_does_not_exist")
        line = one_line(run(*command, cwd=tmp_path, env={"GQL_WALLET_DATABASE_URL": url}))
        shown = make_url(url).render_as_string(hide_password=True)
        assert line == (
            f'gql-wallet: cannot open the database at {shown}: database "gqlw_does_not_exist" '
            "does not exist"
        )


class TestBadSettings:
    def test_each_bad_setting_is_a_line_naming_its_variable_value_and_what_is_allowed(
        self, tmp_path: Path
    ) -> None:
        env = {
            "GQL_WALLET_MAX_BODY_BYTES": "12",
            "GQL_WALLET_ENVIRONMENT": "prod",
            "GQL_WALLET_DB_POOL_SIZE": "abc",
            "GQL_WALLET_METRICS_PORT": "x",
            "GQL_WALLET_RATE_LIMIT_API_KEY": "lots",
        }
        result = run("verify", cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert sorted(result.stderr.splitlines()) == [
            "gql-wallet: invalid GQL_WALLET_DB_POOL_SIZE='abc': must be an integer from 1 to 1000",
            "gql-wallet: invalid GQL_WALLET_ENVIRONMENT='prod': must be one of: development, "
            "production",
            "gql-wallet: invalid GQL_WALLET_MAX_BODY_BYTES='12': must be an integer >= 1024",
            "gql-wallet: invalid GQL_WALLET_METRICS_PORT='x': must be an integer from 1 to 65535 "
            "(or unset)",
            "gql-wallet: invalid GQL_WALLET_RATE_LIMIT_API_KEY='lots': must be a rate such as "
            "1000/second or 50000/minute, or empty for no limit",
        ]
        assert list(tmp_path.iterdir()) == []

    def test_production_without_a_secret_names_the_variable(self, tmp_path: Path) -> None:
        result = run("verify", cwd=tmp_path, env={"GQL_WALLET_ENVIRONMENT": "production"})
        assert result.returncode == 2
        assert one_line(result).startswith(
            "gql-wallet: GQL_WALLET_TOKEN_SECRET is required in production"
        )

    def test_secrets_and_passwords_are_not_shown(self, tmp_path: Path) -> None:
        env = {
            "GQL_WALLET_TOKEN_SECRET": "short-secret",
            "GQL_WALLET_DATABASE_URL": "mysql://app:hunter2@db/wallets",
        }
        result = run("verify", cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert sorted(result.stderr.splitlines()) == [
            "gql-wallet: invalid GQL_WALLET_DATABASE_URL='mysql://app:***@db/wallets': must "
            "start with sqlite:// or postgresql://",
            "gql-wallet: invalid GQL_WALLET_TOKEN_SECRET (value hidden): must be at least 32 "
            "characters",
        ]

    def test_the_app_factory_reports_bad_settings_the_same_way(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("GQL_WALLET_MAX_BODY_BYTES", "12")
        with pytest.raises(SystemExit) as stopped:
            create_app()  # as uvicorn's workers call it
        assert stopped.value.code == 2
        assert capsys.readouterr().err == (
            "gql-wallet: invalid GQL_WALLET_MAX_BODY_BYTES='12': must be an integer >= 1024\n"
        )


class TestSmallOnes:
    def test_no_alembic_chatter_but_migration_progress(self, tmp_path: Path) -> None:
        created = run("migrate", cwd=tmp_path)
        assert "Running upgrade" in created.stderr
        for command in (["migrate"], ["verify"], ["api-keys", "list"]):
            result = run(*command, cwd=tmp_path)
            assert result.returncode == 0 and result.stderr == "", result.stderr

    @pytest.mark.parametrize(
        ("command", "says"),
        [
            ("migrate", "newest revision"),
            ("export-schema", "schema.graphql"),
            ("verify", "Only reads"),
        ],
    )
    def test_commands_have_help_text(self, tmp_path: Path, command: str, says: str) -> None:
        result = run(command, "--help", cwd=tmp_path)
        description = result.stdout.split("\n\n")[1]  # between usage and options
        assert says in description and "Exits 0" in description

    async def test_verify_counts_in_singular_and_plural(self, env: Env, database_url: str) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        assert cli(database_url, "verify").stdout == (
            "verified 1 wallet and 1 transaction: 0 problems\n"
        )
        await env.api.charge("cus_1", 30, "k2")
        await sql(database_url, "UPDATE credit_blocks SET amount = amount + 1")
        result = cli(database_url, "verify", check=False)
        assert result.returncode == 1
        assert result.stdout.endswith("verified 1 wallet and 2 transactions: 1 problem\n")

    async def test_revoking_a_revoked_key_says_so_and_changes_nothing(
        self, database_url: str
    ) -> None:
        key = cli(database_url, "api-keys", "create", "--organization", "acme").stdout.split()[-1]
        key_id = key.removeprefix("gqlw_sk_").split("_")[0]
        first = cli(database_url, "api-keys", "revoke", key_id)
        assert first.stdout.startswith(f"revoked API key {key_id}")
        [[(revoked_at,)]] = await sql(database_url, "SELECT revoked_at FROM api_keys")
        again = cli(database_url, "api-keys", "revoke", key)
        shown = str(revoked_at)[:19].replace("T", " ")
        assert again.stdout == (
            f"API key {key_id} was already revoked at {shown} UTC; nothing changed\n"
        )
        assert await sql(database_url, "SELECT revoked_at FROM api_keys") == [[(revoked_at,)]]
