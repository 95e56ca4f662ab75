"""Exports of an organization's ledger (issue 20), on both databases: `gql-wallet export` as a
user runs it (CSV and NDJSON, refusals, the progress bar on a terminal), and the one snapshot
an export reads while writes go on."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gql_wallet import repository as repo
from gql_wallet.ledger import exports
from tests.conftest import CLI, WITH_PGBOUNCER, Env, cli

START = (datetime.now(UTC) - timedelta(days=30)).isoformat()


def _end(days: int = 1) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def _ledger(env: Env) -> None:
    for n, customer in enumerate(("cus_1", "cus_2", "cus_1")):
        await env.api.top_up(
            customer, 1_234, f"t{n}", description='line, with "quotes"\nand a newline'
        )
    await env.api.charge("cus_1", 99, "c1", reference="inv_1")
    await env.api.top_up("cus_1", 500, "yen", currency="JPY")
    await env.other.top_up("cus_9", 7, "elsewhere")  # another organization's: never exported


def test_minor_units_in_major_units() -> None:
    assert [exports.in_major_units(a, 2) for a in (0, 5, -5, 1234, -123456)] == [
        "0.00", "0.05", "-0.05", "12.34", "-1234.56",
    ]  # fmt: skip
    assert exports.in_major_units(-1234, 0) == "-1234"
    assert exports.in_major_units(1, 3) == "0.001"
    assert [exports.minor_unit_exponent(c) for c in ("usd", "jpy", "bhd", "xau")] == [2, 0, 3, 0]


async def test_csv_opens_as_it_is(env: Env, tmp_path: Path) -> None:
    await _ledger(env)
    out = tmp_path / "march.csv"
    done = await asyncio.to_thread(
        cli, env.settings.database_url, "export", "--organization", "org-a", "--from", START,
        "--to", _end(), "--output", str(out),
    )  # fmt: skip
    assert "exported 5 entries" in done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert list(rows[0]) == list(exports.COLUMNS)
    assert [(r["customerId"], r["currency"], r["type"], r["amount"], r["amountDecimal"])
            for r in rows] == [
        ("cus_1", "usd", "TOP_UP", "1234", "12.34"), ("cus_2", "usd", "TOP_UP", "1234", "12.34"),
        ("cus_1", "usd", "TOP_UP", "1234", "12.34"), ("cus_1", "usd", "CHARGE", "-99", "-0.99"),
        ("cus_1", "jpy", "TOP_UP", "500", "500"),
    ]  # fmt: skip
    assert rows[3]["balanceAfterDecimal"] == "23.69" and rows[3]["reference"] == "inv_1"
    assert rows[0]["description"] == 'line, with "quotes"\nand a newline'
    assert all(datetime.fromisoformat(r["createdAt"]).tzinfo is not None for r in rows)


async def test_ndjson_and_periods(env: Env) -> None:
    await _ledger(env)
    done = await asyncio.to_thread(
        cli, env.settings.database_url, "export", "--organization", "org-a", "--from", START,
        "--to", _end(), "--format", "ndjson",
    )  # fmt: skip
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["amount"] for r in records] == [1234, 1234, 1234, -99, 500]
    assert set(records[0]) == set(exports.COLUMNS)
    # from is exclusive, to inclusive: the period after the second entry up to the fourth.
    second, fourth = records[1]["createdAt"], records[3]["createdAt"]
    part = await asyncio.to_thread(
        cli, env.settings.database_url, "export", "--organization", "org-a", "--from", second,
        "--to", fourth, "--format", "ndjson",
    )  # fmt: skip
    assert [json.loads(line)["id"] for line in part.stdout.splitlines()] == [
        r["id"] for r in records if second < r["createdAt"] <= fourth
    ]


async def test_bad_exports_are_refused_and_write_nothing(env: Env, tmp_path: Path) -> None:
    await _ledger(env)
    url, out = env.settings.database_url, tmp_path / "x.csv"
    for args, reason in (
        (["--from", _end(), "--to", START], "--from: from must not be after to"),
        (["--from", START, "--to", _end(), "--format", "xml"], "--format: format must be csv"),
        (["--from", "2026-03-01", "--to", _end()], "--from: from must be an ISO 8601 time"),
        (["--from", START, "--to", _end(days=400)], "--to: An export covers at most 366 days"),
    ):
        done = await asyncio.to_thread(
            cli, url, "export", "--organization", "org-a", "--output", str(out), *args,
            check=False,
        )  # fmt: skip
        assert done.returncode == 1 and reason in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and not out.exists()
    unknown = await asyncio.to_thread(
        cli, url, "export", "--organization", "nobody", "--from", START, "--to", _end(),
        check=False,
    )  # fmt: skip
    assert unknown.returncode == 1 and "no organization named 'nobody'" in unknown.stderr


async def test_a_progress_bar_on_a_terminal_only(env: Env, tmp_path: Path) -> None:
    await _ledger(env)
    args = [CLI, "export", "--organization", "org-a", "--from", START, "--to", _end()]
    environ = {**os.environ, "GQL_WALLET_DATABASE_URL": env.settings.database_url}

    def run(output: list[str], stdout: Any) -> str:
        main, terminal = pty.openpty()
        with os.fdopen(main, "rb", buffering=0) as screen:
            process = subprocess.Popen(args + output, env=environ, stdout=stdout, stderr=terminal)
            os.close(terminal)
            shown = b""
            while chunk := _read(screen):
                shown += chunk
            process.wait(timeout=60)
        return shown.decode(errors="replace")

    shown = run(["--output", str(tmp_path / "a.csv")], subprocess.DEVNULL)
    assert "exporting" in shown and "exported 5 entries" in shown, shown
    piped = run([], subprocess.PIPE)
    assert "exporting" not in piped and "exported 5 entries" in piped, piped


def _read(screen: Any) -> bytes:
    try:
        return screen.read(4096)  # type: ignore[no-any-return]
    except OSError:  # the terminal's other end is closed: all is read
        return b""


@WITH_PGBOUNCER
async def test_an_export_is_one_snapshot_while_writes_go_on(env: Env) -> None:
    for n in range(20):
        await env.api.top_up(f"cus_{n % 4}", 10_000, f"seed{n}")
    stop = asyncio.Event()

    async def writer(customer: str) -> int:
        n = 0
        while not stop.is_set():
            n += 1
            await env.api.charge(customer, 1, f"{customer}-{n}")
        return n

    writers = [asyncio.create_task(writer(f"cus_{n}")) for n in range(4)]
    await asyncio.sleep(0.3)
    rows: list[dict[str, Any]] = []
    start, end = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
    organization = await _organization(env)
    async with exports.Export(env.database, organization, start, end, "ndjson") as job:
        async for chunk in job.chunks():
            rows += [json.loads(line) for line in chunk.splitlines()]
            await asyncio.sleep(0.05)  # writes commit meanwhile
        total = await job.count()  # after the writes, in the same snapshot
    stop.set()
    written = sum(await asyncio.gather(*writers))
    assert written > 20 and len(rows) == total
    # Each wallet's entries in the export form its whole ledger up to a point: every chain
    # unbroken from 0, as no entry committed after the snapshot is in it, and none before is out.
    by_wallet: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_wallet[row["walletId"]].append(row)
    for entries in by_wallet.values():
        balance = 0
        for entry in entries:
            balance += entry["amount"]
            assert entry["balanceAfter"] == balance, entries
    async with env.database.read_transaction() as conn:
        now = await repo.statements.count_entries(conn, organization, start, end)
    assert now > len(rows)  # the writes after the snapshot are in the ledger, not the export


async def _organization(env: Env) -> Any:
    async with env.database.read_connection() as conn:
        return await repo.statements.organization_named(conn, "org-a")


@WITH_PGBOUNCER
async def test_the_same_over_http(env: Env) -> None:
    await _ledger(env)
    url = "/exports/transactions"
    period = {"from": START, "to": _end()}

    async def get(token: str | None, **params: str) -> Any:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return await env.client.get(url, params=params, headers=headers)

    answer = await get(env.api.key, **period)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text, newline="")))
    assert [r["amount"] for r in rows] == ["1234", "1234", "1234", "-99", "500"]
    lines = (await get(env.api.key, **period, format="ndjson")).text.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["TOP_UP"] * 3 + ["CHARGE", "TOP_UP"]
    other = (await get(env.other.key, **period, format="ndjson")).text.splitlines()
    assert [json.loads(line)["customerId"] for line in other] == ["cus_9"]
    # Refusals: a clear code, the argument named, nothing streamed.
    for params, field in (
        ({"from": _end(), "to": START}, "from"),
        ({**period, "format": "xml"}, "format"),
        ({"to": _end()}, "from"),
        ({"from": START, "to": _end(days=400)}, "to"),
        ({"from": "garbage", "to": _end()}, "from"),
    ):
        refused = await get(env.api.key, **params)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "INVALID_INPUT"
        assert refused.json()["error"]["field"] == [field], refused.text
    assert (await get(None, **period)).status_code == 401
    session = await env.customer_session(env.api, "cus_1")
    assert (await get(session.key, **period)).status_code == 403


async def test_a_statement_file_that_verify_checks(env: Env, tmp_path: Path) -> None:
    await _ledger(env)
    url, statement = env.settings.database_url, tmp_path / "statement.csv"
    first = (await env.api(
        '{ customerWallets(customerId: "cus_1") { transactions(first: 1) { edges { node {'
        " createdAt } } } } }"
    ))["customerWallets"]  # fmt: skip
    cut = first[0]["transactions"]["edges"][0]["node"]["createdAt"]  # cus_1's last usd entry
    await asyncio.to_thread(
        cli, url, "export", "--organization", "org-a", "--from", START, "--to", _end(),
        "--output", str(tmp_path / "x.csv"), "--statement", str(statement),
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(statement.read_text(), newline="")))
    assert list(rows[0]) == list(exports.STATEMENT_COLUMNS)
    assert [(r["customerId"], r["currency"], r["openingBalance"], r["total"],
             r["closingBalance"], r["entryCount"]) for r in rows] == [
        ("cus_1", "usd", "0", "2369", "2369", "3"), ("cus_2", "usd", "0", "1234", "1234", "1"),
        ("cus_1", "jpy", "0", "500", "500", "1"),
    ]  # fmt: skip
    done = await asyncio.to_thread(cli, url, "verify", "--statement", str(statement))
    assert "verified 3 statement rows against the ledger: 0 problems" in done.stdout
    # A figure changed, and a wallet left out: each named, exit 1.
    rows[0]["closingBalance"] = "2370"
    del rows[1]
    with statement.open("w", newline="") as file:
        writer = csv.DictWriter(file, exports.STATEMENT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    bad = await asyncio.to_thread(cli, url, "verify", "--statement", str(statement), check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "closingBalance 2370, the ledger says 2369" in bad.stdout
    assert "has entries by" in bad.stdout and "but no row" in bad.stdout
    # A later period opens where this one closed.
    later = tmp_path / "later.csv"
    await asyncio.to_thread(
        cli, url, "export", "--organization", "org-a", "--from", cut, "--to", _end(),
        "--format", "ndjson", "--output", str(tmp_path / "y.ndjson"), "--statement", str(later),
    )  # fmt: skip
    opened = {r["customerId"] + r["currency"]: r for r in csv.DictReader(later.open(newline=""))}
    assert opened["cus_1usd"]["openingBalance"] == "2369"
    assert opened["cus_1usd"]["entryCount"] == "0"
