"""PostgreSQL's server-side functions are exactly their versioned SQL files, loaded whole."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from gql_wallet.db import asyncpg_dsn

SQL_DIR = Path(__file__).resolve().parents[1] / "migrations" / "sql"
VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"


def _bodies(text: str) -> dict[str, str]:
    """Each function a file creates, by name, with its body (between its $$ quotes)."""
    return dict(
        re.findall(r"CREATE (?:OR REPLACE )?FUNCTION (\w+)\(.*?\$\$(.*?)\$\$", text, re.DOTALL)
    )


def _newest(name: str) -> Path:
    # name.v<N>.sql; name.v<N>.down.sql undoes version N.
    files = sorted(
        (p for p in SQL_DIR.glob(f"{name}.v*.sql") if p.stem.split(".v")[1].isdigit()),
        key=lambda p: int(p.stem.split(".v")[1]),
    )
    assert files, f"no versioned SQL file for {name}"
    return files[-1]


# Each family of functions, versioned apart: the ledger's, and webhooks' outbox triggers'.
FAMILIES = ("gql_wallet_ledger", "gql_wallet_webhooks")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_installed_functions_are_their_newest_file(database_url: str) -> None:
    expected = {
        name: body
        for family in FAMILIES
        for name, body in _bodies(_newest(family).read_text()).items()
    }
    assert "gql_wallet_balance_change" in expected and "gql_wallet_outbox_entry" in expected
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT proname, prosrc FROM pg_proc WHERE proname LIKE 'gql\\_wallet\\_%'"
        )
    finally:
        await conn.close()
    installed = {row["proname"]: row["prosrc"] for row in rows}
    assert installed == expected


def test_migrations_load_sql_files_and_never_build_function_text() -> None:
    for migration in VERSIONS.glob("*.py"):
        text = migration.read_text()
        assert "CREATE OR REPLACE FUNCTION" not in text, migration.name
        assert "importlib" not in text, migration.name
    for sql in SQL_DIR.glob("*.sql"):
        loaded = (f'sql_file("{sql.name}")', f'sql_statements("{sql.name}")')
        assert any(any(form in m.read_text() for form in loaded) for m in VERSIONS.glob("*.py")), (
            f"{sql.name} is loaded by no migration"
        )
