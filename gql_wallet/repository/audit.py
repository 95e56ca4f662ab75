"""The reads of `gql-wallet verify`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.holds import OPEN
from gql_wallet.repository.records import (
    _WALLET_COLUMNS,
    WalletRecord,
    credit_allocations,
    credit_blocks,
    hold_reservations,
    transactions,
    wallet_holds,
    wallets,
)


async def all_wallets(conn: AsyncConnection) -> list[WalletRecord]:
    rows = (await conn.execute(select(*_WALLET_COLUMNS).order_by(wallets.c.seq))).all()
    return [WalletRecord.from_row(row) for row in rows]


async def ledger_of(conn: AsyncConnection, wallet_seq: int) -> list[tuple[int, int]]:
    """(amount, balance_after) of every entry of a wallet, in ledger order."""
    rows = await conn.execute(
        select(transactions.c.amount, transactions.c.balance_after)
        .where(transactions.c.wallet_seq == wallet_seq)
        .order_by(transactions.c.seq)
    )
    return [(row.amount, row.balance_after) for row in rows]


async def block_totals(conn: AsyncConnection) -> list[tuple[Any, ...]]:
    """(block id, wallet_seq, amount, remaining, sum of its allocations) of every block."""
    given = func.coalesce(func.sum(credit_allocations.c.amount), 0)
    rows = await conn.execute(
        select(
            credit_blocks.c.id,
            credit_blocks.c.wallet_seq,
            credit_blocks.c.amount,
            credit_blocks.c.remaining,
            given,
        )
        .select_from(
            credit_blocks.outerjoin(
                credit_allocations, credit_allocations.c.block_seq == credit_blocks.c.seq
            )
        )
        .group_by(credit_blocks.c.seq)
        .order_by(credit_blocks.c.seq)
    )
    return [tuple(row) for row in rows]


async def spent_after_expiry(
    conn: AsyncConnection, exempt_types: list[str]
) -> list[tuple[Any, ...]]:
    """(block id, wallet_seq, entry id) of every entry not of `exempt_types` (an expiry, a
    capture of what a hold reserved before) that took credits from a block at or after the
    block's expiry."""
    rows = await conn.execute(
        select(credit_blocks.c.id, credit_blocks.c.wallet_seq, transactions.c.id)
        .select_from(
            credit_allocations.join(
                credit_blocks, credit_blocks.c.seq == credit_allocations.c.block_seq
            ).join(transactions, transactions.c.seq == credit_allocations.c.entry_seq)
        )
        .where(
            credit_allocations.c.amount < 0,
            transactions.c.type.not_in(exempt_types),
            credit_blocks.c.expires_at.is_not(None),
            transactions.c.created_at >= credit_blocks.c.expires_at,
        )
    )
    return [tuple(row) for row in rows]


async def unbalanced_allocations(conn: AsyncConnection) -> list[tuple[Any, ...]]:
    """(entry id, wallet_seq, amount, sum of its allocations) of every entry whose allocations
    do not add up to its amount."""
    total = func.sum(credit_allocations.c.amount)
    rows = await conn.execute(
        select(transactions.c.id, transactions.c.wallet_seq, transactions.c.amount, total)
        .select_from(
            transactions.join(
                credit_allocations, credit_allocations.c.entry_seq == transactions.c.seq
            )
        )
        .group_by(transactions.c.seq)
        .having(total != transactions.c.amount)
    )
    return [tuple(row) for row in rows]


async def undone_totals(conn: AsyncConnection) -> list[tuple[Any, ...]]:
    """(entry id, wallet_seq, amount, signed sum of the entries that undo it) of every entry
    that has been refunded or reversed."""
    undo = transactions.alias("undo")
    rows = await conn.execute(
        select(
            transactions.c.id,
            transactions.c.wallet_seq,
            transactions.c.amount,
            func.sum(undo.c.amount),
        )
        .select_from(transactions.join(undo, undo.c.reverses_seq == transactions.c.seq))
        .group_by(transactions.c.seq)
    )
    return [tuple(row) for row in rows]


async def credits_by_wallet(conn: AsyncConnection) -> dict[int, int]:
    """The sum of the blocks' remaining credits, per wallet that has blocks."""
    rows = await conn.execute(
        select(credit_blocks.c.wallet_seq, func.sum(credit_blocks.c.remaining)).group_by(
            credit_blocks.c.wallet_seq
        )
    )
    return {row[0]: int(row[1]) for row in rows}


async def held_by_wallet(conn: AsyncConnection) -> dict[int, int]:
    """The sum of the OPEN holds' amounts (their expiry written or not), per wallet that has
    any."""
    rows = await conn.execute(
        select(wallet_holds.c.wallet_seq, func.sum(wallet_holds.c.amount))
        .where(wallet_holds.c.status == OPEN)
        .group_by(wallet_holds.c.wallet_seq)
    )
    return {row[0]: int(row[1]) for row in rows}


async def block_reservations(conn: AsyncConnection) -> list[tuple[Any, ...]]:
    """(block id, wallet_seq, held, remaining, what OPEN holds reserve from it) of every block
    that holds or is reserved from."""
    reserved = (
        select(func.coalesce(func.sum(hold_reservations.c.amount), 0))
        .select_from(
            hold_reservations.join(wallet_holds, wallet_holds.c.seq == hold_reservations.c.hold_seq)
        )
        .where(hold_reservations.c.block_seq == credit_blocks.c.seq, wallet_holds.c.status == OPEN)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(
            credit_blocks.c.id,
            credit_blocks.c.wallet_seq,
            credit_blocks.c.held,
            credit_blocks.c.remaining,
            reserved,
        )
        .where(
            (credit_blocks.c.held != 0)
            | credit_blocks.c.seq.in_(select(hold_reservations.c.block_seq))
        )
        .order_by(credit_blocks.c.seq)
    )
    return [tuple(row) for row in rows]


async def hold_states(conn: AsyncConnection) -> list[tuple[Any, ...]]:
    """(hold id, wallet_seq, status, amount, captured_amount, resolved_at, sum of its
    reservations, its capture entry's amount or None) of every hold."""
    reserved = (
        select(func.coalesce(func.sum(hold_reservations.c.amount), 0))
        .where(hold_reservations.c.hold_seq == wallet_holds.c.seq)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(
            wallet_holds.c.id,
            wallet_holds.c.wallet_seq,
            wallet_holds.c.status,
            wallet_holds.c.amount,
            wallet_holds.c.captured_amount,
            wallet_holds.c.resolved_at,
            reserved,
            transactions.c.amount,
        )
        .select_from(
            wallet_holds.outerjoin(transactions, transactions.c.seq == wallet_holds.c.capture_seq)
        )
        .order_by(wallet_holds.c.seq)
    )
    return [tuple(row) for row in rows]


async def captures_without_hold(conn: AsyncConnection, capture_type: str) -> list[tuple[Any, ...]]:
    """(entry id, wallet_seq) of every capture entry that is no hold's capture."""
    rows = await conn.execute(
        select(transactions.c.id, transactions.c.wallet_seq).where(
            transactions.c.type == capture_type,
            transactions.c.seq.not_in(
                select(wallet_holds.c.capture_seq).where(wallet_holds.c.capture_seq.is_not(None))
            ),
        )
    )
    return [tuple(row) for row in rows]
