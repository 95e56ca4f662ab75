"""PostgreSQL's server-side functions are exactly their versioned SQL files, loaded whole."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from gql_wallet.db import asyncpg_dsn

SQL_DIR = Path(__file__).resolve().parents[1] / "migrations" / "sql"
VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"


def _body(text: str) -> str:
    (body,) = re.findall(r"\$\$(.*)\$\$", text, flags=re.DOTALL)
    return body


def _newest(function: str) -> Path:
    files = sorted(SQL_DIR.glob(f"{function}.v*.sql"), key=lambda p: int(p.stem.split(".v")[1]))
    assert files, f"no versioned SQL file for {function}"
    return files[-1]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_installed_function_is_its_newest_file(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        installed = await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'gql_wallet_balance_change'"
        )
    finally:
        await conn.close()
    assert installed == _body(_newest("gql_wallet_balance_change").read_text())


def test_migrations_load_sql_files_and_never_build_function_text() -> None:
    for migration in VERSIONS.glob("*.py"):
        text = migration.read_text()
        assert "CREATE OR REPLACE FUNCTION" not in text, migration.name
        assert "importlib" not in text, migration.name
    for sql in SQL_DIR.glob("*.sql"):
        assert any(f'sql_file("{sql.name}")' in m.read_text() for m in VERSIONS.glob("*.py")), (
            f"{sql.name} is loaded by no migration"
        )
