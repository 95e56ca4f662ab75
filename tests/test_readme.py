"""The README's promises: its commands are the ones CI runs, its worked example is real."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(
        b.strip() for b in code_blocks("sh") if b.strip().endswith(".venv/bin/pytest")
    )
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_serve_command_serves_the_sqlite_default() -> None:
    serve = next(b.strip() for b in code_blocks("sh") if b.strip().endswith("gql-wallet serve"))
    assert "-c constraints.txt" in serve and "GQL_WALLET_DATABASE_URL" not in serve


async def test_worked_example_gives_the_documented_results(env: Env) -> None:
    top_up, charge, read = code_blocks("graphql")[:3]
    assert (await env.api(top_up))["topUpWallet"]["wallet"]["balance"] == 5000
    assert (await env.api(charge))["chargeWallet"]["wallet"]["balance"] == 3750
    wallet = (await env.api(read))["customerWallet"]
    assert wallet["balance"] == 3750
    nodes = [e["node"] for e in wallet["transactions"]["edges"]]
    assert [(n["type"], n["amount"], n["balanceAfter"]) for n in nodes] == [
        ("CHARGE", -1250, 3750),
        ("TOP_UP", 5000, 5000),
    ]
