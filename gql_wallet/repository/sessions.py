"""Customer sessions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    String,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.db import Database
from gql_wallet.repository.driver import DriverRead, keyed_reads
from gql_wallet.repository.keys import CustomerSessionRecord
from gql_wallet.repository.records import api_keys, customer_sessions, utc


def _session_record(row: Any, key_revoked_at: datetime | None = None) -> CustomerSessionRecord:
    return CustomerSessionRecord(
        id=row.id,
        organization_id=row.organization_id,
        customer_id=row.customer_id,
        token_hash=row.token_hash,
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        revoked_at=utc(row.revoked_at) if row.revoked_at else None,
        key_revoked_at=utc(key_revoked_at) if key_revoked_at else None,
    )


async def insert_customer_session(
    conn: AsyncConnection,
    *,
    organization_id: uuid.UUID,
    api_key_id: uuid.UUID,
    customer_id: str,
    public_id: str,
    token_hash: str,
    now: datetime,
    expires_at: datetime,
) -> CustomerSessionRecord:
    row = (
        await conn.execute(
            customer_sessions.insert()
            .values(
                id=uuid.uuid4(),
                organization_id=organization_id,
                api_key_id=api_key_id,
                customer_id=customer_id,
                public_id=public_id,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(*customer_sessions.c)
        )
    ).one()
    return _session_record(row)


def _session_query() -> Any:
    return select(*customer_sessions.c, api_keys.c.revoked_at.label("key_revoked_at")).join(
        api_keys, api_keys.c.id == customer_sessions.c.api_key_id
    )


# Like the API key reads: built once, on the driver's connection (on SQLite on the event loop's
# thread), and on PostgreSQL the sessions of the requests waiting in a process in one statement.
_FIND_SESSION = DriverRead(
    _session_query().where(customer_sessions.c.public_id == bindparam("public_id")),
    point_read=True,
)


_FIND_SESSIONS = DriverRead(
    _session_query().where(
        customer_sessions.c.public_id
        == any_(bindparam("public_ids", type_=postgresql.ARRAY(String)))
    )
)


_find_session_alone, _find_sessions = keyed_reads(_FIND_SESSION, _FIND_SESSIONS, "public_id")


async def find_customer_session(database: Database, public_id: str) -> CustomerSessionRecord | None:
    """The session with this public id, with its API key's revocation time. Read as
    `find_api_key` reads a key: in a group read on PostgreSQL, each still read after its request
    arrived; on SQLite alone, on the event loop's thread."""
    row = await database.run_grouped(_find_sessions, _find_session_alone, public_id)
    return None if row is None else _session_record(row, row.key_revoked_at)


async def revoke_customer_session(
    conn: AsyncConnection, organization_id: uuid.UUID, session_id: uuid.UUID, now: datetime
) -> CustomerSessionRecord | None:
    row = (
        await conn.execute(
            update(customer_sessions)
            .where(
                customer_sessions.c.id == session_id,
                customer_sessions.c.organization_id == organization_id,
            )
            .values(revoked_at=func.coalesce(customer_sessions.c.revoked_at, now))
            .returning(*customer_sessions.c)
        )
    ).first()
    return _session_record(row) if row else None
