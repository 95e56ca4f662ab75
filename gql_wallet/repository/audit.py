"""The reads of `gql-wallet verify`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.records import (
    _WALLET_COLUMNS,
    WalletRecord,
    credit_allocations,
    credit_blocks,
    transactions,
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


async def spent_after_expiry(conn: AsyncConnection, expiration_type: str) -> list[tuple[Any, ...]]:
    """(block id, wallet_seq, entry id) of every entry but an expiry that took credits from a
    block at or after the block's expiry."""
    rows = await conn.execute(
        select(credit_blocks.c.id, credit_blocks.c.wallet_seq, transactions.c.id)
        .select_from(
            credit_allocations.join(
                credit_blocks, credit_blocks.c.seq == credit_allocations.c.block_seq
            ).join(transactions, transactions.c.seq == credit_allocations.c.entry_seq)
        )
        .where(
            credit_allocations.c.amount < 0,
            transactions.c.type != expiration_type,
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
