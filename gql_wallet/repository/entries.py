"""Ledger entries: insert and reads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, bindparam, select
from sqlalchemy.engine import Connection

from gql_wallet.db import Database, DriverConnection
from gql_wallet.repository.driver import DriverRead, DriverWrite, GroupedPages
from gql_wallet.repository.records import TransactionRecord, transactions, utc


def insert_transaction(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    wallet_seq: int,
    type_: str,
    amount: int,
    balance_after: int,
    held_after: int,
    description: str | None,
    reference: str | None,
    idempotency_key: str,
    now: datetime,
    metadata: str,
    entry_id: uuid.UUID | None = None,
    reverses_seq: int | None = None,
) -> TransactionRecord:
    entry_id = entry_id or uuid.uuid4()
    params = {
        "p_id": entry_id,
        "p_organization_id": organization_id,
        "p_wallet_seq": wallet_seq,
        "p_type": type_,
        "p_amount": amount,
        "p_balance_after": balance_after,
        "p_held_after": held_after,
        "p_description": description,
        "p_reference": reference,
        "p_idempotency_key": idempotency_key,
        "p_now": now,
        "p_reverses_seq": reverses_seq,
        "p_metadata": metadata,
    }
    # Only the sequence number comes back: every other value is the one just bound, so the
    # writer (holding the write lock) converts nothing back.
    ((seq,),) = _INSERT_TRANSACTION.execute(conn, params)
    return TransactionRecord(
        seq,
        entry_id,
        wallet_seq,
        type_,
        amount,
        balance_after,
        description,
        reference,
        idempotency_key,
        utc(now),
        reverses_seq,
        held_after,
        metadata,
    )


_INSERT_TRANSACTION = DriverWrite(
    transactions.insert()
    .values(
        id=bindparam("p_id"),
        organization_id=bindparam("p_organization_id"),
        wallet_seq=bindparam("p_wallet_seq"),
        type=bindparam("p_type"),
        amount=bindparam("p_amount"),
        balance_after=bindparam("p_balance_after"),
        held_after=bindparam("p_held_after"),
        description=bindparam("p_description"),
        reference=bindparam("p_reference"),
        idempotency_key=bindparam("p_idempotency_key"),
        created_at=bindparam("p_now"),
        reverses_seq=bindparam("p_reverses_seq"),
        metadata=bindparam("p_metadata"),
    )
    .returning(transactions.c.seq)
)


def get_transaction_by_seq(conn: Connection, seq: int) -> TransactionRecord:
    return TransactionRecord.from_row(conn.execute(_TRANSACTION_BY_SEQ, {"p_seq": seq}).one())


_TRANSACTION_BY_SEQ = select(*transactions.c).where(transactions.c.seq == bindparam("p_seq"))


async def list_transactions(
    database: Database, wallet_seq: int, *, before_seq: int | None, limit: int
) -> list[TransactionRecord]:
    """A wallet's ledger, newest first, keyset-paginated by `seq`. On PostgreSQL the read goes in
    a group read with the other requests' pages (see `find_api_key`)."""
    page = (wallet_seq, _NEWEST if before_seq is None else before_seq, limit)
    rows = await database.run_grouped(_PAGES, _page_alone, page)
    return [TransactionRecord.from_row(row) for row in rows]


# Above every seq: the first page is the page before it.
_NEWEST = 2**63 - 1


def ledger_page(wallet_seq: int, before_seq: int | None, limit: int) -> Select[Any]:
    """A page of the wallet's ledger, newest first, before `before_seq` (None: from the newest),
    for a caller that narrows it further (repository.statements.period_page)."""
    return _page(wallet_seq, _NEWEST if before_seq is None else before_seq, limit)


def _page(wallet_seq: Any, before_seq: Any, limit: Any) -> Select[Any]:
    # The (wallet_seq, seq) index, a page at most.
    return (
        select(*transactions.c)
        .where(transactions.c.wallet_seq == wallet_seq, transactions.c.seq < before_seq)
        .order_by(transactions.c.seq.desc())
        .limit(limit)
    )


_PAGE = DriverRead(
    _page(bindparam("wallet_seq"), bindparam("before_seq"), bindparam("limit")), point_read=True
)
# PostgreSQL: the pages that the requests waiting in a process ask for.
_PAGES = GroupedPages(
    _page,
    (("wallet_seq", BigInteger()), ("before_seq", BigInteger()), ("limit", Integer())),
    lambda page: page.seq.desc(),
)


async def _page_alone(conn: DriverConnection, page: tuple[int, int, int]) -> list[Any]:
    wallet_seq, before_seq, limit = page
    return await _PAGE.fetchall(
        conn, {"wallet_seq": wallet_seq, "before_seq": before_seq, "limit": limit}
    )
