"""Holds under concurrency and crashes, against real server processes on SQLite and PostgreSQL:
mixed holds, captures, voids and charges on small wallets from several processes at once, and
holds left open across kill -9 cycles. No read ever shows a negative available balance, each
hold is resolved at most once, every acknowledged write is in the ledger exactly once, and
`gql-wallet verify` finds nothing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gql_wallet import ledger
from gql_wallet.audit import audit
from gql_wallet.auth import create_api_key
from gql_wallet.db import asyncpg_dsn, create_database
from gql_wallet.settings import Settings
from tests.conftest import start_server, stop_server
from tests.test_credits_races import (
    DOCUMENTS,
    Ledger,
    assert_ledger_is_the_acknowledged_writes,
    assert_verified,
    ledger_rows,
    send,
)
from tests.test_subscriptions import organization_of

HOLD = "hold { id status amount capturedAmount } userErrors { code }"
HOLD_DOCUMENTS = {
    **DOCUMENTS,
    "createHold": f"mutation($i: CreateHoldInput!) {{ createHold(input: $i) {{ {HOLD} }} }}",
    "captureHold": (
        f"mutation($i: CaptureHoldInput!) {{ captureHold(input: $i) {{ {HOLD} "
        "transaction { id amount } } }"
    ),
    "voidHold": f"mutation($i: VoidHoldInput!) {{ voidHold(input: $i) {{ {HOLD} }} }}",
}
READ = """query($c: String!) { customerWallet(customerId: $c, currency: "usd") {
  balance heldBalance availableBalance } }"""
HOLD_READ = "query($id: ID!) { hold(id: $id) { status amount capturedAmount expiresAt } }"
# The refusals a racing write may meet; anything else fails the test.
REFUSALS = frozenset(
    {
        "INSUFFICIENT_FUNDS",
        "HOLD_ALREADY_CAPTURED",
        "HOLD_ALREADY_VOIDED",
        "HOLD_EXPIRED",
        "CAPTURE_EXCEEDS_HOLD",
    }
)
RESOLVED = {"CAPTURED", "VOIDED"}


async def query(
    client: httpx.AsyncClient, api_key: str, document: str, variables: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        response = await client.post(
            "/graphql",
            json={"query": document, "variables": variables},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    except httpx.TransportError:
        return None
    if response.status_code >= 500:
        return None
    body = response.json()
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


CUSTOMERS = [f"cus_{i}" for i in range(4)]


async def test_holds_captures_voids_and_charges_race(database_url: str, tmp_path: Path) -> None:
    server = start_server(
        database_url,
        workers=3,
        log=tmp_path / "server.log",
        env={"GQL_WALLET_EXPIRY_SWEEP_SECONDS": "0.5"},
    )
    rng = random.Random(18)
    ledger = Ledger(expected=REFUSALS)
    holds: dict[str, int] = {}  # hold id -> amount
    made: dict[str, str] = {}  # createHold key -> hold id (every answer the same)
    resolutions: dict[str, set[str]] = defaultdict(set)  # hold id -> keys that resolved it
    reads = 0
    try:
        api_key = server.new_key("acme")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            for customer in CUSTOMERS:
                key = f"seed-{customer}"
                payload = await send(
                    client, api_key, "topUpWallet", key,
                    {"customerId": customer, "currency": "usd", "amount": 2_000},
                )  # fmt: skip
                assert payload is not None and ledger.note(key, payload)[0]

            counter = 0
            deadline = time.monotonic() + 7

            async def one_op() -> None:
                nonlocal counter, reads
                counter += 1
                key = f"op-{counter}"
                roll = rng.random()
                customer = rng.choice(CUSTOMERS)
                fields: dict[str, Any]
                if roll < 0.35:
                    name = "createHold"
                    fields = {
                        "customerId": customer, "currency": "usd", "amount": rng.randint(1, 400),
                        "expiresInSeconds": rng.choice([1, 2, 3600]),
                    }  # fmt: skip
                elif roll < 0.55 and holds:
                    name = "captureHold"
                    hold_id = rng.choice(list(holds))
                    fields = {"holdId": hold_id}
                    if rng.random() < 0.6:
                        fields["amount"] = rng.randint(1, holds[hold_id] + 20)
                elif roll < 0.65 and holds:
                    name = "voidHold"
                    fields = {"holdId": rng.choice(list(holds))}
                elif roll < 0.85:
                    name = "chargeWallet"
                    fields = {
                        "customerId": customer, "currency": "usd", "amount": rng.randint(1, 200)
                    }  # fmt: skip
                elif roll < 0.9:
                    name = "topUpWallet"
                    fields = {
                        "customerId": customer, "currency": "usd", "amount": rng.randint(1, 300)
                    }  # fmt: skip
                else:
                    data = await query(client, api_key, READ, {"c": customer})
                    if data is not None:
                        wallet = data["customerWallet"]
                        reads += 1
                        assert wallet["availableBalance"] >= 0, wallet
                        assert 0 <= wallet["heldBalance"] <= wallet["balance"], wallet
                        assert wallet["availableBalance"] == (
                            wallet["balance"] - wallet["heldBalance"]
                        )
                    return
                copies = 2 if counter % 7 == 0 else 1  # a concurrent duplicate retry
                answers = await asyncio.gather(
                    *[
                        send(client, api_key, name, key, fields, HOLD_DOCUMENTS)
                        for _ in range(copies)
                    ]
                )
                for payload in answers:
                    if payload is None:
                        ledger.unanswered += 1
                        continue
                    _transaction_id, code = ledger.note(key, payload)
                    hold = payload.get("hold")
                    if name == "createHold" and code is None:
                        assert made.setdefault(key, hold["id"]) == hold["id"]
                        holds[hold["id"]] = hold["amount"]
                    if name in ("captureHold", "voidHold") and code is None:
                        assert hold["status"] in RESOLVED, payload
                        resolutions[hold["id"]].add(key)
                        if name == "captureHold":
                            captured = payload["transaction"]["amount"]
                            assert -captured == hold["capturedAmount"] <= hold["amount"]

            async def client_loop() -> None:
                while time.monotonic() < deadline:
                    await one_op()

            await asyncio.gather(*[client_loop() for _ in range(24)])

            # Each hold is resolved at most once, and as its every read says.
            assert all(len(keys) == 1 for keys in resolutions.values()), resolutions
            for hold_id, keys in resolutions.items():
                data = await query(client, api_key, HOLD_READ, {"id": hold_id})
                assert data is not None and data["hold"]["status"] in RESOLVED, (hold_id, keys)

        assert ledger.unanswered == 0
        kinds = Counter(code for _id, code in ledger.acknowledged.values())
        assert kinds[None] > 100 and len(holds) > 50 and reads > 20, (kinds, len(holds))
        assert kinds["INSUFFICIENT_FUNDS"] > 0, kinds  # the wallets ran dry: it was a race
        await assert_ledger_is_the_acknowledged_writes(database_url, ledger)
        rows = await ledger_rows(
            database_url, "SELECT status, count(*) AS n FROM wallet_holds GROUP BY status"
        )
        by_status = {row.status: row.n for row in rows}
        assert by_status.get("CAPTURED", 0) + by_status.get("VOIDED", 0) == len(resolutions)
        assert_verified(database_url)
        print(
            f"\n[holds race {database_url.split(':')[0]}] {len(ledger.acknowledged)} writes "
            f"({dict(kinds)}), holds {by_status}, {reads} reads"
        )
    finally:
        stop_server(server)


async def test_holds_open_across_kill_9_expire_on_time_and_capture_before(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    settings = {"GQL_WALLET_EXPIRY_SWEEP_SECONDS": "0.2"}
    server = start_server(database_url, workers=2, log=log, env=settings)
    try:
        rng = random.Random(9)
        customers = [f"cus_{i}" for i in range(20)]
        api_key = server.new_key("acme")
        ledger = Ledger(expected=REFUSALS)
        kept: dict[str, str] = {}  # customer -> the hold captured after the kills
        lapsing: dict[str, tuple[str, datetime]] = {}  # customer -> the hold left to expire
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for customer in customers:
                payload = await send(
                    client, api_key, "topUpWallet", f"seed-{customer}",
                    {"customerId": customer, "currency": "usd", "amount": 1_000},
                )  # fmt: skip
                assert payload is not None and ledger.note(f"seed-{customer}", payload)[0]
                for name, seconds, amount in (("kept", 60, 300), ("lapsing", 4, 200)):
                    key = f"{name}-{customer}"
                    payload = await send(
                        client, api_key, "createHold", key,
                        {"customerId": customer, "currency": "usd", "amount": amount,
                         "expiresInSeconds": seconds},
                        HOLD_DOCUMENTS,
                    )  # fmt: skip
                    assert payload is not None and ledger.note(key, payload) == (None, None)
                    hold_id = payload["hold"]["id"]
                    if name == "kept":
                        kept[customer] = hold_id
                    else:
                        data = await query(client, api_key, HOLD_READ, {"id": hold_id})
                        assert data is not None
                        expires_at = datetime.fromisoformat(data["hold"]["expiresAt"])
                        lapsing[customer] = (hold_id, expires_at)

        # Kill every process of the server at random moments while the holds are open.
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            server = start_server(database_url, workers=2, log=log, env=settings)

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # Still open: each can be captured, once.
            for customer, hold_id in kept.items():
                key = f"capture-{customer}"
                payload = await send(
                    client, api_key, "captureHold", key, {"holdId": hold_id, "amount": 120},
                    HOLD_DOCUMENTS,
                )  # fmt: skip
                assert payload is not None and ledger.note(key, payload)[0], payload
            last = max(expires_at for _id, expires_at in lapsing.values())
            await asyncio.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds()) + 0.3)
            # From its expiry on, every read shows each lapsed hold EXPIRED and its funds free.
            for customer, (hold_id, expires_at) in lapsing.items():
                data = await query(client, api_key, HOLD_READ, {"id": hold_id})
                assert data is not None and data["hold"]["status"] == "EXPIRED"
                assert datetime.fromisoformat(data["hold"]["expiresAt"]) == expires_at
                wallet = await query(client, api_key, READ, {"c": customer})
                assert wallet is not None
                assert wallet["customerWallet"] == {
                    "balance": 880, "heldBalance": 0, "availableBalance": 880
                }  # fmt: skip
                payload = await send(
                    client, api_key, "captureHold", f"late-{customer}", {"holdId": hold_id},
                    HOLD_DOCUMENTS,
                )  # fmt: skip
                assert payload is not None and ledger.note(f"late-{customer}", payload) == (
                    None,
                    "HOLD_EXPIRED",
                )
        await assert_ledger_is_the_acknowledged_writes(database_url, ledger)
        assert_verified(database_url)
    finally:
        stop_server(server)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_hold_resolved_by_two_processes_at_once_is_resolved_once(
    database_url: str,
) -> None:
    """Two processes capture and void one hold while a third transaction holds its wallet: both
    read the hold OPEN before they wait for the lock, and the second to get it must see what
    the first did."""
    settings = Settings(database_url=database_url)
    first, second = create_database(settings), create_database(settings)
    try:
        key = await create_api_key(first, settings.token_secret_bytes, "acme")
        organization = await organization_of(first, key)
        await ledger.top_up(first, organization, ledger.BalanceChange("cus_1", "usd", 100, "t"))
        made = await ledger.create_hold(
            first, organization, ledger.NewHold("cus_1", "usd", 60, "h")
        )
        assert made.hold is not None
        hold_id = str(made.hold.id)
        blocker = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT 1 FROM wallets WHERE customer_id = 'cus_1' FOR UPDATE")
            capture = asyncio.create_task(
                ledger.capture_hold(
                    first, organization, ledger.HoldResolution(hold_id, "c", amount=10)
                )
            )
            void = asyncio.create_task(
                ledger.void_hold(second, organization, ledger.HoldResolution(hold_id, "v"))
            )
            await asyncio.sleep(0.5)  # both have read the hold and wait for the wallet
            assert not capture.done() and not void.done()
            await transaction.commit()
            results = await asyncio.gather(capture, void)
        finally:
            await blocker.close()
        applied = [r for r in results if not r.errors]
        refused = [r.errors[0].code.value for r in results if r.errors]
        assert len(applied) == 1, results
        assert refused in (["HOLD_ALREADY_CAPTURED"], ["HOLD_ALREADY_VOIDED"]), refused
        assert (await audit(first)).problems == []
    finally:
        await first.dispose()
        await second.dispose()
