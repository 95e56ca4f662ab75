"""Live changes: what subscriptions read after a change is announced."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.records import TransactionRecord, transactions, utc, wallets

# PostgreSQL: gql_wallet_balance_change announces each applied change here, on
# commit, while some process LISTENs (migration 0004); SQLite has one process per file, whose
# writes wake the feed in process.
LEDGER_CHANNEL = "gql_wallet_ledger"


# Migration 0004's advisory locks: every balance change holds FEED_GATE shared until it commits;
# every LISTEN connection holds FEED_LISTENING shared for its session, taken after FEED_GATE
# exclusive (feed.LedgerFeed._register), and a change NOTIFYs only while FEED_LISTENING is held.
FEED_GATE_LOCK = 7_344_512_002


FEED_LISTENING_LOCK = 7_344_512_003


async def last_entries(
    conn: AsyncConnection, organization_id: uuid.UUID, customer_id: str
) -> dict[int, tuple[int, datetime]]:
    """wallet seq -> (seq of its newest ledger entry (0 if none), its modified_at), for a
    customer's wallets: where a feed of them starts."""
    rows = await conn.execute(
        select(wallets.c.seq, func.coalesce(func.max(transactions.c.seq), 0), wallets.c.modified_at)
        .select_from(wallets.outerjoin(transactions, transactions.c.wallet_seq == wallets.c.seq))
        .where(wallets.c.organization_id == organization_id, wallets.c.customer_id == customer_id)
        .group_by(wallets.c.seq, wallets.c.modified_at)
    )
    return {int(wallet_seq): (int(last), utc(at)) for wallet_seq, last, at in rows}


async def entries_after(
    conn: AsyncConnection, wallet_seq: int, after_seq: int
) -> list[TransactionRecord]:
    """A wallet's ledger entries after `after_seq`, in ledger order."""
    rows = await conn.execute(
        select(*transactions.c)
        .where(transactions.c.wallet_seq == wallet_seq, transactions.c.seq > after_seq)
        .order_by(transactions.c.seq)
    )
    return [TransactionRecord.from_row(row) for row in rows]
