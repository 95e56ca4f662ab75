"""Organizations and API keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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
from gql_wallet.repository.records import _insert, api_keys, organizations, utc


async def get_or_create_organization(conn: AsyncConnection, name: str, now: datetime) -> uuid.UUID:
    await conn.execute(
        _insert(conn, organizations)
        .values(id=uuid.uuid4(), name=name, created_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    org_id: uuid.UUID = (
        await conn.execute(select(organizations.c.id).where(organizations.c.name == name))
    ).scalar_one()
    return org_id


@dataclass(frozen=True)
class ApiKeyRecord:
    id: uuid.UUID
    organization_id: uuid.UUID
    organization: str
    public_id: str
    token_hash: str
    scopes: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class CustomerSessionRecord:
    id: uuid.UUID
    organization_id: uuid.UUID
    customer_id: str
    token_hash: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    key_revoked_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        """Valid now: not expired, not revoked, and the key that made it is not revoked."""
        return self.expires_at > now and self.revoked_at is None and self.key_revoked_at is None


async def insert_api_key(
    conn: AsyncConnection,
    *,
    organization_id: uuid.UUID,
    public_id: str,
    token_hash: str,
    scopes: str,
    now: datetime,
) -> None:
    await conn.execute(
        api_keys.insert().values(
            id=uuid.uuid4(),
            organization_id=organization_id,
            public_id=public_id,
            key_hash=token_hash,
            scopes=scopes,
            created_at=now,
        )
    )


def _api_key_query() -> Any:
    return select(
        api_keys.c.id,
        api_keys.c.organization_id,
        organizations.c.name.label("organization"),
        api_keys.c.public_id,
        api_keys.c.key_hash,
        api_keys.c.scopes,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
    ).join(organizations, organizations.c.id == api_keys.c.organization_id)


def _api_key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        organization_id=row.organization_id,
        organization=row.organization,
        public_id=row.public_id,
        token_hash=row.key_hash,
        scopes=row.scopes,
        created_at=utc(row.created_at),
        revoked_at=utc(row.revoked_at) if row.revoked_at else None,
    )


# Built once: this lookup runs on every request, and building a statement costs more CPU than
# compiling it (compiled forms are cached by SQLAlchemy, the statement objects are not).
_FIND_API_KEY = DriverRead(
    _api_key_query().where(api_keys.c.public_id == bindparam("public_id")), point_read=True
)


# PostgreSQL: the keys of the requests waiting in a process, read in one statement.
_FIND_API_KEYS = DriverRead(
    _api_key_query().where(
        api_keys.c.public_id == any_(bindparam("public_ids", type_=postgresql.ARRAY(String)))
    )
)


_find_api_key_alone, _find_api_keys = keyed_reads(_FIND_API_KEY, _FIND_API_KEYS, "public_id")


async def find_api_key(database: Database, public_id: str) -> ApiKeyRecord | None:
    """The key with this public id.

    On PostgreSQL the read goes in a group read (`Database.run_grouped`) with the other requests'
    key reads waiting in this process: one statement (`public_id = ANY(...)`) for all of them,
    each still read after its request arrived. On SQLite it is read alone."""
    row = await database.run_grouped(_find_api_keys, _find_api_key_alone, public_id)
    return None if row is None else _api_key_record(row)


async def list_api_keys(conn: AsyncConnection) -> list[ApiKeyRecord]:
    rows = await conn.execute(
        _api_key_query().order_by(organizations.c.name, api_keys.c.created_at)
    )
    return [_api_key_record(row) for row in rows]


async def revoke_api_key(conn: AsyncConnection, public_id: str, now: datetime) -> bool:
    """Revoke a key (and so every customer session it made); False if there is no such key."""
    found = await conn.execute(
        update(api_keys)
        .where(api_keys.c.public_id == public_id)
        .values(revoked_at=func.coalesce(api_keys.c.revoked_at, now))
        .returning(api_keys.c.id)
    )
    return found.first() is not None


async def count_api_keys(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(api_keys))).scalar_one())
