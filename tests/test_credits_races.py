"""Credit blocks under concurrency and crashes, against real server processes on SQLite and
PostgreSQL: charges, refunds and reversals on a few wallets while their blocks expire, and
kill -9 during expiry sweeps. Afterwards no block is below 0, the sums hold (`gql-wallet
verify`), every acknowledged write is in the ledger exactly once, and every expiry is written
exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from gql_wallet.db import create_database
from gql_wallet.settings import Settings
from tests.conftest import cli, start_server, stop_server

ENTRY = "transaction { id amount } userErrors { code }"
DOCUMENTS = {
    "topUpWallet": f"mutation($i: TopUpWalletInput!) {{ topUpWallet(input: $i) {{ {ENTRY} }} }}",
    "grantCredits": f"mutation($i: GrantCreditsInput!) {{ grantCredits(input: $i) {{ {ENTRY} }} }}",
    "chargeWallet": f"mutation($i: ChargeWalletInput!) {{ chargeWallet(input: $i) {{ {ENTRY} }} }}",
    "refundCharge": f"mutation($i: RefundChargeInput!) {{ refundCharge(input: $i) {{ {ENTRY} }} }}",
    "reverseTopUp": f"mutation($i: ReverseTopUpInput!) {{ reverseTopUp(input: $i) {{ {ENTRY} }} }}",
}
READ = 'query($c: String!) { customerWallet(customerId: $c, currency: "usd") { balance } }'
# The refusals a racing write may meet; anything else fails the test.
EXPECTED_REFUSALS = {"INSUFFICIENT_FUNDS", "REFUND_EXCEEDS_CHARGE", "REVERSAL_EXCEEDS_REMAINING"}


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@dataclass
class Ledger:
    """What the server acknowledged, by idempotency key."""

    acknowledged: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    charges: list[str] = field(default_factory=list)
    credits: list[str] = field(default_factory=list)
    lowest_read: int = 0
    unanswered: int = 0
    expected: frozenset[str] = frozenset(EXPECTED_REFUSALS)

    def note(self, key: str, payload: dict[str, Any]) -> tuple[str | None, str | None]:
        transaction = payload.get("transaction")
        errors = payload["userErrors"]
        outcome = (
            transaction["id"] if transaction else None,
            errors[0]["code"] if errors else None,
        )
        assert outcome[1] is None or outcome[1] in self.expected, (key, payload)
        first = self.acknowledged.setdefault(key, outcome)
        assert first == outcome, (key, first, outcome)  # every answer of a key is the same
        return outcome


async def send(
    client: httpx.AsyncClient,
    api_key: str,
    field_name: str,
    key: str,
    fields: dict[str, Any],
    documents: dict[str, str] = DOCUMENTS,
) -> dict[str, Any] | None:
    """The payload, or None when the request got no answer (a dying server)."""
    try:
        response = await client.post(
            "/graphql",
            json={
                "query": documents[field_name],
                "variables": {"i": {**fields, "idempotencyKey": key}},
            },
            headers={"Authorization": f"Bearer {api_key}"},
        )
    except httpx.TransportError:
        return None
    if response.status_code >= 500:
        return None
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"][field_name]  # type: ignore[no-any-return]


async def read_balance(client: httpx.AsyncClient, api_key: str, customer: str) -> int | None:
    try:
        response = await client.post(
            "/graphql",
            json={"query": READ, "variables": {"c": customer}},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    except httpx.TransportError:
        return None
    if response.status_code >= 500:
        return None
    body = response.json()
    assert "errors" not in body, body
    return body["data"]["customerWallet"]["balance"]  # type: ignore[no-any-return]


async def ledger_rows(database_url: str, sql: str) -> list[Any]:
    database = create_database(Settings(database_url=database_url))
    try:
        async with database.engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await database.dispose()


def assert_verified(database_url: str) -> None:
    result = cli(database_url, "verify", check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, result.stdout


async def assert_ledger_is_the_acknowledged_writes(database_url: str, ledger: Ledger) -> None:
    """Every entry a client asked for is one acknowledged write, exactly once; the rest are
    expiries, written by the server."""
    rows = await ledger_rows(
        database_url, "SELECT idempotency_key, id, type FROM wallet_transactions"
    )
    by_key = Counter(row.idempotency_key for row in rows)
    assert max(by_key.values()) == 1, "an idempotency key was applied twice"
    written = {
        row.idempotency_key: str(row.id).replace("-", "")
        for row in rows
        if row.type != "EXPIRATION"
    }
    applied = {
        key: transaction_id.replace("-", "")
        for key, (transaction_id, _code) in ledger.acknowledged.items()
        if transaction_id is not None
    }
    assert written == applied, "the ledger differs from the acknowledged writes"


async def assert_each_expiry_written_once(database_url: str, refunded: bool) -> None:
    """No block past its expiry holds credits, and (without refunds, which can give credits back
    to an expired block) each expired block has at most one EXPIRATION."""
    rows = await ledger_rows(
        database_url,
        "SELECT b.id, b.remaining, b.expires_at, "
        "(SELECT count(*) FROM credit_allocations AS a JOIN wallet_transactions AS t "
        " ON t.seq = a.entry_seq WHERE a.block_seq = b.seq AND t.type = 'EXPIRATION') AS expiries "
        "FROM credit_blocks AS b WHERE b.expires_at IS NOT NULL",
    )
    now = datetime.now(UTC)
    for row in rows:
        expires_at = row.expires_at
        if isinstance(expires_at, str):  # SQLite
            expires_at = datetime.fromisoformat(expires_at).replace(tzinfo=UTC)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at < now - timedelta(seconds=0.5):
            assert row.remaining == 0, f"block {row.id} holds credits past its expiry"
        if not refunded:
            assert row.expiries <= 1, f"block {row.id} expired {row.expiries} times"


async def until_swept(database_url: str, within: float) -> None:
    """Wait until no block past its expiry holds credits (the sweepers have written them)."""
    deadline = time.monotonic() + within
    while True:
        rows = await ledger_rows(
            database_url,
            "SELECT count(*) AS n FROM credit_blocks WHERE remaining > 0 AND expires_at IS NOT NULL "
            "AND expires_at < "
            + (
                "now()"
                if database_url.startswith("postgresql")
                else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
            ),
        )
        if rows[0].n == 0:
            return
        assert time.monotonic() < deadline, f"{rows[0].n} expired blocks not written in {within}s"
        await asyncio.sleep(0.2)


CUSTOMERS = [f"cus_{i}" for i in range(4)]


async def test_charges_refunds_and_reversals_race_expiring_blocks(
    database_url: str, tmp_path: Path
) -> None:
    server = start_server(
        database_url,
        workers=3,
        log=tmp_path / "server.log",
        env={"GQL_WALLET_EXPIRY_SWEEP_SECONDS": "0.5"},
    )
    rng = random.Random(17)
    ledger = Ledger()
    try:
        api_key = server.new_key("acme")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            # Each wallet: a paid block that never expires and grants expiring over 1-6 s.
            for customer in CUSTOMERS:
                key = f"seed-{customer}"
                payload = await send(
                    client, api_key, "topUpWallet", key,
                    {"customerId": customer, "currency": "usd", "amount": 3_000},
                )  # fmt: skip
                assert payload is not None and ledger.note(key, payload)[0]
                ledger.credits.append(payload["transaction"]["id"])
                for n in range(12):
                    key = f"grant-{customer}-{n}"
                    payload = await send(
                        client, api_key, "grantCredits", key,
                        {"customerId": customer, "currency": "usd", "amount": 400,
                         "expiresAt": at(1 + n * 0.4), "priority": rng.choice([10, 50, 90])},
                    )  # fmt: skip
                    assert payload is not None and ledger.note(key, payload)[0]
                    ledger.credits.append(payload["transaction"]["id"])

            counter = 0
            deadline = time.monotonic() + 7

            async def one_op() -> None:
                nonlocal counter
                counter += 1
                key = f"op-{counter}"
                roll = rng.random()
                customer = rng.choice(CUSTOMERS)
                if roll < 0.45:
                    name = "chargeWallet"
                    fields: dict[str, Any] = {
                        "customerId": customer, "currency": "usd", "amount": rng.randint(1, 300)
                    }  # fmt: skip
                elif roll < 0.65 and ledger.charges:
                    name = "refundCharge"
                    fields = {"transactionId": rng.choice(ledger.charges)}
                    if rng.random() < 0.7:
                        fields["amount"] = rng.randint(1, 150)
                elif roll < 0.8:
                    name = "reverseTopUp"
                    fields = {
                        "transactionId": rng.choice(ledger.credits), "amount": rng.randint(1, 200)
                    }  # fmt: skip
                elif roll < 0.9:
                    name = "grantCredits"
                    fields = {
                        "customerId": customer, "currency": "usd", "amount": rng.randint(1, 300),
                        "expiresAt": at(rng.uniform(1.5, 3)),
                    }  # fmt: skip
                else:
                    balance = await read_balance(client, api_key, customer)
                    assert balance is None or balance >= 0
                    return
                copies = 2 if counter % 7 == 0 else 1  # a concurrent duplicate retry
                answers = await asyncio.gather(
                    *[send(client, api_key, name, key, fields) for _ in range(copies)]
                )
                for payload in answers:
                    if payload is None:
                        ledger.unanswered += 1
                        continue
                    transaction_id, _code = ledger.note(key, payload)
                    if transaction_id and name == "chargeWallet":
                        ledger.charges.append(transaction_id)
                    if transaction_id and name == "grantCredits":
                        ledger.credits.append(transaction_id)

            async def client_loop() -> None:
                while time.monotonic() < deadline:
                    await one_op()

            await asyncio.gather(*[client_loop() for _ in range(24)])
        # Every block has expired 3 s after the last write; the sweepers write what no write or
        # read has (within 60 s, the contract's bound).
        await asyncio.sleep(3)
        await until_swept(database_url, within=60)

        assert ledger.unanswered == 0
        kinds = Counter(code for _id, code in ledger.acknowledged.values())
        assert kinds[None] > 100, kinds  # writes went through, and some were refused
        assert sum(kinds.values()) - kinds[None] > 0, kinds
        await assert_ledger_is_the_acknowledged_writes(database_url, ledger)
        await assert_each_expiry_written_once(database_url, refunded=True)
        expiries = await ledger_rows(
            database_url, "SELECT count(*) AS n FROM wallet_transactions WHERE type = 'EXPIRATION'"
        )
        assert expiries[0].n > 0
        assert_verified(database_url)
        print(
            f"\n[credits race {database_url.split(':')[0]}] {len(ledger.acknowledged)} writes "
            f"acknowledged ({dict(kinds)}), {expiries[0].n} expiries"
        )
    finally:
        stop_server(server)


async def test_kill_9_during_expiry_sweeps_loses_and_doubles_nothing(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    settings = {"GQL_WALLET_EXPIRY_SWEEP_SECONDS": "0.2"}
    server = start_server(database_url, workers=2, log=log, env=settings)
    try:
        rng = random.Random(5)
        ledger = Ledger()
        customers = [f"cus_{i}" for i in range(60)]
        api_key = server.new_key("acme")
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # 3 grants per wallet, expiring over the next 2-6 s (during the kills below), and paid
            # credits that never do.
            started = time.monotonic()
            for customer in customers:
                for n, amount in enumerate((100, 200, 300)):
                    key = f"grant-{customer}-{n}"
                    payload = await send(
                        client, api_key, "grantCredits", key,
                        {"customerId": customer, "currency": "usd", "amount": amount,
                         "expiresAt": at(2 + rng.uniform(0, 4))},
                    )  # fmt: skip
                    assert payload is not None and ledger.note(key, payload)[0]
                key = f"paid-{customer}"
                payload = await send(
                    client, api_key, "topUpWallet", key,
                    {"customerId": customer, "currency": "usd", "amount": 1_000},
                )  # fmt: skip
                assert payload is not None and ledger.note(key, payload)[0]
        seeded = time.monotonic() - started

        # Kill every process of the server at random moments while the blocks expire.
        for _ in range(6):
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            server = start_server(database_url, workers=2, log=log, env=settings)
        # Past the last expiry, the restarted sweepers write the rest, before any read.
        await asyncio.sleep(max(0.0, 6 + seeded - (time.monotonic() - started)))
        await until_swept(database_url, within=60)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for customer in customers:
                assert await read_balance(client, api_key, customer) == 1_000
        await assert_ledger_is_the_acknowledged_writes(database_url, ledger)
        await assert_each_expiry_written_once(database_url, refunded=False)
        expiries = await ledger_rows(
            database_url,
            "SELECT count(*) AS n, sum(amount) AS total FROM wallet_transactions "
            "WHERE type = 'EXPIRATION'",
        )
        assert (expiries[0].n, expiries[0].total) == (3 * len(customers), -600 * len(customers))
        assert_verified(database_url)
    finally:
        stop_server(server)
