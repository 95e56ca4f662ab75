"""Credit blocks, the burn-down order, expiry, refunds and reversals, through the GraphQL API on
both databases (CONTRACT part 2: "Credits: every credit is a block", "Refunds and reversals")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gql_wallet import ledger
from gql_wallet.repository import credit_allocations, credit_blocks, transactions
from tests.conftest import Api, Env

MAX = 2**53 - 1

ENTRY = "id type amount balanceAfter idempotencyKey allocations { amount credit { id } }"
WALLET = "id balance paidBalance promotionalBalance"

GRANT = f"""
mutation Grant($input: GrantCreditsInput!) {{
  grantCredits(input: $input) {{
    wallet {{ {WALLET} }} transaction {{ {ENTRY} }} userErrors {{ code field message }}
  }}
}}"""

TOP_UP = f"""
mutation TopUp($input: TopUpWalletInput!) {{
  topUpWallet(input: $input) {{
    wallet {{ {WALLET} }} transaction {{ {ENTRY} }} userErrors {{ code field message }}
  }}
}}"""

CHARGE = f"""
mutation Charge($input: ChargeWalletInput!) {{
  chargeWallet(input: $input) {{
    wallet {{ {WALLET} }} transaction {{ {ENTRY} }} userErrors {{ code field message }}
  }}
}}"""

REFUND = f"""
mutation Refund($input: RefundChargeInput!) {{
  refundCharge(input: $input) {{
    wallet {{ {WALLET} }}
    transaction {{ {ENTRY} reverses {{ id refundedAmount }} }}
    userErrors {{ code field message }}
  }}
}}"""

REVERSE = f"""
mutation Reverse($input: ReverseTopUpInput!) {{
  reverseTopUp(input: $input) {{
    wallet {{ {WALLET} }}
    transaction {{ {ENTRY} reverses {{ id reversedAmount }} }}
    userErrors {{ code field message }}
  }}
}}"""

CREDITS = """
query Credits($c: String!, $status: CreditStatus, $first: Int, $after: String) {
  customerWallet(customerId: $c, currency: "usd") {
    balance paidBalance promotionalBalance
    credits(first: $first, after: $after, status: $status) {
      edges { cursor node {
        id category priority expiresAt amount remaining availableRemaining status
        source { id type amount }
      } }
      pageInfo { hasNextPage endCursor }
    }
    transactions(first: 50) { edges { node { id type amount balanceAfter
      allocations { amount credit { id } } } } }
  }
}"""


def codes(payload: dict[str, Any]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def write(api: Api, document: str, field: str, **fields: Any) -> dict[str, Any]:
    data = await api(document, {"input": fields})
    return data[field]  # type: ignore[no-any-return]


async def grant(api: Api, amount: int, key: str, customer: str = "cus_1", **extra: Any) -> Any:
    return await write(
        api, GRANT, "grantCredits", customerId=customer, currency="usd", amount=amount,
        idempotencyKey=key, **extra,
    )  # fmt: skip


async def top_up(api: Api, amount: int, key: str, customer: str = "cus_1", **extra: Any) -> Any:
    return await write(
        api, TOP_UP, "topUpWallet", customerId=customer, currency="usd", amount=amount,
        idempotencyKey=key, **extra,
    )  # fmt: skip


async def charge(api: Api, amount: int, key: str, customer: str = "cus_1", **extra: Any) -> Any:
    return await write(
        api, CHARGE, "chargeWallet", customerId=customer, currency="usd", amount=amount,
        idempotencyKey=key, **extra,
    )  # fmt: skip


async def refund(api: Api, transaction_id: str, key: str, **extra: Any) -> Any:
    return await write(
        api, REFUND, "refundCharge", transactionId=transaction_id, idempotencyKey=key, **extra
    )


async def reverse(api: Api, transaction_id: str, key: str, **extra: Any) -> Any:
    return await write(
        api, REVERSE, "reverseTopUp", transactionId=transaction_id, idempotencyKey=key, **extra
    )


async def wallet_view(api: Api, customer: str = "cus_1", **variables: Any) -> Any:
    return (await api(CREDITS, {"c": customer, "first": 100, **variables}))["customerWallet"]


def block_of(payload: dict[str, Any], view: dict[str, Any]) -> dict[str, Any]:
    """The credit block the payload's TOP_UP or GRANT created, from a wallet view."""
    (node,) = [
        e["node"]
        for e in view["credits"]["edges"]
        if e["node"]["source"]["id"] == payload["transaction"]["id"]
    ]
    return node  # type: ignore[no-any-return]


async def table_counts(env: Env) -> tuple[int, int, int]:
    async with env.database.read_transaction() as conn:
        return tuple(  # type: ignore[return-value]
            [
                (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                for t in (transactions, credit_blocks, credit_allocations)
            ]
        )


class TestBlocks:
    async def test_a_top_up_and_a_grant_each_create_a_block(self, env: Env) -> None:
        paid = await top_up(env.api, 500, "t1")
        free = await grant(env.api, 200, "g1", expiresAt=later(3600), priority=10)
        assert paid["userErrors"] == [] and free["userErrors"] == []
        assert free["transaction"]["type"] == "GRANT" and free["transaction"]["allocations"] == []
        assert free["wallet"] == {
            "id": paid["wallet"]["id"],
            "balance": 700,
            "paidBalance": 500,
            "promotionalBalance": 200,
        }
        view = await wallet_view(env.api)
        promotional, bought = block_of(free, view), block_of(paid, view)
        assert (promotional["category"], promotional["priority"], promotional["amount"]) == (
            "PROMOTIONAL",
            10,
            200,
        )
        assert promotional["remaining"] == promotional["availableRemaining"] == 200
        assert promotional["status"] == "ACTIVE" and promotional["expiresAt"] is not None
        assert (bought["category"], bought["priority"], bought["expiresAt"]) == ("PAID", 50, None)
        assert bought["source"] == {
            "id": paid["transaction"]["id"],
            "type": "TOP_UP",
            "amount": 500,
        }

    async def test_a_grant_creates_the_wallet(self, env: Env) -> None:
        payload = await grant(env.api, 300, "g1", customer="cus_new")
        assert payload["wallet"]["balance"] == payload["wallet"]["promotionalBalance"] == 300

    async def test_the_burn_down_order(self, env: Env) -> None:
        # Created in an order that is none of the burn-down order's keys.
        late = later(7200)
        paid_never = await top_up(env.api, 10, "a")
        promo_never = await grant(env.api, 10, "b")
        paid_late = await top_up(env.api, 10, "c", expiresAt=late)
        promo_late = await grant(env.api, 10, "d", expiresAt=late)
        promo_soon = await grant(env.api, 10, "e", expiresAt=later(3600))
        urgent = await top_up(env.api, 10, "f", priority=0)
        older_twin = await grant(env.api, 10, "g", priority=70)
        younger_twin = await grant(env.api, 10, "h", priority=70)
        expected = [
            urgent, promo_soon, promo_late, paid_late, promo_never, paid_never, older_twin,
            younger_twin,
        ]  # fmt: skip
        view = await wallet_view(env.api)
        listed = [e["node"]["source"]["id"] for e in view["credits"]["edges"]]
        assert listed == [p["transaction"]["id"] for p in expected]

        # One charge across all of them: one entry, one allocation per block, in that order.
        spent = await charge(env.api, 75, "spend")
        assert spent["userErrors"] == [] and spent["wallet"]["balance"] == 5
        allocations = spent["transaction"]["allocations"]
        view = await wallet_view(env.api)
        ids = [block_of(p, view)["id"] for p in expected]
        assert [a["credit"]["id"] for a in allocations] == ids
        assert [a["amount"] for a in allocations] == [-10] * 7 + [-5]
        assert sum(a["amount"] for a in allocations) == spent["transaction"]["amount"] == -75
        assert block_of(younger_twin, view)["remaining"] == 5
        assert block_of(older_twin, view)["status"] == "DEPLETED"

    async def test_credits_pages_and_status_filter(self, env: Env) -> None:
        for n in range(5):
            await top_up(env.api, 10, f"t{n}", priority=n)
        await charge(env.api, 20, "c")
        first = (await wallet_view(env.api, first=2))["credits"]
        assert len(first["edges"]) == 2 and first["pageInfo"]["hasNextPage"]
        rest = (await wallet_view(env.api, first=10, after=first["pageInfo"]["endCursor"]))[
            "credits"
        ]
        priorities = [e["node"]["priority"] for e in first["edges"] + rest["edges"]]
        assert priorities == [0, 1, 2, 3, 4] and not rest["pageInfo"]["hasNextPage"]
        depleted = (await wallet_view(env.api, status="DEPLETED"))["credits"]["edges"]
        active = (await wallet_view(env.api, status="ACTIVE"))["credits"]["edges"]
        assert [e["node"]["priority"] for e in depleted] == [0, 1]
        assert [e["node"]["priority"] for e in active] == [2, 3, 4]

    async def test_a_bad_credits_cursor_is_a_request_error(self, env: Env) -> None:
        await top_up(env.api, 10, "t")
        status, body = await env.api.answer(CREDITS, {"c": "cus_1", "after": "bm9wZQ=="})
        assert status == 200 and body["errors"][0]["message"].startswith("after is not a cursor")


class TestValidation:
    @pytest.mark.parametrize(
        "expires_at", ["2020-01-01T00:00:00+00:00", "tomorrow", "2030-01-01T00:00:00", 12]
    )
    async def test_a_past_or_malformed_expiry_is_invalid_and_writes_nothing(
        self, env: Env, expires_at: Any
    ) -> None:
        before = await table_counts(env)
        for document, field in ((GRANT, "grantCredits"), (TOP_UP, "topUpWallet")):
            payload = await write(
                env.api, document, field, customerId="cus_1", currency="usd", amount=5,
                idempotencyKey="k", expiresAt=expires_at,
            )  # fmt: skip
            assert codes(payload) == ["INVALID_EXPIRY"], payload
            assert payload["userErrors"][0]["field"] == ["input", "expiresAt"]
        assert await table_counts(env) == before

    @pytest.mark.parametrize("priority", [-1, 101, 2**31 - 1])
    async def test_a_priority_outside_0_to_100_is_invalid(self, env: Env, priority: int) -> None:
        payload = await grant(env.api, 5, "k", priority=priority)
        assert codes(payload) == ["INVALID_INPUT"]
        assert payload["userErrors"][0]["field"] == ["input", "priority"]
        assert await table_counts(env) == (0, 0, 0)

    @pytest.mark.parametrize("amount", [0, -5, MAX + 1])
    async def test_amounts_out_of_range(self, env: Env, amount: int) -> None:
        assert codes(await grant(env.api, amount, "g")) == ["INVALID_AMOUNT"]
        entry = (await top_up(env.api, 100, "t"))["transaction"]["id"]
        assert codes(await reverse(env.api, entry, "r", amount=amount)) == ["INVALID_AMOUNT"]
        assert codes(await refund(env.api, entry, "f", amount=amount)) == ["INVALID_AMOUNT"]

    async def test_reserved_idempotency_keys(self, env: Env) -> None:
        payload = await top_up(env.api, 5, "gql-wallet:expiration:mine")
        assert codes(payload) == ["INVALID_INPUT"]
        assert payload["userErrors"][0]["field"] == ["input", "idempotencyKey"]

    async def test_an_unknown_or_foreign_transaction_writes_nothing(self, env: Env) -> None:
        theirs = (await top_up(env.other, 100, "t"))["transaction"]["id"]
        before = await table_counts(env)
        for transaction_id in (theirs, "00000000-0000-0000-0000-000000000000", "not-an-id"):
            for undo in (refund, reverse):
                payload = await undo(env.api, transaction_id, "k")
                assert codes(payload) == ["TRANSACTION_NOT_FOUND"], payload
                assert payload["wallet"] is None
        assert await table_counts(env) == before
        # Nothing was claimed: the key is still free.
        assert (await top_up(env.api, 1, "k"))["userErrors"] == []


class TestExpiry:
    async def test_expired_credits_are_shown_and_spent_by_nothing(self, env: Env) -> None:
        await top_up(env.api, 100, "paid")
        promo = await grant(env.api, 50, "promo", expiresAt=later(1.0))
        assert promo["wallet"]["balance"] == 150
        await asyncio.sleep(1.3)
        # The first read after the expiry writes it first, exactly once.
        view = await wallet_view(env.api)
        assert (view["balance"], view["promotionalBalance"], view["paidBalance"]) == (100, 0, 100)
        expired = block_of(promo, view)
        assert (expired["status"], expired["remaining"], expired["amount"]) == ("EXPIRED", 0, 50)
        entries = [e["node"] for e in view["transactions"]["edges"]]
        assert entries[0]["type"] == "EXPIRATION" and entries[0]["amount"] == -50
        assert entries[0]["balanceAfter"] == 100
        assert entries[0]["allocations"] == [{"amount": -50, "credit": {"id": expired["id"]}}]
        again = await wallet_view(env.api)
        assert [e["node"]["type"] for e in again["transactions"]["edges"]].count("EXPIRATION") == 1
        # No write spends them either.
        assert codes(await charge(env.api, 101, "too-much")) == ["INSUFFICIENT_FUNDS"]
        assert (await charge(env.api, 100, "all"))["wallet"]["balance"] == 0

    async def test_a_write_writes_the_due_expiry_first(self, env: Env) -> None:
        await grant(env.api, 50, "promo", expiresAt=later(1.0))
        await top_up(env.api, 10, "paid")
        await asyncio.sleep(1.3)
        spent = await charge(env.api, 10, "c")  # the first thing to touch the wallet since
        assert spent["userErrors"] == [] and spent["wallet"]["balance"] == 0
        view = await wallet_view(env.api)
        types = [e["node"]["type"] for e in view["transactions"]["edges"]]
        assert types == ["CHARGE", "EXPIRATION", "TOP_UP", "GRANT"]
        refused = await charge(env.api, 1, "c2")
        assert codes(refused) == ["INSUFFICIENT_FUNDS"]

    async def test_the_sweeper_writes_expiries_nobody_reads(self, env: Env) -> None:
        await grant(env.api, 50, "promo", expiresAt=later(1.0))
        await grant(env.api, 70, "promo2", customer="cus_2", expiresAt=later(1.0))
        await asyncio.sleep(1.3)
        assert len(await ledger.sweep_expiries(env.database)) == 2
        assert await ledger.sweep_expiries(env.database) == []  # nothing twice
        async with env.database.read_transaction() as conn:
            rows = (
                await conn.execute(
                    select(transactions.c.amount).where(transactions.c.type == "EXPIRATION")
                )
            ).all()
        assert sorted(row.amount for row in rows) == [-70, -50]
        view = await wallet_view(env.api)
        assert view["balance"] == 0

    async def test_wallet_lists_and_pages_write_due_expiries_first(self, env: Env) -> None:
        await top_up(env.api, 5, "t")
        await grant(env.api, 50, "promo", expiresAt=later(1.0))
        await asyncio.sleep(1.3)
        data = await env.api(
            '{ customerWallets(customerId: "cus_1") { balance } '
            "wallets(first: 5) { edges { node { balance } } } }"
        )
        assert data["customerWallets"] == [{"balance": 5}]
        assert data["wallets"]["edges"] == [{"node": {"balance": 5}}]


class TestRefunds:
    async def test_a_refund_restores_the_blocks_the_charge_spent_last_first(self, env: Env) -> None:
        first = await top_up(env.api, 30, "a", priority=1)
        second = await top_up(env.api, 30, "b", priority=2)
        spent = await charge(env.api, 50, "c")
        charge_id = spent["transaction"]["id"]
        partial = await refund(env.api, charge_id, "r1", amount=15)
        assert partial["userErrors"] == [] and partial["wallet"]["balance"] == 25
        entry = partial["transaction"]
        assert (entry["type"], entry["amount"], entry["balanceAfter"]) == ("REFUND", 15, 25)
        assert entry["reverses"] == {"id": charge_id, "refundedAmount": 15}
        view = await wallet_view(env.api)
        second_block, first_block = block_of(second, view), block_of(first, view)
        # The charge took 30 from the first block, then 20 from the second: the second first.
        assert entry["allocations"] == [{"amount": 15, "credit": {"id": second_block["id"]}}]
        rest = await refund(env.api, charge_id, "r2")  # all that is left: 35
        assert rest["transaction"]["amount"] == 35 and rest["wallet"]["balance"] == 60
        assert rest["transaction"]["allocations"] == [
            {"amount": 5, "credit": {"id": second_block["id"]}},
            {"amount": 30, "credit": {"id": first_block["id"]}},
        ]
        assert rest["transaction"]["reverses"]["refundedAmount"] == 50
        assert codes(await refund(env.api, charge_id, "r3", amount=1)) == ["REFUND_EXCEEDS_CHARGE"]
        assert codes(await refund(env.api, charge_id, "r4")) == ["REFUND_EXCEEDS_CHARGE"]

    async def test_only_charges_are_refundable(self, env: Env) -> None:
        paid = await top_up(env.api, 30, "a")
        before = await table_counts(env)
        refused = await refund(env.api, paid["transaction"]["id"], "r")
        assert codes(refused) == ["TRANSACTION_NOT_REFUNDABLE"]
        assert await table_counts(env) == before

    async def test_a_refund_into_an_expired_block_expires_at_once(self, env: Env) -> None:
        promo = await grant(env.api, 50, "promo", expiresAt=later(1.0))
        spent = await charge(env.api, 20, "c")
        await asyncio.sleep(1.3)
        back = await refund(env.api, spent["transaction"]["id"], "r")
        assert back["userErrors"] == [] and back["wallet"]["balance"] == 0
        view = await wallet_view(env.api)
        entries = [e["node"] for e in view["transactions"]["edges"]]
        assert [(e["type"], e["amount"]) for e in entries] == [
            ("EXPIRATION", -20),
            ("REFUND", 20),
            ("EXPIRATION", -30),
            ("CHARGE", -20),
            ("GRANT", 50),
        ]
        assert block_of(promo, view)["status"] == "EXPIRED"

    async def test_refunds_replay_and_keys_are_shared_with_every_write(self, env: Env) -> None:
        await top_up(env.api, 30, "a")
        charge_id = (await charge(env.api, 10, "c"))["transaction"]["id"]
        first = await refund(env.api, charge_id, "r", amount=4)
        again = await refund(env.api, charge_id, "r", amount=4)
        assert again["transaction"]["id"] == first["transaction"]["id"]
        assert codes(await refund(env.api, charge_id, "r", amount=5)) == ["IDEMPOTENCY_KEY_REUSED"]
        assert codes(await top_up(env.api, 4, "r")) == ["IDEMPOTENCY_KEY_REUSED"]
        assert codes(await grant(env.api, 4, "a")) == ["IDEMPOTENCY_KEY_REUSED"]
        # A refused refund is final for its key.
        refused = await refund(env.api, charge_id, "big", amount=7)
        assert codes(refused) == ["REFUND_EXCEEDS_CHARGE"]
        assert codes(await refund(env.api, charge_id, "big", amount=7)) == ["REFUND_EXCEEDS_CHARGE"]


class TestReversals:
    async def test_a_reversal_takes_only_from_the_block_its_entry_created(self, env: Env) -> None:
        paid = await top_up(env.api, 100, "a", priority=1)
        promo = await grant(env.api, 40, "b")
        await charge(env.api, 70, "c")  # from the priority-1 block: 30 left of it
        paid_id = paid["transaction"]["id"]
        assert codes(await reverse(env.api, paid_id, "r1", amount=31)) == [
            "REVERSAL_EXCEEDS_REMAINING"
        ]
        done = await reverse(env.api, paid_id, "r2")  # all that is left of it
        entry = done["transaction"]
        assert (entry["type"], entry["amount"], done["wallet"]["balance"]) == ("REVERSAL", -30, 40)
        assert entry["reverses"] == {"id": paid_id, "reversedAmount": 30}
        view = await wallet_view(env.api)
        assert entry["allocations"] == [
            {"amount": -30, "credit": {"id": block_of(paid, view)["id"]}}
        ]
        assert block_of(promo, view)["remaining"] == 40
        assert codes(await reverse(env.api, paid_id, "r3")) == ["REVERSAL_EXCEEDS_REMAINING"]

    async def test_a_grant_can_be_withdrawn_and_a_charge_cannot_be_reversed(self, env: Env) -> None:
        promo = await grant(env.api, 40, "b")
        done = await reverse(env.api, promo["transaction"]["id"], "r", amount=15)
        assert done["wallet"] == {
            "id": promo["wallet"]["id"],
            "balance": 25,
            "paidBalance": 0,
            "promotionalBalance": 25,
        }
        spent = await charge(env.api, 5, "c")
        refused = await reverse(env.api, spent["transaction"]["id"], "r2")
        assert codes(refused) == ["TRANSACTION_NOT_REFUNDABLE"]
