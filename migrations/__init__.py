"""Alembic migrations, shipped in the package as gql_wallet._migrations."""

from importlib.resources import files


def sql_file(name: str) -> str:
    """The text of `sql/<name>`: a server-side function's whole body, versioned in its own file
    so that a migration loads it as it is and a later one never edits an earlier one's text."""
    return (files(__name__) / "sql" / name).read_text(encoding="utf-8")
