"""The ledger store: one interface, one implementation per database, for "claim the key,
apply, record" as one atomic step.

The service (ledger/service.py) decides everything a write means: the delta, the range the
balance (and the available balance, what holds do not reserve) must stay in, whether a missing wallet is created, the block a credit creates, what an
undo may undo, the entry types, and which code each refusal records. A store carries that out
in one transaction, under the wallet's lock, and answers with what happened
(`BalanceChangeOutcome`: applied, refused with the code it recorded, or taken when an earlier
write holds the key). It holds no rule and no message of its own.

Every write first writes the wallet's due expiries (by the database's clock): open holds past
their expiry are released, then blocks past theirs expire, so nothing spends or shows credits or
reservations past their expiry. The burn-down order is the blocks' `burn_key`, then age.

- PostgreSQL: one call of a function of migrations/sql/ (its newest version), sent in a group
  commit with the other writes waiting in the process (repository/balance_change.py).
- SQLite: the same steps in the same order, in the process's writer thread, inside one
  BEGIN IMMEDIATE transaction (its group commit). The clock is the machine's, which is the
  embedded database's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.money import NO_METADATA
from gql_wallet.repository import BalanceChangeOutcome, WalletRecord, holds
from gql_wallet.repository import credits as blocks

__all__ = [
    "BalanceChangeCall",
    "BalanceChangeOutcome",
    "CreateHoldCall",
    "Expiration",
    "NewBlock",
    "ResolveHoldCall",
    "UndoCall",
    "apply_balance_change",
    "apply_create_hold",
    "apply_resolve_hold",
    "apply_undo",
    "expire_wallets",
]


@dataclass(frozen=True)
class Expiration:
    """The entries a store writes on its own when credits expire: their type, and the prefix
    of their idempotency keys (then the entry's ID)."""

    type: str
    key_prefix: str


@dataclass(frozen=True)
class NewBlock:
    """The credit block a credit creates, of its whole amount."""

    category: str
    priority: int
    expires_at: datetime | None
    burn_key: str


@dataclass(frozen=True)
class BalanceChangeCall:
    """A top-up, grant or charge as the service decided it. A credit creates `block`; a debit
    (no block) spends the wallet's blocks in burn-down order."""

    organization_id: uuid.UUID
    idempotency_key: str
    request: str  # the canonical input, compared on a replay
    customer_id: str
    currency: str
    type: str
    delta: int
    floor: int  # the balance after the change must be within floor..ceiling
    ceiling: int
    description: str | None
    reference: str | None
    metadata: str  # canonical JSON (money.canonical_metadata)
    create_missing: bool  # create the wallet if there is none (then apply)
    missing_code: str  # recorded when there is no wallet (and none is created)
    refused_code: str  # recorded when the change would leave floor..ceiling
    block: NewBlock | None
    expiration: Expiration


@dataclass(frozen=True)
class UndoCall:
    """A refund or reversal of the entry `original_id`, as the service decided it.

    `restore`: give credits back to the blocks the original spent, the last it spent from first
    (a refund: a positive entry); else take them from the block the original created (a
    reversal: a negative entry). The undone total of an original never passes its amount, nor a
    reversal the block's remainder (`exceeds_code`); `amount` None means all that is left."""

    organization_id: uuid.UUID
    idempotency_key: str
    request: str
    type: str
    restore: bool
    original_id: uuid.UUID
    amount: int | None
    undoable_types: tuple[str, ...]
    ceiling: int
    description: str | None
    metadata: str
    not_found_code: str
    wrong_type_code: str
    exceeds_code: str
    limit_code: str  # a refund that would take the balance past `ceiling`
    expiration: Expiration


@dataclass(frozen=True)
class CreateHoldCall:
    """A new hold as the service decided it: reserve `amount` of the wallet's available
    credits in burn-down order, for `seconds` by the database's clock."""

    organization_id: uuid.UUID
    idempotency_key: str
    request: str
    customer_id: str
    currency: str
    amount: int
    seconds: int
    description: str | None
    reference: str | None
    metadata: str
    missing_code: str  # no wallet
    refused_code: str  # the available balance does not cover it
    expiration: Expiration


@dataclass(frozen=True)
class ResolveHoldCall:
    """A capture (`capture`: an entry of `capture_type` of `amount`, None: the whole hold, from
    the blocks it reserved) or a void of the hold `hold_id`, as the service decided it. A hold
    already resolved, or past its expiry, is refused with the code of its state."""

    organization_id: uuid.UUID
    idempotency_key: str
    request: str
    hold_id: uuid.UUID
    capture: bool
    amount: int | None
    description: str | None
    metadata: str | None  # a capture's; None: the hold's
    capture_type: str
    not_found_code: str
    captured_code: str
    voided_code: str
    expired_code: str
    exceeds_code: str
    expiration: Expiration


async def apply_balance_change(database: Database, call: BalanceChangeCall) -> BalanceChangeOutcome:
    if (call.delta > 0) != (call.block is not None):
        raise ValueError("a credit creates a block, and a debit has none: it spends blocks")
    if database.dialect.name == "postgresql":
        return await repo.apply_balance_change(database, _function_parameters(call))
    return await database.run_write(_sqlite_balance_change, call)


async def apply_undo(database: Database, call: UndoCall) -> BalanceChangeOutcome:
    if database.dialect.name == "postgresql":
        parameters = _function_parameters(call)
        parameters["undoable_types"] = list(call.undoable_types)
        return await repo.apply_undo(database, parameters)
    return await database.run_write(_sqlite_undo, call)


async def apply_create_hold(database: Database, call: CreateHoldCall) -> BalanceChangeOutcome:
    if database.dialect.name == "postgresql":
        return await repo.apply_create_hold(database, _function_parameters(call))
    return await database.run_write(_sqlite_create_hold, call)


async def apply_resolve_hold(database: Database, call: ResolveHoldCall) -> BalanceChangeOutcome:
    if database.dialect.name == "postgresql":
        return await repo.apply_resolve_hold(database, _function_parameters(call))
    return await database.run_write(_sqlite_resolve_hold, call)


async def expire_wallets(
    database: Database, seqs: list[int], expiration: Expiration, *, skip_locked: bool = False
) -> list[WalletRecord]:
    """Write the due expiries of these wallets; the wallets as they are after. `skip_locked`
    (PostgreSQL): leave out a wallet another transaction holds (a sweeper: it is being written)."""
    if database.dialect.name == "postgresql":
        return await repo.expire_wallets(
            database, seqs, _expiration_parameters(expiration), skip_locked=skip_locked
        )
    return await database.run_write(_sqlite_expire_wallets, seqs, expiration)


def _expiration_parameters(expiration: Expiration) -> dict[str, Any]:
    return {"expiration_type": expiration.type, "expiration_key_prefix": expiration.key_prefix}


def _function_parameters(
    call: BalanceChangeCall | UndoCall | CreateHoldCall | ResolveHoldCall,
) -> dict[str, Any]:
    parameters = {k: v for k, v in vars(call).items() if k not in ("block", "expiration")}
    if isinstance(call, BalanceChangeCall):
        block = call.block
        parameters.update(
            category=block and block.category,
            priority=block and block.priority,
            expires_at=block and block.expires_at,
            burn_key=block and block.burn_key,
        )
    parameters.update(_expiration_parameters(call.expiration))
    return parameters


# ---- SQLite: the functions' steps, in the writer thread's transaction ----


def _sqlite_balance_change(conn: Connection, call: BalanceChangeCall) -> BalanceChangeOutcome:
    now = repo.now_utc()
    if not repo.claim_idempotency_key(
        conn, call.organization_id, call.idempotency_key, call.request, now
    ):
        return BalanceChangeOutcome("taken", None, None, None)
    owner = (call.organization_id, call.customer_id, call.currency)
    expires_at = None if call.block is None else call.block.expires_at
    change = (call.delta, call.floor, call.ceiling, expires_at, now)
    # The common case in one statement: the wallet exists, nothing is due, the range holds.
    wallet = blocks.apply_delta(conn, owner, *change)
    if wallet is None:
        found = repo.get_wallet_by_owner(conn, *owner)
        if found is None and call.create_missing:
            repo.insert_wallet_if_missing(conn, *owner, now)
            found = repo.get_wallet_by_owner(conn, *owner)
        if found is None:
            return _refused(
                conn, call.organization_id, call.idempotency_key, call.missing_code, None
            )
        found = _expire_due(conn, found, now, call.expiration)
        wallet = blocks.apply_delta(conn, owner, *change)
        if wallet is None:
            return _refused(
                conn, call.organization_id, call.idempotency_key, call.refused_code, found
            )
    entry = repo.insert_transaction(
        conn,
        organization_id=call.organization_id,
        wallet_seq=wallet.seq,
        type_=call.type,
        amount=call.delta,
        balance_after=wallet.balance,
        held_after=wallet.held_balance,
        description=call.description,
        reference=call.reference,
        idempotency_key=call.idempotency_key,
        now=now,
        metadata=call.metadata,
    )
    if call.block is not None:
        blocks.insert_block(
            conn,
            organization_id=call.organization_id,
            wallet_seq=wallet.seq,
            source_seq=entry.seq,
            category=call.block.category,
            priority=call.block.priority,
            expires_at=call.block.expires_at,
            burn_key=call.block.burn_key,
            amount=call.delta,
            now=now,
        )
    else:
        _draw(conn, wallet.seq, -call.delta, entry_seq=entry.seq)
        blocks.refresh_next_expiry(conn, wallet.seq)
    repo.record_outcome(conn, call.organization_id, call.idempotency_key, transaction_seq=entry.seq)
    return BalanceChangeOutcome("applied", None, wallet, entry)


def _refused(
    conn: Connection,
    organization_id: uuid.UUID,
    key: str,
    code: str,
    wallet: WalletRecord | None,
) -> BalanceChangeOutcome:
    repo.record_outcome(conn, organization_id, key, error_code=code)
    return BalanceChangeOutcome("refused", code, wallet, None)


def _draw(
    conn: Connection,
    wallet_seq: int,
    amount: int,
    *,
    entry_seq: int | None = None,
    hold_seq: int | None = None,
) -> None:
    """Take `amount` of the wallet's unreserved credits in burn-down order: spent by the entry
    `entry_seq`, or reserved for the hold `hold_seq`. The caller has checked that the available
    balance covers it."""
    left = amount
    for ordinal, (block_seq, free) in enumerate(blocks.spendable_blocks(conn, wallet_seq)):
        taken = min(free, left)
        if hold_seq is not None:
            holds.reserve(conn, hold_seq, ordinal, block_seq, taken)
        else:
            assert entry_seq is not None
            blocks.add_to_block(conn, block_seq, -taken)
            blocks.insert_allocation(conn, entry_seq, ordinal, block_seq, -taken)
        left -= taken
        if left == 0:
            return
    raise RuntimeError(
        f"wallet {wallet_seq} has less in its credit blocks than its available balance"
    )


def _claimed_wallet(
    conn: Connection, call: UndoCall | ResolveHoldCall, wallet_seq: int
) -> tuple[datetime, WalletRecord] | None:
    """Claim the call's key, then lock the wallet and write its due expiries: the time and the
    wallet as it is after them. None: an earlier write holds the key."""
    now = repo.now_utc()
    if not repo.claim_idempotency_key(
        conn, call.organization_id, call.idempotency_key, call.request, now
    ):
        return None
    wallet = blocks.wallet_by_seq(conn, wallet_seq)
    assert wallet is not None  # an entry's or a hold's wallet always exists
    return now, _expire_due(conn, wallet, now, call.expiration)


def _expire_due(
    conn: Connection, wallet: WalletRecord, now: datetime, expiration: Expiration
) -> WalletRecord:
    held = wallet.held_balance
    for hold_seq, amount, expires_at in holds.due_holds(conn, wallet.seq, now):
        holds.release(conn, hold_seq)
        holds.resolve(conn, hold_seq, status=holds.EXPIRED, resolved_at=expires_at)
        held -= amount
    due = blocks.due_blocks(conn, wallet.seq, now)
    if not due and held == wallet.held_balance:
        return wallet
    balance = wallet.balance
    for block_seq, remaining in due:
        balance -= remaining
        entry_id = uuid.uuid4()
        entry = repo.insert_transaction(
            conn,
            organization_id=wallet.organization_id,
            wallet_seq=wallet.seq,
            type_=expiration.type,
            amount=-remaining,
            balance_after=balance,
            held_after=held,
            description=None,
            reference=None,
            idempotency_key=f"{expiration.key_prefix}{entry_id}",
            now=now,
            metadata=NO_METADATA,
            entry_id=entry_id,
        )
        blocks.insert_allocation(conn, entry.seq, 0, block_seq, -remaining)
        blocks.add_to_block(conn, block_seq, -remaining)
    return blocks.set_balance(conn, wallet.seq, balance, held, now)


def _sqlite_undo(conn: Connection, call: UndoCall) -> BalanceChangeOutcome:
    # An unknown entry, or one of a type this cannot undo, stays so: refused before the key is
    # claimed, writing nothing.
    original = blocks.transaction_by_id(conn, call.organization_id, call.original_id)
    if original is None:
        return BalanceChangeOutcome("refused", call.not_found_code, None, None)
    if original.type not in call.undoable_types:
        return BalanceChangeOutcome("refused", call.wrong_type_code, None, None)
    claimed = _claimed_wallet(conn, call, original.wallet_seq)
    if claimed is None:
        return BalanceChangeOutcome("taken", None, None, None)
    now, wallet = claimed
    undone = blocks.undone_amount(conn, original.seq)
    source = None
    if call.restore:
        cap = -original.amount - undone
    else:
        source = blocks.source_block(conn, original.seq, wallet.seq)
        cap = min(original.amount + undone, 0 if source is None else source.remaining)
    amount = cap if call.amount is None else call.amount
    code = None
    if not 1 <= amount <= cap:
        code = call.exceeds_code
    elif call.restore and wallet.balance + amount > call.ceiling:
        code = call.limit_code
    if code is not None:
        return _refused(conn, call.organization_id, call.idempotency_key, code, wallet)
    signed = amount if call.restore else -amount
    entry = repo.insert_transaction(
        conn,
        organization_id=call.organization_id,
        wallet_seq=wallet.seq,
        type_=call.type,
        amount=signed,
        balance_after=wallet.balance + signed,
        held_after=wallet.held_balance,
        description=call.description,
        reference=None,
        idempotency_key=call.idempotency_key,
        now=now,
        metadata=call.metadata,
        reverses_seq=original.seq,
    )
    if call.restore:
        _restore(conn, wallet.seq, original.seq, entry.seq, amount)
    else:
        assert source is not None  # cap > 0 needs a block
        blocks.add_to_block(conn, source.seq, -amount)
        blocks.insert_allocation(conn, entry.seq, 0, source.seq, -amount)
    wallet = blocks.set_balance(conn, wallet.seq, wallet.balance + signed, wallet.held_balance, now)
    # Credits given back to a block that has expired since expire at once.
    wallet = _expire_due(conn, wallet, now, call.expiration)
    repo.record_outcome(conn, call.organization_id, call.idempotency_key, transaction_seq=entry.seq)
    return BalanceChangeOutcome("applied", None, wallet, entry)


def _restore(
    conn: Connection, wallet_seq: int, original_seq: int, entry_seq: int, amount: int
) -> None:
    left, ordinal = amount, 0
    for block_seq, room in blocks.refund_rooms(conn, original_seq):
        taken = min(room, left)
        if taken <= 0:
            continue
        blocks.add_to_block(conn, block_seq, taken)
        blocks.insert_allocation(conn, entry_seq, ordinal, block_seq, taken)
        ordinal += 1
        left -= taken
        if left == 0:
            return
    # A charge older than the blocks: its credits go back to the wallet's oldest block.
    oldest = blocks.oldest_block(conn, wallet_seq)
    blocks.add_to_block(conn, oldest.seq, left)
    blocks.insert_allocation(conn, entry_seq, ordinal, oldest.seq, left)


def _sqlite_expire_wallets(
    conn: Connection, seqs: list[int], expiration: Expiration
) -> list[WalletRecord]:
    now = repo.now_utc()
    found = []
    for seq in sorted(set(seqs)):
        wallet = blocks.wallet_by_seq(conn, seq)
        if wallet is not None:
            found.append(_expire_due(conn, wallet, now, expiration)._replace(expiry_due=False))
    return found


def _sqlite_create_hold(conn: Connection, call: CreateHoldCall) -> BalanceChangeOutcome:
    now = repo.now_utc()
    if not repo.claim_idempotency_key(
        conn, call.organization_id, call.idempotency_key, call.request, now
    ):
        return BalanceChangeOutcome("taken", None, None, None)
    wallet = repo.get_wallet_by_owner(conn, call.organization_id, call.customer_id, call.currency)
    if wallet is None:
        return _refused(conn, call.organization_id, call.idempotency_key, call.missing_code, None)
    wallet = _expire_due(conn, wallet, now, call.expiration)
    if wallet.balance - wallet.held_balance < call.amount:
        return _refused(conn, call.organization_id, call.idempotency_key, call.refused_code, wallet)
    hold = holds.insert_hold(
        conn,
        organization_id=call.organization_id,
        wallet_seq=wallet.seq,
        amount=call.amount,
        expires_at=now + timedelta(seconds=call.seconds),
        description=call.description,
        reference=call.reference,
        idempotency_key=call.idempotency_key,
        now=now,
        metadata=call.metadata,
    )
    _draw(conn, wallet.seq, call.amount, hold_seq=hold.seq)
    wallet = blocks.set_balance(
        conn, wallet.seq, wallet.balance, wallet.held_balance + call.amount, now
    )
    repo.record_outcome(conn, call.organization_id, call.idempotency_key, hold_seq=hold.seq)
    return BalanceChangeOutcome("applied", None, wallet, None, hold)


def _sqlite_resolve_hold(conn: Connection, call: ResolveHoldCall) -> BalanceChangeOutcome:
    # An unknown hold stays so: refused before the key is claimed, writing nothing.
    hold = holds.hold_by_id(conn, call.organization_id, call.hold_id)
    if hold is None:
        return BalanceChangeOutcome("refused", call.not_found_code, None, None)
    claimed = _claimed_wallet(conn, call, hold.wallet_seq)
    if claimed is None:
        return BalanceChangeOutcome("taken", None, None, None)
    now, wallet = claimed
    hold = holds.hold_by_seq(conn, hold.seq)  # as it is after the wallet's due expiries
    amount = 0
    code = {
        holds.CAPTURED: call.captured_code,
        holds.VOIDED: call.voided_code,
        holds.EXPIRED: call.expired_code,
    }.get(hold.status)
    if code is None and call.capture:
        amount = hold.amount if call.amount is None else call.amount
        if amount > hold.amount:
            code = call.exceeds_code
    if code is not None:
        repo.record_outcome(
            conn, call.organization_id, call.idempotency_key, error_code=code, hold_seq=hold.seq
        )
        return BalanceChangeOutcome("refused", code, wallet, None, hold)
    entry = None
    if call.capture:
        entry = repo.insert_transaction(
            conn,
            organization_id=call.organization_id,
            wallet_seq=wallet.seq,
            type_=call.capture_type,
            amount=-amount,
            balance_after=wallet.balance - amount,
            held_after=wallet.held_balance - hold.amount,
            description=call.description,
            reference=hold.reference,
            idempotency_key=call.idempotency_key,
            now=now,
            metadata=hold.metadata if call.metadata is None else call.metadata,
        )
        left, ordinal = amount, 0
        for block_seq, reserved in holds.reservations(conn, hold.seq):
            taken = min(reserved, left)
            holds.spend_reserved(conn, block_seq, reserved, taken)
            if taken > 0:
                blocks.insert_allocation(conn, entry.seq, ordinal, block_seq, -taken)
                ordinal += 1
                left -= taken
    else:
        holds.release(conn, hold.seq)
    holds.resolve(
        conn,
        hold.seq,
        status=holds.CAPTURED if call.capture else holds.VOIDED,
        resolved_at=now,
        captured_amount=amount,
        capture_seq=None if entry is None else entry.seq,
    )
    wallet = blocks.set_balance(
        conn, wallet.seq, wallet.balance - amount, wallet.held_balance - hold.amount, now
    )
    # Credits released from a block that has expired since expire at once.
    wallet = _expire_due(conn, wallet, now, call.expiration)
    repo.record_outcome(
        conn,
        call.organization_id,
        call.idempotency_key,
        transaction_seq=None if entry is None else entry.seq,
        hold_seq=hold.seq,
    )
    return BalanceChangeOutcome("applied", None, wallet, entry, holds.hold_by_seq(conn, hold.seq))
