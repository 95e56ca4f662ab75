"""Webhooks: endpoints, the outbox the triggers fill, events, deliveries and their attempts.

Times that decide when an attempt is due come from the database's clock (`clock`), so that
processes on several hosts agree on them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.models import (
    WebhookAttempt,
    WebhookBalanceState,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookOutbox,
)
from gql_wallet.repository.records import among, db_now, utc, wallets

endpoints: Table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
outbox: Table = WebhookOutbox.__table__  # type: ignore[attr-defined]
events: Table = WebhookEvent.__table__  # type: ignore[attr-defined]
deliveries: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
attempts: Table = WebhookAttempt.__table__  # type: ignore[attr-defined]
balance_state: Table = WebhookBalanceState.__table__  # type: ignore[attr-defined]

PENDING, SUCCEEDED, FAILED = "PENDING", "SUCCEEDED", "FAILED"


class EndpointRecord(NamedTuple):
    seq: int
    id: uuid.UUID
    organization_id: uuid.UUID
    url: str
    events: tuple[str, ...]
    description: str | None
    secret: str
    created_at: datetime
    modified_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> EndpointRecord:
        return cls(
            row.seq, row.id, row.organization_id, row.url, tuple(row.events.split()),
            row.description, row.secret, utc(row.created_at), utc(row.modified_at),
        )  # fmt: skip


class DeliveryRecord(NamedTuple):
    seq: int
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: str
    event_type: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> DeliveryRecord:
        return cls(
            row.seq, row.id, row.endpoint_id, row.event_id, row.event_type, row.payload,
            row.status, row.attempts, _utc_or_none(row.next_attempt_at), row.last_status_code,
            row.last_error, utc(row.created_at), _utc_or_none(row.completed_at),
        )  # fmt: skip


class AttemptRecord(NamedTuple):
    delivery_seq: int
    number: int
    started_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class OutboxRow(NamedTuple):
    """A webhook_outbox row (models.WebhookOutbox), in its columns' order."""

    seq: int
    organization_id: uuid.UUID
    wallet_seq: int
    kind: str
    entry_seq: int | None
    hold_seq: int | None
    balance: int | None
    held_balance: int | None
    threshold: int | None
    created_at: datetime


class Claimed(NamedTuple):
    """An attempt a worker has claimed: what to send, where, and with which secret."""

    delivery_seq: int
    attempt: int
    endpoint_seq: int
    url: str
    secret: str
    event_id: str
    payload: str
    created_at: datetime  # the event's


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


async def clock(conn: AsyncConnection) -> datetime:
    """The database's clock now."""
    return utc((await conn.execute(select(db_now()))).scalar_one())


# ---- endpoints ----


async def insert_endpoint(
    conn: AsyncConnection,
    organization_id: uuid.UUID,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    secret: str,
) -> EndpointRecord:
    now = await clock(conn)
    row = (
        await conn.execute(
            insert(endpoints)
            .values(
                id=uuid.uuid4(),
                organization_id=organization_id,
                url=url,
                events=" ".join(event_types),
                description=description,
                secret=secret,
                created_at=now,
                modified_at=now,
            )
            .returning(*endpoints.c)
        )
    ).one()
    return EndpointRecord.from_row(row)


async def list_endpoints(conn: AsyncConnection, organization_id: uuid.UUID) -> list[EndpointRecord]:
    query = (
        select(*endpoints.c)
        .where(endpoints.c.organization_id == organization_id)
        .order_by(endpoints.c.seq)
    )
    return [EndpointRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def get_endpoint(
    conn: AsyncConnection, organization_id: uuid.UUID, endpoint_id: uuid.UUID
) -> EndpointRecord | None:
    query = select(*endpoints.c).where(
        endpoints.c.organization_id == organization_id, endpoints.c.id == endpoint_id
    )
    row = (await conn.execute(query)).first()
    return None if row is None else EndpointRecord.from_row(row)


async def update_endpoint(
    conn: AsyncConnection, organization_id: uuid.UUID, endpoint_id: uuid.UUID, **values: Any
) -> EndpointRecord | None:
    if "events" in values:
        values["events"] = " ".join(values["events"])
    row = (
        await conn.execute(
            update(endpoints)
            .where(endpoints.c.organization_id == organization_id, endpoints.c.id == endpoint_id)
            .values(**values, modified_at=await clock(conn))
            .returning(*endpoints.c)
        )
    ).first()
    return None if row is None else EndpointRecord.from_row(row)


async def delete_endpoint(
    conn: AsyncConnection, organization_id: uuid.UUID, endpoint_id: uuid.UUID
) -> EndpointRecord | None:
    """Delete the endpoint with its deliveries and their attempts (events stay)."""
    found = await get_endpoint(conn, organization_id, endpoint_id)
    if found is None:
        return None
    doomed = select(deliveries.c.seq).where(deliveries.c.endpoint_seq == found.seq)
    await conn.execute(delete(attempts).where(attempts.c.delivery_seq.in_(doomed)))
    await conn.execute(delete(deliveries).where(deliveries.c.endpoint_seq == found.seq))
    await conn.execute(delete(endpoints).where(endpoints.c.seq == found.seq))
    return found


async def endpoints_of(
    conn: AsyncConnection, organization_ids: Sequence[uuid.UUID]
) -> list[EndpointRecord]:
    query = (
        select(*endpoints.c)
        .where(endpoints.c.organization_id.in_(set(organization_ids)))
        .order_by(endpoints.c.seq)
    )
    return [EndpointRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def set_threshold(
    conn: AsyncConnection,
    organization_id: uuid.UUID,
    customer_id: str,
    currency: str,
    threshold: int | None,
) -> int | None:
    """Set the wallet's low-balance threshold; its seq, or None when there is no such wallet."""
    row = (
        await conn.execute(
            update(wallets)
            .where(
                wallets.c.organization_id == organization_id,
                wallets.c.customer_id == customer_id,
                wallets.c.currency == currency,
            )
            .values(low_balance_threshold=threshold)
            .returning(wallets.c.seq)
        )
    ).first()
    return None if row is None else int(row[0])


async def thresholds(conn: AsyncConnection, wallet_seqs: Sequence[int]) -> dict[int, int | None]:
    query = select(wallets.c.seq, wallets.c.low_balance_threshold).where(
        wallets.c.seq.in_(wallet_seqs)
    )
    return {row[0]: row[1] for row in (await conn.execute(query)).all()}


# ---- the outbox, events and deliveries (the dispatcher) ----


async def lock_dispatch(conn: AsyncConnection) -> bool:
    """One dispatcher at a time (PostgreSQL: a transaction-scoped advisory lock, given up if
    another process holds it; SQLite: the write transaction is the lock)."""
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(select(func.pg_try_advisory_xact_lock(7344512010)))).scalar())


async def changes_waiting(conn: AsyncConnection) -> bool:
    """Whether the outbox holds changes to dispatch (read without a write transaction)."""
    return (await conn.execute(select(outbox.c.seq).limit(1))).first() is not None


async def deliveries_due(conn: AsyncConnection) -> bool:
    """Whether some delivery is due by the database's clock (read without a write
    transaction)."""
    found = await conn.execute(
        select(deliveries.c.seq)
        .where(deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= db_now())
        .limit(1)
    )
    return found.first() is not None


async def outbox_batch(conn: AsyncConnection, limit: int) -> list[OutboxRow]:
    query = select(*outbox.c).order_by(outbox.c.seq).limit(limit)
    return [OutboxRow._make((*row[:-1], utc(row.created_at))) for row in await conn.execute(query)]


async def balance_states(conn: AsyncConnection, wallet_seqs: Sequence[int]) -> dict[int, str]:
    query = select(balance_state.c.wallet_seq, balance_state.c.state).where(
        among(conn, balance_state.c.wallet_seq, wallet_seqs)
    )
    return {row[0]: row[1] for row in (await conn.execute(query)).all()}


async def save_balance_states(conn: AsyncConnection, states: dict[int, str]) -> None:
    if not states:
        return
    await conn.execute(delete(balance_state).where(among(conn, balance_state.c.wallet_seq, states)))
    await conn.execute(
        insert(balance_state), [{"wallet_seq": w, "state": s} for w, s in states.items()]
    )


async def delete_outbox(conn: AsyncConnection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute(delete(outbox).where(among(conn, outbox.c.seq, seqs)))


async def next_event_seqs(conn: AsyncConnection, count: int) -> list[int]:
    """`count` seqs for new events, increasing. PostgreSQL: from the table's sequence; SQLite:
    after the largest (the dispatcher holds the write lock, so no other writer takes them)."""
    if count == 0:
        return []
    if conn.dialect.name == "postgresql":
        taken = await conn.execute(
            select(func.nextval(func.pg_get_serial_sequence("webhook_events", "seq"))).select_from(
                func.generate_series(1, count)
            )
        )
        return sorted(int(row[0]) for row in taken.all())
    largest = (await conn.execute(select(func.coalesce(func.max(events.c.seq), 0)))).scalar_one()
    return list(range(int(largest) + 1, int(largest) + 1 + count))


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """New events (seq, id, organization_id, wallet_seq, type, payload, created_at)."""
    if rows:
        await conn.execute(insert(events), rows)


async def insert_deliveries(
    conn: AsyncConnection, pairs: Sequence[tuple[int, int]], now: datetime
) -> None:
    """One PENDING delivery, due now, for each (event seq, endpoint seq)."""
    if pairs:
        await conn.execute(
            insert(deliveries),
            [
                {
                    "id": uuid.uuid4(),
                    "event_seq": event_seq,
                    "endpoint_seq": endpoint_seq,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for event_seq, endpoint_seq in pairs
            ],
        )


async def oldest_pending_at(conn: AsyncConnection) -> datetime | None:
    """When the oldest event not yet delivered everywhere happened: the outbox's oldest
    change, or the oldest PENDING delivery's event."""
    changes = (await conn.execute(select(func.min(outbox.c.created_at)))).scalar()
    pending = (
        await conn.execute(
            select(func.min(events.c.created_at))
            .select_from(deliveries.join(events, events.c.seq == deliveries.c.event_seq))
            .where(deliveries.c.status == PENDING)
        )
    ).scalar()
    found = [utc(value) for value in (changes, pending) if value is not None]
    return min(found) if found else None


# ---- deliveries (the workers) ----


async def _without_waiting_for_the_disk(conn: AsyncConnection) -> None:
    """PostgreSQL: this transaction's commit returns before its WAL is flushed. For claims and
    outcomes only: one lost in a crash of the database makes its attempt again, with the same
    `webhook-id` (at least once); the flushes saved are the ledger writes' to use."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


async def claim_due(
    conn: AsyncConnection, limit: int, room: dict[int, int], cap: int, lease_seconds: float
) -> list[Claimed]:
    """Claim up to `limit` due attempts, at most `room[endpoint]` (else `cap`) to an endpoint:
    each delivery's `next_attempt_at` moves past the attempt's lease and its attempts count goes
    up, so no other process takes it meanwhile (on PostgreSQL rows another process is claiming
    are skipped)."""
    await _without_waiting_for_the_disk(conn)
    now = await clock(conn)
    due = (
        select(deliveries.c.seq, deliveries.c.endpoint_seq)
        .where(deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit * 4)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    seqs: list[int] = []
    for seq, endpoint_seq in (await conn.execute(due)).all():
        left = room.get(endpoint_seq, cap)
        if left > 0 and len(seqs) < limit:
            seqs.append(seq)
            room[endpoint_seq] = left - 1
    if not seqs:
        return []
    await conn.execute(
        update(deliveries)
        .where(among(conn, deliveries.c.seq, seqs))
        .values(
            attempts=deliveries.c.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
        )
    )
    query = (
        select(
            deliveries.c.seq,
            deliveries.c.attempts,
            endpoints.c.seq,
            endpoints.c.url,
            endpoints.c.secret,
            events.c.id,
            events.c.payload,
            events.c.created_at,
        )
        .select_from(
            deliveries.join(endpoints, endpoints.c.seq == deliveries.c.endpoint_seq).join(
                events, events.c.seq == deliveries.c.event_seq
            )
        )
        .where(among(conn, deliveries.c.seq, seqs))
    )
    return [
        Claimed(row[0], row[1], row[2], row[3], row[4], row[5], row[6], utc(row[7]))
        for row in (await conn.execute(query)).all()
    ]


class Outcome(NamedTuple):
    """How one claimed attempt went. `retry_in`: seconds until the next attempt if this one
    failed; None: none is left."""

    claimed: Claimed
    started_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_in: float | None

    @property
    def status(self) -> str:
        if self.status_code is not None and 200 <= self.status_code < 300:
            return SUCCEEDED
        return FAILED if self.retry_in is None else PENDING


async def record_attempts(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> None:
    """Record attempts' outcomes, in one transaction: each delivery SUCCEEDED on a 2xx, else due
    again `retry_in` seconds from now (database clock), or FAILED when no retry is left. The
    outcome of a delivery deleted meanwhile (with its endpoint) is dropped."""
    await _without_waiting_for_the_disk(conn)
    # Locked, so that the endpoint's deletion waits until its attempts are recorded.
    live = select(deliveries.c.seq).where(
        among(conn, deliveries.c.seq, [o.claimed.delivery_seq for o in outcomes])
    )
    if conn.dialect.name == "postgresql":
        live = live.with_for_update(key_share=True)
    kept = set((await conn.execute(live)).scalars())
    outcomes = [o for o in outcomes if o.claimed.delivery_seq in kept]
    if not outcomes:
        return
    now = await clock(conn)
    await conn.execute(
        insert(attempts),
        [
            {
                "delivery_seq": o.claimed.delivery_seq,
                "number": o.claimed.attempt,
                "started_at": o.started_at,
                "status_code": o.status_code,
                "error": o.error,
                "duration_ms": o.duration_ms,
            }
            for o in outcomes
        ],
    )
    await conn.execute(
        update(deliveries)
        # Only the attempt that was claimed: a redelivery asked for meanwhile stays asked.
        .where(
            deliveries.c.seq == bindparam("p_seq"),
            deliveries.c.attempts == bindparam("p_attempt"),
            deliveries.c.status == PENDING,
        )
        .values(
            status=bindparam("p_status"),
            last_status_code=bindparam("p_code"),
            last_error=bindparam("p_error"),
            next_attempt_at=bindparam("p_next", type_=deliveries.c.next_attempt_at.type),
            completed_at=bindparam("p_completed", type_=deliveries.c.completed_at.type),
        ),
        [
            {
                "p_seq": o.claimed.delivery_seq,
                "p_attempt": o.claimed.attempt,
                "p_status": o.status,
                "p_code": o.status_code,
                "p_error": o.error,
                "p_next": now + timedelta(seconds=o.retry_in or 0) if o.status == PENDING else None,
                "p_completed": None if o.status == PENDING else now,
            }
            for o in outcomes
        ],
    )


async def redeliver(
    conn: AsyncConnection, organization_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryRecord | None:
    """Make the delivery PENDING and due now (one more attempt; its history stays)."""
    found = await get_delivery(conn, organization_id, delivery_id)
    if found is None:
        return None
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.seq == found.seq)
        .values(status=PENDING, next_attempt_at=await clock(conn), completed_at=None)
    )
    return await get_delivery(conn, organization_id, delivery_id)


_DELIVERY_COLUMNS = (
    *(c for c in deliveries.c if c.name not in ("event_seq", "endpoint_seq")),
    endpoints.c.id.label("endpoint_id"),
    events.c.id.label("event_id"),
    events.c.type.label("event_type"),
    events.c.payload,
)
_DELIVERY_FROM = deliveries.join(endpoints, endpoints.c.seq == deliveries.c.endpoint_seq).join(
    events, events.c.seq == deliveries.c.event_seq
)


async def get_delivery(
    conn: AsyncConnection, organization_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryRecord | None:
    query = (
        select(*_DELIVERY_COLUMNS)
        .select_from(_DELIVERY_FROM)
        .where(deliveries.c.id == delivery_id, endpoints.c.organization_id == organization_id)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else DeliveryRecord.from_row(row)


async def list_deliveries(
    conn: AsyncConnection,
    endpoint_seq: int,
    status: str | None,
    before_seq: int | None,
    limit: int,
) -> list[DeliveryRecord]:
    """An endpoint's deliveries, newest first."""
    query = select(*_DELIVERY_COLUMNS).select_from(_DELIVERY_FROM)
    query = query.where(deliveries.c.endpoint_seq == endpoint_seq)
    if status is not None:
        query = query.where(deliveries.c.status == status)
    if before_seq is not None:
        query = query.where(deliveries.c.seq < before_seq)
    query = query.order_by(deliveries.c.seq.desc()).limit(limit)
    return [DeliveryRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def attempts_of(conn: AsyncConnection, delivery_seqs: Sequence[int]) -> list[AttemptRecord]:
    query = (
        select(*attempts.c)
        .where(attempts.c.delivery_seq.in_(delivery_seqs))
        .order_by(attempts.c.delivery_seq, attempts.c.number)
    )
    return [
        AttemptRecord(
            r.delivery_seq, r.number, utc(r.started_at), r.status_code, r.error, r.duration_ms
        )
        for r in (await conn.execute(query)).all()
    ]
