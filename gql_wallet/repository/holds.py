"""Holds: the statements of the SQLite store's hold steps, and the reads.

A hold's status is stored as OPEN until a write resolves it (CAPTURED, VOIDED) or writes its
expiry (EXPIRED); an OPEN hold past `expires_at` is EXPIRED for every read from that instant
(`expired`, by the database's clock), written or not. On PostgreSQL the steps are the ledger
functions of migrations/sql/, which use the same four words.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, and_, bindparam, false, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.repository.driver import DriverWrite
from gql_wallet.repository.records import (
    HoldRecord,
    among,
    credit_blocks,
    db_now,
    hold_reservations,
    wallet_holds,
)

OPEN, CAPTURED, VOIDED, EXPIRED = "OPEN", "CAPTURED", "VOIDED", "EXPIRED"

_EXPIRED = func.coalesce(
    and_(wallet_holds.c.status == OPEN, wallet_holds.c.expires_at <= db_now()),
    false(),
    type_=Boolean(),
)
_HOLD_COLUMNS = (*wallet_holds.c, _EXPIRED.label("expired"))


# ---- the SQLite store's steps (synchronous, in the write's transaction) ----


def insert_hold(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    wallet_seq: int,
    amount: int,
    expires_at: datetime,
    description: str | None,
    reference: str | None,
    idempotency_key: str,
    now: datetime,
    metadata: str,
) -> HoldRecord:
    ((seq,),) = _INSERT_HOLD.execute(
        conn,
        {
            "p_id": uuid.uuid4(),
            "p_organization_id": organization_id,
            "p_wallet_seq": wallet_seq,
            "p_amount": amount,
            "p_expires_at": expires_at,
            "p_description": description,
            "p_reference": reference,
            "p_key": idempotency_key,
            "p_now": now,
            "p_metadata": metadata,
        },
    )
    return hold_by_seq(conn, seq)


_INSERT_HOLD = DriverWrite(
    wallet_holds.insert()
    .values(
        id=bindparam("p_id"),
        organization_id=bindparam("p_organization_id"),
        wallet_seq=bindparam("p_wallet_seq"),
        amount=bindparam("p_amount"),
        captured_amount=0,
        status=OPEN,
        expires_at=bindparam("p_expires_at"),
        description=bindparam("p_description"),
        reference=bindparam("p_reference"),
        idempotency_key=bindparam("p_key"),
        created_at=bindparam("p_now"),
        metadata=bindparam("p_metadata"),
    )
    .returning(wallet_holds.c.seq)
)


def hold_by_seq(conn: Connection, seq: int) -> HoldRecord:
    (row,) = _HOLD_BY_SEQ.execute(conn, {"p_seq": seq})
    return HoldRecord.from_row(row)


_HOLD_BY_SEQ = DriverWrite(select(*_HOLD_COLUMNS).where(wallet_holds.c.seq == bindparam("p_seq")))


def hold_by_id(
    conn: Connection, organization_id: uuid.UUID, hold_id: uuid.UUID
) -> HoldRecord | None:
    rows = _HOLD_BY_ID.execute(conn, {"p_org": organization_id, "p_id": hold_id})
    return HoldRecord.from_row(rows[0]) if rows else None


_HOLD_BY_ID = DriverWrite(
    select(*_HOLD_COLUMNS).where(
        wallet_holds.c.id == bindparam("p_id"), wallet_holds.c.organization_id == bindparam("p_org")
    )
)


def reserve(conn: Connection, hold_seq: int, ordinal: int, block_seq: int, amount: int) -> None:
    _ADD_HELD.execute(conn, {"p_block_seq": block_seq, "p_amount": amount})
    _INSERT_RESERVATION.execute(
        conn,
        {"p_hold": hold_seq, "p_ordinal": ordinal, "p_block": block_seq, "p_amount": amount},
    )


_ADD_HELD = DriverWrite(
    update(credit_blocks)
    .where(credit_blocks.c.seq == bindparam("p_block_seq"))
    .values(held=credit_blocks.c.held + bindparam("p_amount"))
)


_INSERT_RESERVATION = DriverWrite(
    hold_reservations.insert().values(
        hold_seq=bindparam("p_hold"),
        ordinal=bindparam("p_ordinal"),
        block_seq=bindparam("p_block"),
        amount=bindparam("p_amount"),
    )
)


def reservations(conn: Connection, hold_seq: int) -> list[Any]:
    """(block_seq, amount) of what the hold reserved, in the burn-down order of the blocks."""
    return _RESERVATIONS.execute(conn, {"p_hold": hold_seq})


_RESERVATIONS = DriverWrite(
    select(hold_reservations.c.block_seq, hold_reservations.c.amount)
    .join(credit_blocks, credit_blocks.c.seq == hold_reservations.c.block_seq)
    .where(hold_reservations.c.hold_seq == bindparam("p_hold"))
    .order_by(credit_blocks.c.burn_key, credit_blocks.c.seq)
)


def release(conn: Connection, hold_seq: int) -> None:
    """Give back to their blocks what the hold reserved."""
    _RELEASE.execute(conn, {"p_hold": hold_seq})


_reserved = (
    select(hold_reservations.c.amount)
    .where(
        hold_reservations.c.hold_seq == bindparam("p_hold"),
        hold_reservations.c.block_seq == credit_blocks.c.seq,
    )
    .scalar_subquery()
)
_RELEASE = DriverWrite(
    update(credit_blocks)
    .where(
        credit_blocks.c.seq.in_(
            select(hold_reservations.c.block_seq).where(
                hold_reservations.c.hold_seq == bindparam("p_hold")
            )
        )
    )
    .values(held=credit_blocks.c.held - _reserved)
)


def spend_reserved(conn: Connection, block_seq: int, reserved: int, taken: int) -> None:
    """A capture: release the block's reservation and spend `taken` of it."""
    _SPEND_RESERVED.execute(
        conn, {"p_block_seq": block_seq, "p_reserved": reserved, "p_taken": taken}
    )


_SPEND_RESERVED = DriverWrite(
    update(credit_blocks)
    .where(credit_blocks.c.seq == bindparam("p_block_seq"))
    .values(
        held=credit_blocks.c.held - bindparam("p_reserved"),
        remaining=credit_blocks.c.remaining - bindparam("p_taken"),
    )
)


def resolve(
    conn: Connection,
    hold_seq: int,
    *,
    status: str,
    resolved_at: datetime,
    captured_amount: int = 0,
    capture_seq: int | None = None,
) -> None:
    _RESOLVE.execute(
        conn,
        {
            "p_seq": hold_seq,
            "p_status": status,
            "p_resolved_at": resolved_at,
            "p_captured": captured_amount,
            "p_capture_seq": capture_seq,
        },
    )


_RESOLVE = DriverWrite(
    update(wallet_holds)
    .where(wallet_holds.c.seq == bindparam("p_seq"))
    .values(
        status=bindparam("p_status"),
        resolved_at=bindparam("p_resolved_at"),
        captured_amount=bindparam("p_captured"),
        capture_seq=bindparam("p_capture_seq"),
    )
)


def due_holds(conn: Connection, wallet_seq: int, now: datetime) -> list[Any]:
    """(seq, amount, expires_at) of the wallet's OPEN holds whose expiry has come."""
    return _DUE_HOLDS.execute(conn, {"p_wallet_seq": wallet_seq, "p_now": now})


_DUE_HOLDS = DriverWrite(
    select(wallet_holds.c.seq, wallet_holds.c.amount, wallet_holds.c.expires_at)
    .where(
        wallet_holds.c.wallet_seq == bindparam("p_wallet_seq"),
        wallet_holds.c.status == OPEN,
        wallet_holds.c.expires_at <= bindparam("p_now"),
    )
    .order_by(wallet_holds.c.expires_at, wallet_holds.c.seq)
)


# ---- reads (GraphQL) ----


async def list_holds(
    conn: AsyncConnection,
    wallet_seq: int,
    *,
    before_seq: int | None,
    status: str | None,
    limit: int,
) -> list[HoldRecord]:
    """A wallet's holds, newest first, keyset-paginated by seq. `status` as a read shows it:
    OPEN (and not past its expiry), EXPIRED (written, or OPEN and past it), CAPTURED, VOIDED."""
    query = select(*_HOLD_COLUMNS).where(wallet_holds.c.wallet_seq == wallet_seq)
    if before_seq is not None:
        query = query.where(wallet_holds.c.seq < before_seq)
    if status == OPEN:
        query = query.where(wallet_holds.c.status == OPEN, ~_EXPIRED)
    elif status == EXPIRED:
        query = query.where((wallet_holds.c.status == EXPIRED) | _EXPIRED)
    elif status is not None:
        query = query.where(wallet_holds.c.status == status)
    rows = (await conn.execute(query.order_by(wallet_holds.c.seq.desc()).limit(limit))).all()
    return [HoldRecord.from_row(row) for row in rows]


async def holds_by_id(
    conn: AsyncConnection, organization_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> list[HoldRecord]:
    query = select(*_HOLD_COLUMNS).where(
        wallet_holds.c.organization_id == organization_id, wallet_holds.c.id.in_(ids)
    )
    return [HoldRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def holds_by_seq(conn: AsyncConnection, seqs: Sequence[int]) -> list[HoldRecord]:
    query = select(*_HOLD_COLUMNS).where(among(conn, wallet_holds.c.seq, seqs))
    return [HoldRecord.from_row(row) for row in (await conn.execute(query)).all()]
