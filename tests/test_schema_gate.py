"""The breaking-change gate (.ci/schema_gate.py), run as CI runs it, on temporary schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GATE = Path(__file__).resolve().parents[1] / ".ci" / "schema_gate.py"

OLD = """
type Query { wallet(id: ID!): Wallet }
type Wallet { id: ID! balance: Int! currency: String! }
enum Kind { TOP_UP CHARGE }
"""
REMOVED_FIELD = "FIELD_REMOVED: Field Wallet.currency was removed."


def gate(tmp_path: Path, new: str, acknowledged: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "old.graphql").write_text(OLD)
    (tmp_path / "new.graphql").write_text(new)
    (tmp_path / "changes.md").write_text(acknowledged)
    return subprocess.run(
        [
            sys.executable,
            str(GATE),
            "--old",
            str(tmp_path / "old.graphql"),
            "--new",
            str(tmp_path / "new.graphql"),
            "--acknowledged",
            str(tmp_path / "changes.md"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def without_currency() -> str:
    return OLD.replace(" currency: String!", "")


def test_a_breaking_change_fails_and_says_what_to_write(tmp_path: Path) -> None:
    result = gate(tmp_path, without_currency())
    assert result.returncode == 1
    assert f"- breaking: `{REMOVED_FIELD}`" in result.stderr


def test_an_acknowledged_breaking_change_passes(tmp_path: Path) -> None:
    notes = f"## Wallet.currency removed\n\nUse ...\n\n- breaking: `{REMOVED_FIELD}`\n"
    result = gate(tmp_path, without_currency(), notes)
    assert result.returncode == 0, result.stderr
    assert f"breaking, acknowledged: {REMOVED_FIELD}" in result.stdout


def test_every_breaking_change_needs_its_own_acknowledgement(tmp_path: Path) -> None:
    new = (
        without_currency()
        .replace("TOP_UP CHARGE", "TOP_UP")
        .replace("balance: Int!", "balance: String!")
    )
    result = gate(tmp_path, new, f"- breaking: `{REMOVED_FIELD}`\n")
    assert result.returncode == 1
    assert "VALUE_REMOVED_FROM_ENUM: Enum value Kind.CHARGE was removed." in result.stderr
    assert (
        "FIELD_CHANGED_KIND: Field Wallet.balance changed type from Int! to String!."
        in result.stderr
    )
    assert REMOVED_FIELD not in result.stderr


def test_an_example_in_a_code_block_acknowledges_nothing(tmp_path: Path) -> None:
    notes = f"Example:\n\n```markdown\n- breaking: `{REMOVED_FIELD}`\n```\n"
    assert gate(tmp_path, without_currency(), notes).returncode == 1


@pytest.mark.parametrize(
    "new",
    [
        OLD,
        OLD.replace("currency: String!", "currency: String! modifiedAt: String"),
        OLD.replace("TOP_UP CHARGE", "TOP_UP CHARGE REFUND"),
        OLD.replace("wallet(id: ID!)", "wallet(id: ID!, currency: String)"),
    ],
)
def test_additions_pass(tmp_path: Path, new: str) -> None:
    result = gate(tmp_path, new)
    assert result.returncode == 0, result.stderr


def test_dangerous_changes_are_reported_but_pass(tmp_path: Path) -> None:
    result = gate(tmp_path, OLD.replace("TOP_UP CHARGE", "TOP_UP CHARGE REFUND"))
    assert "dangerous (allowed): VALUE_ADDED_TO_ENUM" in result.stdout


def test_no_previous_commit_means_nothing_to_compare() -> None:
    result = subprocess.run(
        [sys.executable, str(GATE), "--base", "0" * 40],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "nothing to compare" in result.stdout
