"""Holds: authorize first, capture or void after, through the GraphQL API on both databases
(CONTRACT part 2, "Holds")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from gql_wallet import ledger
from gql_wallet.audit import audit
from gql_wallet.repository.records import (
    credit_blocks,
    hold_reservations,
    transactions,
    wallets,
)
from gql_wallet.repository.records import wallet_holds as holds
from tests.conftest import WITH_PGBOUNCER, Api, Env, start_server, stop_server
from tests.test_credits import ENTRY, charge, codes, grant, later, refund, reverse, top_up, write
from tests.test_subscriptions import NO_LIMITS, workers_for
from tests.wsclient import connect

WALLET = "id balance heldBalance availableBalance"
HOLD = (
    "id amount capturedAmount status expiresAt resolvedAt description reference "
    "idempotencyKey capture { id type amount } wallet { heldBalance availableBalance }"
)

CREATE = f"""
mutation Create($input: CreateHoldInput!) {{
  createHold(input: $input) {{
    hold {{ {HOLD} }} wallet {{ {WALLET} }} userErrors {{ code field message }}
  }}
}}"""

CAPTURE = f"""
mutation Capture($input: CaptureHoldInput!) {{
  captureHold(input: $input) {{
    hold {{ {HOLD} }} wallet {{ {WALLET} }} transaction {{ {ENTRY} }}
    userErrors {{ code field message }}
  }}
}}"""

VOID = f"""
mutation Void($input: VoidHoldInput!) {{
  voidHold(input: $input) {{
    hold {{ {HOLD} }} wallet {{ {WALLET} }} userErrors {{ code field message }}
  }}
}}"""

VIEW = f"""
query View($c: String!, $status: HoldStatus, $first: Int, $after: String) {{
  customerWallet(customerId: $c, currency: "usd") {{
    {WALLET}
    holds(first: $first, after: $after, status: $status) {{
      edges {{ cursor node {{ id amount status }} }}
      pageInfo {{ hasNextPage endCursor }}
    }}
    credits(first: 50) {{ edges {{ node {{ id amount remaining availableRemaining status }} }} }}
    transactions(first: 50) {{ edges {{ node {{ type amount balanceAfter
      allocations {{ amount credit {{ id }} }} }} }} }}
  }}
}}"""


async def create(
    api: Api, amount: int, key: str, customer: str = "cus_1", **extra: Any
) -> dict[str, Any]:
    return await write(
        api, CREATE, "createHold", customerId=customer, currency="usd", amount=amount,
        idempotencyKey=key, **extra,
    )  # fmt: skip


async def capture(api: Api, hold_id: str, key: str, **extra: Any) -> dict[str, Any]:
    return await write(api, CAPTURE, "captureHold", holdId=hold_id, idempotencyKey=key, **extra)


async def void(api: Api, hold_id: str, key: str) -> dict[str, Any]:
    return await write(api, VOID, "voidHold", holdId=hold_id, idempotencyKey=key)


async def view(api: Api, customer: str = "cus_1", **variables: Any) -> dict[str, Any]:
    data = await api(VIEW, {"c": customer, "first": 50, **variables})
    return data["customerWallet"]  # type: ignore[no-any-return]


def money(wallet: dict[str, Any]) -> tuple[int, int, int]:
    return wallet["balance"], wallet["heldBalance"], wallet["availableBalance"]


async def counts(env: Env) -> tuple[int, ...]:
    async with env.database.read_transaction() as conn:
        return tuple(
            [
                (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                for t in (transactions, holds, hold_reservations)
            ]
        )


class TestCreate:
    async def test_a_hold_reserves_from_the_available_balance(self, env: Env) -> None:
        await top_up(env.api, 1_000, "t")
        made = await create(env.api, 300, "h", description="render", reference="job-1")
        assert made["userErrors"] == []
        hold = made["hold"]
        assert (hold["amount"], hold["capturedAmount"], hold["status"]) == (300, 0, "OPEN")
        assert (hold["description"], hold["reference"], hold["idempotencyKey"]) == (
            "render",
            "job-1",
            "h",
        )
        assert hold["resolvedAt"] is None and hold["capture"] is None
        assert money(made["wallet"]) == (1_000, 300, 700)
        # Charges and further holds take only what is available.
        assert codes(await charge(env.api, 701, "c1")) == ["INSUFFICIENT_FUNDS"]
        assert codes(await create(env.api, 701, "h2")) == ["INSUFFICIENT_FUNDS"]
        assert (await charge(env.api, 700, "c2"))["wallet"]["balance"] == 300
        wallet = await view(env.api)
        assert money(wallet) == (300, 300, 0)
        (credit,) = [e["node"] for e in wallet["credits"]["edges"]]
        assert (credit["remaining"], credit["availableRemaining"]) == (300, 0)

    async def test_a_hold_reserves_in_burn_down_order(self, env: Env) -> None:
        await top_up(env.api, 100, "paid")
        await grant(env.api, 50, "promo")
        made = await create(env.api, 120, "h")
        wallet = await view(env.api)
        by_amount = {e["node"]["amount"]: e["node"] for e in wallet["credits"]["edges"]}
        assert by_amount[50]["availableRemaining"] == 0  # the grant first (PROMOTIONAL)
        assert by_amount[100]["availableRemaining"] == 30
        spent = await capture(env.api, made["hold"]["id"], "cap", amount=60)
        allocations = spent["transaction"]["allocations"]
        assert [a["amount"] for a in allocations] == [-50, -10]
        assert allocations[0]["credit"]["id"] == by_amount[50]["id"]

    async def test_no_wallet_and_bad_input(self, env: Env) -> None:
        assert codes(await create(env.api, 10, "h")) == ["WALLET_NOT_FOUND"]
        await top_up(env.api, 100, "t")
        before = await counts(env)
        for seconds in (0, 604_801, -5):
            refused = await create(env.api, 10, f"s{seconds}", expiresInSeconds=seconds)
            assert codes(refused) == ["INVALID_INPUT"]
            assert refused["userErrors"][0]["field"] == ["input", "expiresInSeconds"]
        for amount in (0, -1, 2**53):
            assert codes(await create(env.api, amount, f"a{amount}")) == ["INVALID_AMOUNT"]
        assert codes(await create(env.api, 10, "gql-wallet:x")) == ["INVALID_INPUT"]
        assert await counts(env) == before
        assert codes(await create(env.api, 10, "h")) == ["WALLET_NOT_FOUND"]  # final for its key

    async def test_idempotency(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        first = await create(env.api, 40, "h")
        again = await create(env.api, 40, "h")
        assert again["hold"]["id"] == first["hold"]["id"] and again["userErrors"] == []
        assert money(again["wallet"]) == (100, 40, 60)
        assert codes(await create(env.api, 41, "h")) == ["IDEMPOTENCY_KEY_REUSED"]
        # One key space for every write.
        assert codes(await charge(env.api, 40, "h")) == ["IDEMPOTENCY_KEY_REUSED"]
        assert codes(await create(env.api, 1, "t")) == ["IDEMPOTENCY_KEY_REUSED"]
        refused = await create(env.api, 1_000, "big")
        assert codes(refused) == ["INSUFFICIENT_FUNDS"]
        await top_up(env.api, 10_000, "t2")
        assert codes(await create(env.api, 1_000, "big")) == ["INSUFFICIENT_FUNDS"]  # final


class TestResolve:
    @WITH_PGBOUNCER
    async def test_capture_part_releases_the_rest(self, env: Env) -> None:
        await top_up(env.api, 1_000, "t")
        hold = (await create(env.api, 300, "h", reference="job"))["hold"]
        done = await capture(env.api, hold["id"], "cap", amount=120, description="actual")
        assert done["userErrors"] == []
        entry = done["transaction"]
        assert (entry["type"], entry["amount"], entry["balanceAfter"]) == ("CAPTURE", -120, 880)
        assert sum(a["amount"] for a in entry["allocations"]) == -120
        assert (done["hold"]["status"], done["hold"]["capturedAmount"]) == ("CAPTURED", 120)
        assert done["hold"]["capture"]["id"] == entry["id"]
        assert done["hold"]["resolvedAt"] is not None
        assert money(done["wallet"]) == (880, 0, 880)
        # Replays answer the first outcome; a second capture or a void is refused.
        again = await capture(env.api, hold["id"], "cap", amount=120, description="actual")
        assert again["transaction"]["id"] == entry["id"] and again["userErrors"] == []
        assert codes(await capture(env.api, hold["id"], "cap2")) == ["HOLD_ALREADY_CAPTURED"]
        assert codes(await void(env.api, hold["id"], "v")) == ["HOLD_ALREADY_CAPTURED"]
        assert codes(await capture(env.api, hold["id"], "cap", amount=5)) == [
            "IDEMPOTENCY_KEY_REUSED"
        ]
        # A capture is refundable like a charge.
        back = await refund(env.api, entry["id"], "r", amount=20)
        assert back["userErrors"] == [] and back["wallet"]["balance"] == 900
        assert back["transaction"]["reverses"]["refundedAmount"] == 20

    async def test_capture_defaults_to_the_whole_hold_and_never_more(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        hold = (await create(env.api, 60, "h"))["hold"]
        assert codes(await capture(env.api, hold["id"], "big", amount=61)) == [
            "CAPTURE_EXCEEDS_HOLD"
        ]
        assert codes(await capture(env.api, hold["id"], "zero", amount=0)) == ["INVALID_AMOUNT"]
        done = await capture(env.api, hold["id"], "all")
        assert done["transaction"]["amount"] == -60 and money(done["wallet"]) == (40, 0, 40)

    async def test_void_releases_everything_and_writes_no_entry(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        hold = (await create(env.api, 60, "h"))["hold"]
        before = (await counts(env))[0]
        done = await void(env.api, hold["id"], "v")
        assert done["userErrors"] == [] and done["hold"]["status"] == "VOIDED"
        assert money(done["wallet"]) == (100, 0, 100)
        assert (await counts(env))[0] == before
        assert codes(await void(env.api, hold["id"], "v2")) == ["HOLD_ALREADY_VOIDED"]
        assert codes(await capture(env.api, hold["id"], "c")) == ["HOLD_ALREADY_VOIDED"]
        assert (await void(env.api, hold["id"], "v"))["hold"]["status"] == "VOIDED"  # replay

    async def test_unknown_or_foreign_holds_write_nothing(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        hold = (await create(env.api, 60, "h"))["hold"]
        before = await counts(env)
        for api, hold_id in (
            (env.api, "00000000-0000-0000-0000-000000000000"),
            (env.api, "not-a-uuid"),
            (env.other, hold["id"]),
        ):
            refused = await capture(api, hold_id, "x")
            assert codes(refused) == ["HOLD_NOT_FOUND"] and refused["hold"] is None
            assert codes(await void(api, hold_id, "y")) == ["HOLD_NOT_FOUND"]
        assert await counts(env) == before
        assert (await env.other(HOLD_QUERY, {"id": hold["id"]}))["hold"] is None

    async def test_reversals_never_take_reserved_funds(self, env: Env) -> None:
        paid = await top_up(env.api, 100, "t")
        await create(env.api, 70, "h")
        refused = await reverse(env.api, paid["transaction"]["id"], "r", amount=31)
        assert codes(refused) == ["REVERSAL_EXCEEDS_REMAINING"]
        done = await reverse(env.api, paid["transaction"]["id"], "r2")
        assert done["transaction"]["amount"] == -30
        assert money(await view(env.api)) == (70, 70, 0)


HOLD_QUERY = f"query Hold($id: ID!) {{ hold(id: $id) {{ {HOLD} }} }}"


class TestExpiry:
    async def test_an_open_hold_past_its_expiry_is_expired_for_every_read_and_write(
        self, env: Env
    ) -> None:
        await top_up(env.api, 100, "t")
        hold = (await create(env.api, 80, "h", expiresInSeconds=1))["hold"]
        assert money(await view(env.api)) == (100, 80, 20)
        await asyncio.sleep(1.3)
        shown = (await env.api(HOLD_QUERY, {"id": hold["id"]}))["hold"]
        assert shown["status"] == "EXPIRED" and shown["resolvedAt"] == hold["expiresAt"]
        wallet = await view(env.api)
        assert money(wallet) == (100, 0, 100)
        assert [e["node"]["status"] for e in wallet["holds"]["edges"]] == ["EXPIRED"]
        assert codes(await capture(env.api, hold["id"], "late")) == ["HOLD_EXPIRED"]
        assert codes(await void(env.api, hold["id"], "late2")) == ["HOLD_EXPIRED"]
        assert (await charge(env.api, 100, "all"))["wallet"]["balance"] == 0

    async def test_a_write_frees_an_expired_hold_first(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        await create(env.api, 100, "h", expiresInSeconds=1)
        await asyncio.sleep(1.3)
        done = await charge(env.api, 100, "c")  # nothing read the wallet since
        assert done["userErrors"] == [] and done["wallet"]["balance"] == 0
        assert money(await view(env.api)) == (0, 0, 0)

    async def test_reserved_credits_of_an_expired_block_expire_when_released(
        self, env: Env
    ) -> None:
        await grant(env.api, 50, "promo", expiresAt=later(1.0))
        await top_up(env.api, 30, "paid")
        hold = (await create(env.api, 60, "h"))["hold"]  # 50 promo + 10 paid
        await asyncio.sleep(1.3)
        wallet = await view(env.api)
        # The block has expired, but what the hold reserved from it is still held.
        assert money(wallet) == (80, 60, 20)
        promo = next(e["node"] for e in wallet["credits"]["edges"] if e["node"]["amount"] == 50)
        assert (promo["status"], promo["remaining"], promo["availableRemaining"]) == (
            "EXPIRED",
            50,
            0,
        )
        done = await capture(env.api, hold["id"], "cap", amount=20)
        # The capture spends from the reserved credits; what it released of the expired block
        # expires at once.
        assert done["transaction"]["amount"] == -20
        after = await view(env.api)
        types = [e["node"]["type"] for e in after["transactions"]["edges"]]
        assert types[:2] == ["EXPIRATION", "CAPTURE"]
        assert after["transactions"]["edges"][0]["node"]["amount"] == -30
        assert money(after) == (30, 0, 30)

    async def test_the_expiry_of_a_resolved_hold_changes_nothing(self, env: Env) -> None:
        # PostgreSQL keeps a wallet's soonest expiry as a bound that a capture or void leaves
        # (migration 0009): when it comes, nothing is written and the wallet is not modified.
        await top_up(env.api, 100, "t")
        captured = (await create(env.api, 40, "h1", expiresInSeconds=1))["hold"]
        await capture(env.api, captured["id"], "c1", amount=10)
        voided = (await create(env.api, 20, "h2", expiresInSeconds=1))["hold"]
        before = await void(env.api, voided["id"], "v2")
        modified = 'query { customerWallet(customerId: "cus_1", currency: "usd") { modifiedAt } }'
        modified_at = (await env.api(modified))["customerWallet"]["modifiedAt"]
        await asyncio.sleep(1.3)
        wallet = await view(env.api)
        assert money(wallet) == money(before["wallet"]) == (90, 0, 90)
        assert [e["node"]["type"] for e in wallet["transactions"]["edges"]] == ["CAPTURE", "TOP_UP"]
        assert sorted(e["node"]["status"] for e in wallet["holds"]["edges"]) == [
            "CAPTURED",
            "VOIDED",
        ]
        assert (await env.api(modified))["customerWallet"]["modifiedAt"] == modified_at
        assert await ledger.sweep_expiries(env.database) == []
        async with env.database.read_transaction() as conn:
            bound = (await conn.execute(select(wallets.c.next_expiry_at))).scalar_one()
        assert bound is None  # made exact by the read

    async def test_the_sweeper_releases_expired_holds(self, env: Env) -> None:
        await top_up(env.api, 100, "t")
        await create(env.api, 40, "h", expiresInSeconds=1)
        await asyncio.sleep(1.3)
        assert len(await ledger.sweep_expiries(env.database)) == 1
        assert await ledger.sweep_expiries(env.database) == []
        async with env.database.read_transaction() as conn:
            status = (await conn.execute(select(holds.c.status))).scalar_one()
            held = (await conn.execute(select(func.sum(credit_blocks.c.held)))).scalar_one()
        assert (status, held) == ("EXPIRED", 0)


class TestReads:
    async def test_holds_pages_newest_first_with_a_status_filter(self, env: Env) -> None:
        await top_up(env.api, 1_000, "t")
        made = [(await create(env.api, 10, f"h{i}"))["hold"]["id"] for i in range(3)]
        await void(env.api, made[0], "v")
        first = (await view(env.api, first=2))["holds"]
        assert [e["node"]["id"] for e in first["edges"]] == [made[2], made[1]]
        assert first["pageInfo"]["hasNextPage"] is True
        rest = (await view(env.api, first=2, after=first["pageInfo"]["endCursor"]))["holds"]
        assert [e["node"]["id"] for e in rest["edges"]] == [made[0]]
        opened = (await view(env.api, status="OPEN"))["holds"]["edges"]
        assert [e["node"]["id"] for e in opened] == [made[2], made[1]]
        voided = (await view(env.api, status="VOIDED"))["holds"]["edges"]
        assert [e["node"]["id"] for e in voided] == [made[0]]

    async def test_a_customer_session_reads_its_own_holds_only(self, env: Env) -> None:
        await top_up(env.api, 100, "t1")
        await top_up(env.api, 100, "t2", customer="cus_2")
        mine = (await create(env.api, 10, "h1"))["hold"]
        theirs = (await create(env.api, 10, "h2", customer="cus_2"))["hold"]
        session = await env.customer_session(env.api, "cus_1")
        assert (await session(HOLD_QUERY, {"id": mine["id"]}))["hold"]["id"] == mine["id"]
        assert (await session(HOLD_QUERY, {"id": theirs["id"]}))["hold"] is None
        wallet = await view(session)
        assert [e["node"]["id"] for e in wallet["holds"]["edges"]] == [mine["id"]]
        _, refused = await session.answer(CREATE, {"input": {
            "customerId": "cus_1", "currency": "usd", "amount": 1, "idempotencyKey": "s",
        }})  # fmt: skip
        assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_verify_checks_the_hold_invariants(env: Env) -> None:
    await top_up(env.api, 100, "t")
    hold = (await create(env.api, 30, "h"))["hold"]
    await capture(env.api, (await create(env.api, 20, "h2"))["hold"]["id"], "c", amount=5)
    assert (await audit(env.database)).problems == []
    async with env.database.write_transaction() as conn:
        await conn.execute(holds.update().where(holds.c.idempotency_key == "h").values(amount=31))
    problems = (await audit(env.database)).problems
    assert any("held balance 30" in p for p in problems), problems
    assert any(f"hold {hold['id']} of 31 reserved 30" in p for p in problems), problems
    async with env.database.write_transaction() as conn:
        await conn.execute(credit_blocks.update().values(held=credit_blocks.c.held + 1))
    problems = (await audit(env.database)).problems
    assert any("has held 31" in p for p in problems), problems


HOLD_SUBSCRIPTION = """subscription($c: String!) { walletUpdated(customerId: $c) {
  wallet { balance heldBalance availableBalance }
  transaction { type amount } } }"""


async def test_walletupdated_fires_on_hold_changes(database_url: str, tmp_path: Path) -> None:
    live = start_server(database_url, workers_for(database_url), tmp_path / "server.log", NO_LIMITS)
    try:
        key = live.new_key("acme")
        async with httpx.AsyncClient(base_url=live.url) as client:
            api = Api(client, key)
            await top_up(api, 100, "t")
            async with connect(live.url, key) as ws:
                await ws.subscribe("cus_1", query=HOLD_SUBSCRIPTION)
                first = await asyncio.wait_for(ws.update(), 10)
                assert money(first["wallet"]) == (100, 0, 100)
                hold = (await create(api, 60, "h"))["hold"]
                made = await asyncio.wait_for(ws.update(), 10)
                assert made["transaction"] is None and money(made["wallet"]) == (100, 60, 40)
                await capture(api, hold["id"], "c", amount=25)
                captured = await asyncio.wait_for(ws.update(), 10)
                assert captured["transaction"] == {"type": "CAPTURE", "amount": -25}
                assert money(captured["wallet"]) == (75, 0, 75)
                other = (await create(api, 10, "h2"))["hold"]
                assert money((await asyncio.wait_for(ws.update(), 10))["wallet"]) == (75, 10, 65)
                await void(api, other["id"], "v")
                voided = await asyncio.wait_for(ws.update(), 10)
                assert voided["transaction"] is None and money(voided["wallet"]) == (75, 0, 75)
                # An expiry is an event too, whoever writes it (here the first read after it).
                await create(api, 5, "h3", expiresInSeconds=1)
                assert money((await asyncio.wait_for(ws.update(), 10))["wallet"]) == (75, 5, 70)
                await asyncio.sleep(1.3)
                assert money(await view(api)) == (75, 0, 75)
                lapsed = await asyncio.wait_for(ws.update(), 10)
                assert lapsed["transaction"] is None and money(lapsed["wallet"]) == (75, 0, 75)
    finally:
        stop_server(live)
