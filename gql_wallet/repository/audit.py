"""The reads of `gql-wallet verify`."""

from __future__ import annotations

from sqlalchemy import (
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.records import _WALLET_COLUMNS, WalletRecord, transactions, wallets


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
