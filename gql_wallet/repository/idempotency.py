"""Idempotency keys: claim, read, record the outcome."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gql_wallet.repository.driver import DriverWrite
from gql_wallet.repository.records import IdempotencyRecord, idempotency_keys


def claim_idempotency_key(
    conn: Connection, organization_id: uuid.UUID, key: str, request: str, now: datetime
) -> bool:
    """Claim `key` for this write; False when an earlier write holds it.

    On PostgreSQL a concurrent claim of the same key waits here until the first commits or
    rolls back, so exactly one attempt decides the outcome.
    """
    claimed = _CLAIM_KEY[conn.dialect.name].execute(
        conn,
        {"p_organization_id": organization_id, "p_key": key, "p_request": request, "p_now": now},
    )
    return bool(claimed)


def _claim_key(dialect: Any) -> Any:
    return (
        dialect.insert(idempotency_keys)
        .values(
            organization_id=bindparam("p_organization_id"),
            key=bindparam("p_key"),
            request=bindparam("p_request"),
            created_at=bindparam("p_now"),
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "key"])
        .returning(idempotency_keys.c.key)
    )


# Every statement of a write is built once (see _FIND_API_KEY); ON CONFLICT is per dialect.
_CLAIM_KEY = {
    "postgresql": DriverWrite(_claim_key(postgresql)),
    "sqlite": DriverWrite(_claim_key(sqlite)),
}


def get_idempotency_record(
    conn: Connection, organization_id: uuid.UUID, key: str
) -> IdempotencyRecord:
    params = {"p_organization_id": organization_id, "p_key": key}
    row = conn.execute(_IDEMPOTENCY_RECORD, params).one()
    return IdempotencyRecord(row.request, row.transaction_seq, row.error_code, row.hold_seq)


_KEY_MATCHES = and_(
    idempotency_keys.c.organization_id == bindparam("p_organization_id"),
    idempotency_keys.c.key == bindparam("p_key"),
)


_IDEMPOTENCY_RECORD = select(
    idempotency_keys.c.request,
    idempotency_keys.c.transaction_seq,
    idempotency_keys.c.error_code,
    idempotency_keys.c.hold_seq,
).where(_KEY_MATCHES)


_RECORD_OUTCOME = DriverWrite(
    update(idempotency_keys)
    .where(_KEY_MATCHES)
    .values(
        transaction_seq=bindparam("p_transaction_seq"),
        error_code=bindparam("p_error_code"),
        hold_seq=bindparam("p_hold_seq"),
    )
)


def record_outcome(
    conn: Connection,
    organization_id: uuid.UUID,
    key: str,
    *,
    transaction_seq: int | None = None,
    error_code: str | None = None,
    hold_seq: int | None = None,
) -> None:
    _RECORD_OUTCOME.execute(
        conn,
        {
            "p_organization_id": organization_id,
            "p_key": key,
            "p_transaction_seq": transaction_seq,
            "p_error_code": error_code,
            "p_hold_seq": hold_seq,
        },
    )
