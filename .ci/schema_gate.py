"""Breaking-change gate: schema.graphql against the previous commit's, for client teams' sake.

    .venv/bin/python .ci/schema_gate.py                 # HEAD~1:schema.graphql -> schema.graphql
    .venv/bin/python .ci/schema_gate.py --base origin/main
    .venv/bin/python .ci/schema_gate.py --old a.graphql --new b.graphql --acknowledged x.md

Compares the two schemas with graphql-core's find_breaking_changes (what graphql-inspector calls
breaking: a removed type, field, argument or enum value, a changed type, a new required argument
or input field, ...). Exits 1 when a breaking change is not acknowledged in
docs/schema-changes.md, which is where client teams read what changed and what to do. A change
is acknowledged by a line that names it exactly as this script prints it:

    - breaking: `FIELD_REMOVED: Field CustomerWallet.currency was removed.`

Dangerous changes (an enum value or optional argument added, a default changed) are listed but
do not fail. With no previous commit, or no schema.graphql in it, there is nothing to compare.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from graphql import build_schema, find_breaking_changes, find_dangerous_changes

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "schema.graphql"
ACKNOWLEDGED = ROOT / "docs" / "schema-changes.md"
ACK_LINE = re.compile(r"^[-*] breaking: `(?P<change>[^`]+)`\s*$", re.MULTILINE)
FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def previous_schema(base: str) -> str | None:
    """schema.graphql as of `base`, or None when that commit or the file does not exist."""
    exists = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if exists.returncode != 0:
        print(f"schema gate: no commit {base} (first commit?): nothing to compare")
        return None
    show = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{base}:{SCHEMA}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if show.returncode != 0:
        print(f"schema gate: {base} has no {SCHEMA}: nothing to compare")
        return None
    return show.stdout


def acknowledged_changes(path: Path) -> set[str]:
    """The changes acknowledged in `path`; examples in fenced code blocks do not count."""
    if not path.exists():
        return set()
    return set(ACK_LINE.findall(FENCED_BLOCK.sub("", path.read_text())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail on unacknowledged breaking schema changes.")
    parser.add_argument("--base", default="HEAD~1", help="git revision to compare with")
    parser.add_argument("--old", type=Path, help="old SDL file (instead of --base)")
    parser.add_argument("--new", type=Path, default=ROOT / SCHEMA, help="new SDL file")
    parser.add_argument("--acknowledged", type=Path, default=ACKNOWLEDGED)
    args = parser.parse_args(argv)

    old_sdl = args.old.read_text() if args.old else previous_schema(args.base)
    if old_sdl is None:
        return 0
    old, new = build_schema(old_sdl), build_schema(args.new.read_text())
    breaking = [f"{c.type.name}: {c.description}" for c in find_breaking_changes(old, new)]
    dangerous = [f"{c.type.name}: {c.description}" for c in find_dangerous_changes(old, new)]
    acknowledged = acknowledged_changes(args.acknowledged)

    for change in dangerous:
        print(f"dangerous (allowed): {change}")
    missing = [change for change in breaking if change not in acknowledged]
    for change in breaking:
        print(
            f"breaking, {'acknowledged' if change in acknowledged else 'NOT acknowledged'}: {change}"
        )
    if missing:
        print(
            f"\nschema gate: {len(missing)} breaking change(s) would break existing clients.\n"
            f"Avoid them (deprecate first), or document each for client teams in "
            f"{args.acknowledged} with these exact lines:\n",
            file=sys.stderr,
        )
        for change in missing:
            print(f"- breaking: `{change}`", file=sys.stderr)
        return 1
    print(
        f"schema gate: {len(breaking)} breaking (all acknowledged), "
        f"{len(dangerous)} dangerous change(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
