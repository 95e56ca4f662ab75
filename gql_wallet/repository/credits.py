"""Credit blocks and allocations: the statements of the SQLite store's steps, and the reads.

The steps run in the SQLite writer thread, inside the write's transaction (ledger/store.py); on
PostgreSQL the same steps are the ledger functions of migrations/sql/.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.driver import DriverWrite
from gql_wallet.repository.holds import OPEN
from gql_wallet.repository.records import (
    _WALLET_COLUMNS,
    AllocationRecord,
    CreditBlockRecord,
    TransactionRecord,
    WalletRecord,
    among,
    credit_allocations,
    credit_blocks,
    db_now,
    transactions,
    wallet_holds,
    wallets,
)

# ---- the SQLite store's steps (synchronous, in the write's transaction) ----


def due_blocks(conn: Connection, wallet_seq: int, now: datetime) -> list[Any]:
    """(seq, unreserved remainder) of the wallet's blocks with unreserved credits left whose
    expiry has come."""
    return _DUE_BLOCKS.execute(conn, {"p_wallet_seq": wallet_seq, "p_now": now})


_FREE = credit_blocks.c.remaining - credit_blocks.c.held
# Blocks with credits that no open hold reserves (remaining > 0 first: the burn-down index's).
_HAS_FREE = and_(credit_blocks.c.remaining > 0, credit_blocks.c.remaining > credit_blocks.c.held)


_DUE_BLOCKS = DriverWrite(
    select(credit_blocks.c.seq, _FREE.label("free"))
    .where(
        credit_blocks.c.wallet_seq == bindparam("p_wallet_seq"),
        _HAS_FREE,
        credit_blocks.c.expires_at <= bindparam("p_now"),
    )
    .order_by(credit_blocks.c.expires_at, credit_blocks.c.seq)
)


def spendable_blocks(conn: Connection, wallet_seq: int) -> list[Any]:
    """(seq, unreserved remainder) of the wallet's blocks with unreserved credits left, in
    burn-down order."""
    return _SPENDABLE_BLOCKS.execute(conn, {"p_wallet_seq": wallet_seq})


_SPENDABLE_BLOCKS = DriverWrite(
    select(credit_blocks.c.seq, _FREE.label("free"))
    .where(credit_blocks.c.wallet_seq == bindparam("p_wallet_seq"), _HAS_FREE)
    .order_by(credit_blocks.c.burn_key, credit_blocks.c.seq)
)


def add_to_block(conn: Connection, block_seq: int, amount: int) -> None:
    _ADD_TO_BLOCK.execute(conn, {"p_block_seq": block_seq, "p_amount": amount})


_ADD_TO_BLOCK = DriverWrite(
    update(credit_blocks)
    .where(credit_blocks.c.seq == bindparam("p_block_seq"))
    .values(remaining=credit_blocks.c.remaining + bindparam("p_amount"))
)


def insert_allocation(
    conn: Connection, entry_seq: int, ordinal: int, block_seq: int, amount: int
) -> None:
    _INSERT_ALLOCATION.execute(
        conn,
        {"p_entry": entry_seq, "p_ordinal": ordinal, "p_block": block_seq, "p_amount": amount},
    )


_INSERT_ALLOCATION = DriverWrite(
    credit_allocations.insert().values(
        entry_seq=bindparam("p_entry"),
        ordinal=bindparam("p_ordinal"),
        block_seq=bindparam("p_block"),
        amount=bindparam("p_amount"),
    )
)


def insert_block(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    wallet_seq: int,
    source_seq: int,
    category: str,
    priority: int,
    expires_at: datetime | None,
    burn_key: str,
    amount: int,
    now: datetime,
) -> None:
    _INSERT_BLOCK.execute(
        conn,
        {
            "p_id": uuid.uuid4(),
            "p_organization_id": organization_id,
            "p_wallet_seq": wallet_seq,
            "p_source_seq": source_seq,
            "p_category": category,
            "p_priority": priority,
            "p_expires_at": expires_at,
            "p_burn_key": burn_key,
            "p_amount": amount,
            "p_now": now,
        },
    )


_INSERT_BLOCK = DriverWrite(
    credit_blocks.insert().values(
        id=bindparam("p_id"),
        organization_id=bindparam("p_organization_id"),
        wallet_seq=bindparam("p_wallet_seq"),
        source_seq=bindparam("p_source_seq"),
        category=bindparam("p_category"),
        priority=bindparam("p_priority"),
        expires_at=bindparam("p_expires_at"),
        burn_key=bindparam("p_burn_key"),
        amount=bindparam("p_amount"),
        remaining=bindparam("p_amount"),
        created_at=bindparam("p_now"),
    )
)


def set_balance(
    conn: Connection, wallet_seq: int, balance: int, held_balance: int, now: datetime
) -> WalletRecord:
    """Write the wallet's new balance and held balance, and its soonest expiry (from its blocks
    and holds as they are now)."""
    (row,) = _SET_BALANCE.execute(
        conn,
        {"p_wallet_seq": wallet_seq, "p_balance": balance, "p_held": held_balance, "p_now": now},
    )
    return WalletRecord.from_row(row)


_BLOCKS_NEXT = (
    select(func.min(credit_blocks.c.expires_at))
    .where(
        credit_blocks.c.wallet_seq == wallets.c.seq,
        _HAS_FREE,
        credit_blocks.c.expires_at.is_not(None),
    )
    .scalar_subquery()
)
_HOLDS_NEXT = (
    select(func.min(wallet_holds.c.expires_at))
    .where(wallet_holds.c.wallet_seq == wallets.c.seq, wallet_holds.c.status == OPEN)
    .scalar_subquery()
)
# The sooner of the two; SQLite's two-argument min() is null when either is.
_NEXT_EXPIRY = case(
    (_BLOCKS_NEXT.is_(None), _HOLDS_NEXT),
    (_HOLDS_NEXT.is_(None), _BLOCKS_NEXT),
    (_BLOCKS_NEXT <= _HOLDS_NEXT, _BLOCKS_NEXT),
    else_=_HOLDS_NEXT,
)


_SET_BALANCE = DriverWrite(
    update(wallets)
    .where(wallets.c.seq == bindparam("p_wallet_seq"))
    .values(
        balance=bindparam("p_balance"),
        held_balance=bindparam("p_held"),
        modified_at=bindparam("p_now"),
        next_expiry_at=_NEXT_EXPIRY,
    )
    .returning(*_WALLET_COLUMNS)
)


def apply_delta(
    conn: Connection,
    owner: tuple[uuid.UUID, str, str],
    delta: int,
    floor: int,
    ceiling: int,
    expires_at: datetime | None,
    now: datetime,
) -> WalletRecord | None:
    """Add `delta` to the wallet's balance if the available balance after it (balance minus
    what holds reserve) is at least `floor`, the balance at most `ceiling`, and no expiry is due
    at `now`, keeping its soonest expiry (`expires_at`: a new block's).
    None when there is no such wallet or a condition failed (the caller looks at which)."""
    organization_id, customer_id, currency = owner
    rows = _APPLY_DELTA.execute(
        conn,
        {
            "p_organization_id": organization_id,
            "p_customer_id": customer_id,
            "p_currency": currency,
            "p_delta": delta,
            "p_floor": floor,
            "p_ceiling": ceiling,
            "p_expires_at": expires_at,
            "p_now": now,
        },
    )
    return WalletRecord.from_row(rows[0]) if rows else None


_NEW_EXPIRY = bindparam("p_expires_at", type_=DateTime(timezone=True))
_APPLY_DELTA = DriverWrite(
    update(wallets)
    .where(
        wallets.c.organization_id == bindparam("p_organization_id"),
        wallets.c.customer_id == bindparam("p_customer_id"),
        wallets.c.currency == bindparam("p_currency"),
        wallets.c.balance - wallets.c.held_balance + bindparam("p_delta") >= bindparam("p_floor"),
        wallets.c.balance + bindparam("p_delta") <= bindparam("p_ceiling"),
        or_(wallets.c.next_expiry_at.is_(None), wallets.c.next_expiry_at > bindparam("p_now")),
    )
    .values(
        balance=wallets.c.balance + bindparam("p_delta"),
        modified_at=bindparam("p_now"),
        next_expiry_at=case(
            (
                and_(
                    _NEW_EXPIRY.is_not(None),
                    or_(wallets.c.next_expiry_at.is_(None), wallets.c.next_expiry_at > _NEW_EXPIRY),
                ),
                _NEW_EXPIRY,
            ),
            else_=wallets.c.next_expiry_at,
        ),
    )
    .returning(*_WALLET_COLUMNS)
)


def refresh_next_expiry(conn: Connection, wallet_seq: int) -> None:
    """Recompute the wallet's soonest expiry after blocks were spent (if it has one at all)."""
    _REFRESH_NEXT_EXPIRY.execute(conn, {"p_wallet_seq": wallet_seq})


_REFRESH_NEXT_EXPIRY = DriverWrite(
    update(wallets)
    .where(wallets.c.seq == bindparam("p_wallet_seq"), wallets.c.next_expiry_at.is_not(None))
    .values(next_expiry_at=_NEXT_EXPIRY)
)


def wallet_by_seq(conn: Connection, wallet_seq: int) -> WalletRecord | None:
    rows = _WALLET_BY_SEQ.execute(conn, {"p_wallet_seq": wallet_seq})
    return WalletRecord.from_row(rows[0]) if rows else None


_WALLET_BY_SEQ = DriverWrite(
    select(*_WALLET_COLUMNS).where(wallets.c.seq == bindparam("p_wallet_seq"))
)


def transaction_by_id(
    conn: Connection, organization_id: uuid.UUID, entry_id: uuid.UUID
) -> TransactionRecord | None:
    rows = _TRANSACTION_BY_ID.execute(conn, {"p_org": organization_id, "p_id": entry_id})
    return TransactionRecord.from_row(rows[0]) if rows else None


_TRANSACTION_BY_ID = DriverWrite(
    select(*transactions.c).where(
        transactions.c.id == bindparam("p_id"),
        transactions.c.organization_id == bindparam("p_org"),
    )
)


def undone_amount(conn: Connection, original_seq: int) -> int:
    """The signed sum of the entries that undo `original_seq` (its refunds or reversals)."""
    (row,) = _UNDONE.execute(conn, {"p_seq": original_seq})
    return int(row[0])


_UNDONE = DriverWrite(
    select(func.coalesce(func.sum(transactions.c.amount), 0)).where(
        transactions.c.reverses_seq == bindparam("p_seq")
    )
)


def source_block(conn: Connection, source_seq: int, wallet_seq: int) -> Any:
    """(seq, unreserved remainder) of the block the entry created; for an entry older than the blocks, the
    wallet's oldest block (revision 0007 made it from the balance of that time)."""
    rows = _BLOCK_OF_SOURCE.execute(conn, {"p_source": source_seq})
    return rows[0] if rows else oldest_block(conn, wallet_seq)


_BLOCK_OF_SOURCE = DriverWrite(
    select(credit_blocks.c.seq, _FREE.label("remaining")).where(
        credit_blocks.c.source_seq == bindparam("p_source")
    )
)


def oldest_block(conn: Connection, wallet_seq: int) -> Any:
    rows = _OLDEST_BLOCK.execute(conn, {"p_wallet_seq": wallet_seq})
    return rows[0] if rows else None


_OLDEST_BLOCK = DriverWrite(
    select(credit_blocks.c.seq, _FREE.label("remaining"))
    .where(credit_blocks.c.wallet_seq == bindparam("p_wallet_seq"))
    .order_by(credit_blocks.c.seq)
    .limit(1)
)


def refund_rooms(conn: Connection, original_seq: int) -> list[Any]:
    """(block_seq, room) for each block the charge spent from, the last it spent from first:
    what it took minus what its refunds have given back."""
    return _REFUND_ROOMS.execute(conn, {"p_seq": original_seq})


_EXPIRED = func.coalesce(credit_blocks.c.expires_at <= db_now(), false(), type_=Boolean())


_given_back = credit_allocations.alias("given_back")
_refunds = transactions.alias("refunds")
_spent = credit_allocations.alias("spent")
_REFUND_ROOMS = DriverWrite(
    select(
        _spent.c.block_seq,
        (
            -_spent.c.amount
            - func.coalesce(
                select(func.sum(_given_back.c.amount))
                .select_from(_given_back.join(_refunds, _refunds.c.seq == _given_back.c.entry_seq))
                .where(
                    _refunds.c.reverses_seq == bindparam("p_seq"),
                    _given_back.c.block_seq == _spent.c.block_seq,
                )
                .scalar_subquery(),
                0,
            )
        ).label("room"),
    )
    .where(_spent.c.entry_seq == bindparam("p_seq"))
    .order_by(_spent.c.ordinal.desc())
)


# ---- reads (GraphQL) ----


def credits_page(
    wallet_seq: int, after: tuple[str, int] | None, status: str | None, limit: int
) -> Select[Any]:
    """A wallet's blocks in burn-down order, keyset-paginated by (burn_key, seq). `status`:
    EXPIRED (its expiry has passed, by the database's clock), else DEPLETED (nothing left) or
    ACTIVE."""
    query = select(*credit_blocks.c, _EXPIRED.label("expired")).where(
        credit_blocks.c.wallet_seq == wallet_seq
    )
    if after is not None:
        key, seq = after
        query = query.where(
            or_(
                credit_blocks.c.burn_key > key,
                and_(credit_blocks.c.burn_key == key, credit_blocks.c.seq > seq),
            )
        )
    if status == "ACTIVE":
        query = query.where(credit_blocks.c.remaining > 0, ~_EXPIRED)
    elif status == "DEPLETED":
        query = query.where(credit_blocks.c.remaining == 0, ~_EXPIRED)
    elif status == "EXPIRED":
        query = query.where(_EXPIRED)
    return query.order_by(credit_blocks.c.burn_key, credit_blocks.c.seq).limit(limit)


async def list_credits(
    conn: AsyncConnection,
    wallet_seq: int,
    *,
    after: tuple[str, int] | None,
    status: str | None,
    limit: int,
) -> list[CreditBlockRecord]:
    rows = (await conn.execute(credits_page(wallet_seq, after, status, limit))).all()
    return [CreditBlockRecord.from_row(row) for row in rows]


async def blocks_by_seq(conn: AsyncConnection, seqs: Sequence[int]) -> list[CreditBlockRecord]:
    query = select(*credit_blocks.c, _EXPIRED.label("expired")).where(credit_blocks.c.seq.in_(seqs))
    return [CreditBlockRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def allocations_of(
    conn: AsyncConnection, entry_seqs: Sequence[int]
) -> list[AllocationRecord]:
    query = (
        select(*credit_allocations.c)
        .where(credit_allocations.c.entry_seq.in_(entry_seqs))
        .order_by(credit_allocations.c.entry_seq, credit_allocations.c.ordinal)
    )
    return [AllocationRecord(*row) for row in (await conn.execute(query)).all()]


async def category_balances(
    conn: AsyncConnection, wallet_seqs: Sequence[int]
) -> list[tuple[int, str, int]]:
    """(wallet_seq, category, sum of remaining) of the wallets' blocks with credits left."""
    query = (
        select(
            credit_blocks.c.wallet_seq,
            credit_blocks.c.category,
            func.sum(credit_blocks.c.remaining),
        )
        .where(credit_blocks.c.wallet_seq.in_(wallet_seqs), credit_blocks.c.remaining > 0)
        .group_by(credit_blocks.c.wallet_seq, credit_blocks.c.category)
    )
    return [(row[0], row[1], int(row[2])) for row in (await conn.execute(query)).all()]


async def undone_amounts(conn: AsyncConnection, entry_seqs: Sequence[int]) -> dict[int, int]:
    """The signed sum of the refunds or reversals of each entry that has any."""
    query = (
        select(transactions.c.reverses_seq, func.sum(transactions.c.amount))
        .where(transactions.c.reverses_seq.in_(entry_seqs))
        .group_by(transactions.c.reverses_seq)
    )
    return {row[0]: int(row[1]) for row in (await conn.execute(query)).all()}


async def transactions_by_seq(
    conn: AsyncConnection, seqs: Sequence[int]
) -> list[TransactionRecord]:
    query = select(*transactions.c).where(among(conn, transactions.c.seq, seqs))
    return [TransactionRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def due_wallets(conn: AsyncConnection, limit: int) -> list[int]:
    """Wallets with an expiry due by the database's clock, soonest first (the sweeper)."""
    query = (
        select(wallets.c.seq)
        .where(wallets.c.next_expiry_at <= db_now())
        .order_by(wallets.c.next_expiry_at)
        .limit(limit)
    )
    return [row[0] for row in (await conn.execute(query)).all()]
