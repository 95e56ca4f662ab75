"""Ledger entries: insert and reads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    bindparam,
    select,
)
from sqlalchemy.engine import Connection

from gql_wallet.db import DriverConnection
from gql_wallet.repository.driver import DriverRead, DriverWrite
from gql_wallet.repository.records import TransactionRecord, transactions


def insert_transaction(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    wallet_seq: int,
    type_: str,
    amount: int,
    balance_after: int,
    description: str | None,
    reference: str | None,
    idempotency_key: str,
    now: datetime,
) -> TransactionRecord:
    params = {
        "p_id": uuid.uuid4(),
        "p_organization_id": organization_id,
        "p_wallet_seq": wallet_seq,
        "p_type": type_,
        "p_amount": amount,
        "p_balance_after": balance_after,
        "p_description": description,
        "p_reference": reference,
        "p_idempotency_key": idempotency_key,
        "p_now": now,
    }
    (row,) = _INSERT_TRANSACTION.execute(conn, params)
    return TransactionRecord.from_row(row)


_INSERT_TRANSACTION = DriverWrite(
    transactions.insert()
    .values(
        id=bindparam("p_id"),
        organization_id=bindparam("p_organization_id"),
        wallet_seq=bindparam("p_wallet_seq"),
        type=bindparam("p_type"),
        amount=bindparam("p_amount"),
        balance_after=bindparam("p_balance_after"),
        description=bindparam("p_description"),
        reference=bindparam("p_reference"),
        idempotency_key=bindparam("p_idempotency_key"),
        created_at=bindparam("p_now"),
    )
    .returning(*transactions.c)
)


def get_transaction_by_seq(conn: Connection, seq: int) -> TransactionRecord:
    return TransactionRecord.from_row(conn.execute(_TRANSACTION_BY_SEQ, {"p_seq": seq}).one())


_TRANSACTION_BY_SEQ = select(*transactions.c).where(transactions.c.seq == bindparam("p_seq"))


async def list_transactions(
    conn: DriverConnection, wallet_seq: int, *, before_seq: int | None, limit: int
) -> list[TransactionRecord]:
    """A wallet's ledger, newest first, keyset-paginated by `seq`."""
    if before_seq is None:
        rows = await _ENTRIES.fetchall(conn, {"wallet_seq": wallet_seq, "limit": limit})
    else:
        rows = await _ENTRIES_BEFORE.fetchall(
            conn, {"wallet_seq": wallet_seq, "before_seq": before_seq, "limit": limit}
        )
    return [TransactionRecord.from_row(row) for row in rows]


def _entries(*conditions: Any) -> DriverRead:
    # The (wallet_seq, seq) index, a page at most: a point read.
    return DriverRead(
        select(*transactions.c)
        .where(transactions.c.wallet_seq == bindparam("wallet_seq"), *conditions)
        .order_by(transactions.c.seq.desc())
        .limit(bindparam("limit")),
        point_read=True,
    )


_ENTRIES = _entries()
_ENTRIES_BEFORE = _entries(transactions.c.seq < bindparam("before_seq"))
