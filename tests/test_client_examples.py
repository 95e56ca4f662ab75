"""The client examples of docs/clients.md are exactly the files CI runs (.ci/clients.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "clients.md").read_text()
CLIENTS_SCRIPT = (ROOT / ".ci" / "clients.sh").read_text()


@pytest.mark.parametrize(
    ("example", "language"),
    [
        ("examples/curl.sh", "sh"),
        ("examples/typescript/codegen.yml", "yaml"),
        ("examples/typescript/src/client.ts", "ts"),
        ("examples/python/pyproject.toml", "toml"),
        ("examples/python/client.py", "python"),
    ],
)
def test_the_documented_example_is_the_file_ci_runs(example: str, language: str) -> None:
    assert f"```{language}\n{(ROOT / example).read_text()}```" in DOCS, (
        f"docs/clients.md's copy of {example} differs from the file"
    )


def documented_commands(directory: str) -> list[str]:
    """The commands of the docs' shell block that starts with `cd <directory>`."""
    (block,) = re.findall(rf"```sh\ncd {re.escape(directory)}\n(.*?)```", DOCS, flags=re.DOTALL)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("directory", ["examples/typescript", "examples/python"])
def test_ci_runs_the_documented_commands(directory: str) -> None:
    commands = documented_commands(directory)
    assert len(commands) == 3
    assert f"cd {directory}\n" in CLIENTS_SCRIPT
    for command in commands:
        assert f"\n  {command}" in CLIENTS_SCRIPT, command


def test_ci_runs_the_curl_example_and_the_audits() -> None:
    assert "sh examples/curl.sh" in DOCS and "sh examples/curl.sh" in CLIENTS_SCRIPT
    assert "node audit.mjs" in CLIENTS_SCRIPT
    assert "bash .ci/clients.sh" in (ROOT / ".ci" / "run").read_text()
