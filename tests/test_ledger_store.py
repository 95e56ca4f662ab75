"""The ledger store, the same cases on both databases: it carries out what the service decided
(bounds, whether to create the wallet, which code a refusal records) and holds no rule itself."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import select

from gql_wallet import repository
from gql_wallet.ledger.credits import CreditCategory, burn_key
from gql_wallet.ledger.store import (
    BalanceChangeCall,
    Expiration,
    NewBlock,
    UndoCall,
    apply_balance_change,
    apply_undo,
    expire_wallets,
)
from tests.conftest import Env
from tests.test_subscriptions import organization_of


@pytest.fixture
async def call(env: Env) -> BalanceChangeCall:
    """A credit of 100 to cus_1's usd wallet that creates it; each test varies it."""
    return BalanceChangeCall(
        organization_id=await organization_of(env.database, env.api.key),
        idempotency_key="k-1",
        request='{"the":"request"}',
        customer_id="cus_1",
        currency="usd",
        type="TOP_UP",
        delta=100,
        floor=0,
        ceiling=1_000,
        description="d",
        reference=None,
        metadata='{"usage_record":"ur_1"}',
        create_missing=True,
        missing_code="CODE_FOR_MISSING",
        refused_code="CODE_FOR_OUT_OF_RANGE",
        block=BLOCK,
        expiration=EXPIRATION,
    )


# What the service decides for a top-up's block; a debit has none (it spends blocks).
BLOCK = NewBlock("PAID", 50, None, burn_key(50, None, CreditCategory.PAID))
EXPIRATION = Expiration("EXPIRATION", "gql-wallet:expiration:")


def varied(call: BalanceChangeCall, key: str, **changes: object) -> BalanceChangeCall:
    delta = changes.get("delta", call.delta)
    changes.setdefault("block", BLOCK if isinstance(delta, int) and delta > 0 else None)
    return dataclasses.replace(call, idempotency_key=key, **changes)  # type: ignore[arg-type]


async def recorded_code(env: Env, call: BalanceChangeCall) -> str | None:
    async with env.database.read_transaction() as conn:
        return (
            await conn.execute(
                select(repository.idempotency_keys.c.error_code).where(
                    repository.idempotency_keys.c.key == call.idempotency_key
                )
            )
        ).scalar_one()


async def test_applies_and_creates_the_wallet_when_told_to(
    env: Env, call: BalanceChangeCall
) -> None:
    done = await apply_balance_change(env.database, call)
    assert done.outcome == "applied" and done.refusal_code is None
    assert done.wallet is not None and done.wallet.balance == 100
    assert done.transaction is not None
    assert (done.transaction.amount, done.transaction.balance_after) == (100, 100)
    assert (done.transaction.type, done.transaction.description) == ("TOP_UP", "d")
    assert await env.counts() == (1, 1, 1)


async def test_a_missing_wallet_records_the_callers_code(env: Env, call: BalanceChangeCall) -> None:
    missing = varied(call, "k-2", create_missing=False, delta=-5)
    done = await apply_balance_change(env.database, missing)
    assert (done.outcome, done.refusal_code, done.wallet) == ("refused", "CODE_FOR_MISSING", None)
    assert await recorded_code(env, missing) == "CODE_FOR_MISSING"
    assert await env.counts() == (0, 0, 1)


@pytest.mark.parametrize(
    ("floor", "ceiling", "delta", "outcome", "balance"),
    [
        (0, 1_000, -100, "applied", 0),  # down to the floor
        (0, 1_000, -101, "refused", 100),
        (60, 1_000, -40, "applied", 60),  # a floor the caller chose
        (60, 1_000, -41, "refused", 100),
        (0, 150, 50, "applied", 150),  # a ceiling the caller chose
        (0, 150, 51, "refused", 100),
    ],
)
async def test_the_balance_stays_in_the_callers_bounds(
    env: Env,
    call: BalanceChangeCall,
    floor: int,
    ceiling: int,
    delta: int,
    outcome: str,
    balance: int,
) -> None:
    await apply_balance_change(env.database, call)
    change = varied(call, "k-2", floor=floor, ceiling=ceiling, delta=delta, create_missing=False)
    done = await apply_balance_change(env.database, change)
    assert done.outcome == outcome
    assert done.wallet is not None and done.wallet.balance == balance
    if outcome == "refused":
        assert done.refusal_code == "CODE_FOR_OUT_OF_RANGE" and done.transaction is None
        assert await recorded_code(env, change) == "CODE_FOR_OUT_OF_RANGE"
        assert await env.counts() == (1, 1, 2)
    else:
        assert done.transaction is not None and done.transaction.balance_after == balance
        assert await env.counts() == (1, 2, 2)


async def test_a_key_held_by_an_earlier_write_is_taken(env: Env, call: BalanceChangeCall) -> None:
    await apply_balance_change(env.database, call)
    again = await apply_balance_change(env.database, varied(call, call.idempotency_key, delta=7))
    assert (again.outcome, again.wallet, again.transaction) == ("taken", None, None)
    assert await env.counts() == (1, 1, 1)


async def test_keys_are_per_organization(env: Env, call: BalanceChangeCall) -> None:
    await apply_balance_change(env.database, call)
    other = await organization_of(env.database, env.other.key)
    done = await apply_balance_change(
        env.database, dataclasses.replace(call, organization_id=other)
    )
    assert done.outcome == "applied" and done.wallet is not None
    assert done.wallet.organization_id == other != call.organization_id
    assert isinstance(done.wallet.id, uuid.UUID)


async def test_a_credit_needs_a_block_and_a_debit_has_none(
    env: Env, call: BalanceChangeCall
) -> None:
    with pytest.raises(ValueError, match="block"):
        await apply_balance_change(env.database, dataclasses.replace(call, block=None))
    with pytest.raises(ValueError, match="block"):
        await apply_balance_change(env.database, varied(call, "k-2", delta=-1, block=BLOCK))
    assert await env.counts() == (0, 0, 0)


def undo(call: BalanceChangeCall, key: str, original: uuid.UUID, **changes: object) -> UndoCall:
    fields: dict[str, object] = {
        "organization_id": call.organization_id,
        "idempotency_key": key,
        "request": "{}",
        "type": "REFUND",
        "restore": True,
        "original_id": original,
        "amount": None,
        "undoable_types": ("CHARGE",),
        "ceiling": 1_000,
        "description": None,
        "metadata": "{}",
        "not_found_code": "NOT_FOUND",
        "wrong_type_code": "WRONG_TYPE",
        "exceeds_code": "EXCEEDS",
        "limit_code": "LIMIT",
        "expiration": EXPIRATION,
        **changes,
    }
    return UndoCall(**fields)  # type: ignore[arg-type]


async def test_an_undo_carries_out_the_callers_caps_and_codes(
    env: Env, call: BalanceChangeCall
) -> None:
    await apply_balance_change(env.database, call)
    spent = await apply_balance_change(env.database, varied(call, "k-2", delta=-60, type="CHARGE"))
    assert spent.transaction is not None
    charge_id = spent.transaction.id
    unknown = await apply_undo(env.database, undo(call, "u-0", uuid.uuid4()))
    assert (unknown.outcome, unknown.refusal_code) == ("refused", "NOT_FOUND")
    wrong = await apply_undo(env.database, undo(call, "u-0", charge_id, undoable_types=("X",)))
    assert (wrong.outcome, wrong.refusal_code) == ("refused", "WRONG_TYPE")
    assert await env.counts() == (1, 2, 2)  # neither claimed its key
    partial = await apply_undo(env.database, undo(call, "u-1", charge_id, amount=25))
    assert partial.outcome == "applied" and partial.transaction is not None
    assert (partial.transaction.type, partial.transaction.amount) == ("REFUND", 25)
    assert partial.wallet is not None and partial.wallet.balance == 65
    over = await apply_undo(env.database, undo(call, "u-2", charge_id, amount=36))
    assert (over.outcome, over.refusal_code) == ("refused", "EXCEEDS")
    rest = await apply_undo(env.database, undo(call, "u-3", charge_id))
    assert rest.transaction is not None and rest.transaction.amount == 35
    taken = await apply_undo(env.database, undo(call, "u-3", charge_id))
    assert taken.outcome == "taken"


async def test_expire_wallets_writes_nothing_when_nothing_is_due(
    env: Env, call: BalanceChangeCall
) -> None:
    done = await apply_balance_change(env.database, call)
    assert done.wallet is not None
    (after,) = await expire_wallets(env.database, [done.wallet.seq], EXPIRATION)
    assert after.balance == 100 and not after.expiry_due
    assert await env.counts() == (1, 1, 1)
