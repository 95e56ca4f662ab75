"""Alembic migrations, shipped in the package as gql_wallet._migrations."""

from importlib.resources import files


def sql_file(name: str) -> str:
    """The text of `sql/<name>`: a server-side function's whole body, versioned in its own file
    so that a migration loads it as it is and a later one never edits an earlier one's text."""
    return (files(__name__) / "sql" / name).read_text(encoding="utf-8")


def sql_statements(name: str) -> list[str]:
    """The statements of `sql/<name>`, one by one (a driver sends one statement per prepared
    query): each ends with a line ending in ';' outside a $$-quoted function body."""
    statements, lines, quoted = [], [], False
    for line in sql_file(name).splitlines():
        lines.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            statement = "\n".join(lines).strip()
            lines = []
            if any(not part.lstrip().startswith("--") for part in statement.splitlines()):
                statements.append(statement.rstrip(";"))
    if "\n".join(lines).strip(" \n"):
        raise ValueError(f"{name} ends without a ';'")
    return statements
