"""All SQL of gql_wallet. Callers pass a connection from db.py (one transaction per write).

Balances change only through one conditional `UPDATE ... RETURNING` per write: the condition
(enough funds, room below the limit) is checked by the database against the row it locks, so
concurrent writers can neither lose an update nor take a balance below zero, on any dialect.

The statements of a top-up or charge and of its replay are plain functions of a synchronous
`Connection`: SQLite runs a whole write in its writer thread (db.run_write), and async callers
run them with `await conn.run_sync(fn, ...)`, which costs what `await conn.execute(...)` costs
(SQLAlchemy's async layer is that same greenlet hop around the synchronous call).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import orjson
from sqlalchemy import (
    Dialect,
    Integer,
    Row,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import TextualSelect

from gql_wallet import metrics
from gql_wallet.db import DriverConnection, checked_out, run_grouped, sqlite_reader
from gql_wallet.models import (
    ApiKey,
    CustomerSession,
    IdempotencyKey,
    Organization,
    Wallet,
    WalletTransaction,
)

wallets: Table = Wallet.__table__  # type: ignore[attr-defined]
transactions: Table = WalletTransaction.__table__  # type: ignore[attr-defined]
idempotency_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
api_keys: Table = ApiKey.__table__  # type: ignore[attr-defined]
organizations: Table = Organization.__table__  # type: ignore[attr-defined]
customer_sessions: Table = CustomerSession.__table__  # type: ignore[attr-defined]


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their offset; every value we store is UTC."""
    if value.tzinfo is UTC:  # asyncpg's (a copy would be equal)
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class WalletRecord:
    seq: int
    id: uuid.UUID
    organization_id: uuid.UUID
    customer_id: str
    currency: str
    balance: int
    created_at: datetime
    modified_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any, Any, Any, Any, Any, Any, Any, Any]) -> WalletRecord:
        return cls(
            seq=row.seq,
            id=row.id,
            organization_id=row.organization_id,
            customer_id=row.customer_id,
            currency=row.currency,
            balance=row.balance,
            created_at=utc(row.created_at),
            modified_at=utc(row.modified_at),
        )


@dataclass(frozen=True)
class TransactionRecord:
    seq: int
    id: uuid.UUID
    wallet_seq: int
    type: str
    amount: int
    balance_after: int
    description: str | None
    reference: str | None
    idempotency_key: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> TransactionRecord:
        return cls(
            seq=row.seq,
            id=row.id,
            wallet_seq=row.wallet_seq,
            type=row.type,
            amount=row.amount,
            balance_after=row.balance_after,
            description=row.description,
            reference=row.reference,
            idempotency_key=row.idempotency_key,
            created_at=utc(row.created_at),
        )


@dataclass(frozen=True)
class IdempotencyRecord:
    request: str
    transaction_seq: int | None
    error_code: str | None


_WALLET_COLUMNS = (
    wallets.c.seq,
    wallets.c.id,
    wallets.c.organization_id,
    wallets.c.customer_id,
    wallets.c.currency,
    wallets.c.balance,
    wallets.c.created_at,
    wallets.c.modified_at,
)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """A dialect-specific INSERT, so that ON CONFLICT is available on both databases."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# --- organizations and API keys -------------------------------------------------------------


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


@dataclass(frozen=True)
class _DriverForm:
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # (name, bind processor)
    results: tuple[Callable[[Any], Any] | None, ...]  # a result processor per column
    row: Any  # a namedtuple of the selected columns' names, read like SQLAlchemy's Row


def _driver_form(statement: Any, row: Any, dialect: Dialect) -> _DriverForm:
    """The SQL text SQLAlchemy compiles for `statement`, with the type processors it would
    apply to each bound value and to each column of the result."""
    compiled = statement.compile(dialect=dialect)
    binds = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in compiled.positiontup or ()
    )
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.exported_columns
    )
    return _DriverForm(compiled.string, binds, results, row)


def _driver_arguments(form: _DriverForm, parameters: dict[str, Any]) -> list[Any]:
    return [
        parameters[name] if process is None else process(parameters[name])
        for name, process in form.binds
    ]


def _driver_rows(form: _DriverForm, rows: Any) -> list[Any]:
    results, make = form.results, form.row._make
    return [
        make(
            value if process is None else process(value)
            for value, process in zip(row, results, strict=True)
        )
        for row in rows
    ]


class DriverRead:
    """A hot SELECT sent on the driver's own connection, past SQLAlchemy's execution layers.

    On the two reads of every lookup (the API key, the customer's wallets) SQLAlchemy's execute
    path cost more CPU than the query, and through aiosqlite it made four hops to the
    connection's thread per statement (cursor, execute, fetchall, cursor close) where one does.
    SQLAlchemy still compiles the statement (once per dialect) and its type processors convert
    every value both ways, so the values are exactly those `conn.execute` returns.

    Run it only on a connection from `db.driver_connection` or a `db.OnDemandConnection`: no
    SQLAlchemy transaction is open on it, so the statement is its own implicit transaction, as
    in `db.read_connection`. A point read on SQLite takes no pooled connection at all.
    """

    def __init__(self, statement: Select[Any] | TextualSelect, *, point_read: bool = False) -> None:
        self.statement = statement
        # An indexed SELECT of a few rows, which on SQLite runs on the event loop's thread.
        self.point_read = point_read
        names = [column.name for column in statement.selected_columns]
        self._row = namedtuple("DriverRow", names)  # type: ignore[misc]
        self._forms: dict[str, _DriverForm] = {}

    def _form(self, dialect: Dialect) -> _DriverForm:
        form = self._forms.get(dialect.name)
        if form is None:
            form = self._forms[dialect.name] = _driver_form(self.statement, self._row, dialect)
        return form

    async def fetchall(self, conn: DriverConnection, parameters: dict[str, Any]) -> list[Any]:
        form = self._form(conn.dialect)
        arguments = _driver_arguments(form, parameters)
        rows: Any = None
        reader = sqlite_reader(conn.engine) if self.point_read else None
        if reader is not None:
            rows = reader.read(form.sql, arguments)  # on this thread (db.SqliteReader)
        if rows is None:
            rows = await self._driver_fetch(conn, form.sql, arguments)
        return _driver_rows(form, rows)

    @staticmethod
    async def _driver_fetch(on: DriverConnection, sql: str, arguments: list[Any]) -> Any:
        conn = await checked_out(on)
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            if conn.dialect.name == "sqlite":
                return await driver.execute_fetchall(sql, arguments)  # one thread hop
            return await driver.fetch(sql, *arguments)
        except BaseException:
            # SQLAlchemy would have checked the error for a lost connection and dropped it from
            # the pool; without it here, no connection that failed a statement is used again.
            await conn.invalidate()
            raise


class DriverWrite:
    """A statement of a SQLite top-up or charge, sent on sqlite3's own connection in the writer
    thread (`db._SqliteWriterQueue`), past SQLAlchemy's execution layers.

    The writer thread holds the database's write lock while it runs a group's writes, so the
    CPU each write spends there bounds how many writes per second the file takes, and
    `Connection.execute` spends more of it than SQLite itself (bench/PROFILE.md). As with `DriverRead`, SQLAlchemy still compiles
    the statement (once) and its type processors convert every value both ways, so the rows are
    the values `conn.execute` returns. On any other connection (PostgreSQL, or aiosqlite's for
    an in-memory database) the statement goes through `conn.execute` unchanged.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        names = [column.name for column in statement.exported_columns]
        self._row = namedtuple("DriverRow", names)  # type: ignore[misc]
        self._form: _DriverForm | None = None

    def execute(self, conn: Connection, parameters: dict[str, Any]) -> list[Any]:
        """The statement's rows (none without RETURNING), in the connection's transaction."""
        driver = conn.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            return list(conn.execute(self.statement, parameters))
        form = self._form
        if form is None:
            form = self._form = _driver_form(self.statement, self._row, conn.dialect)
        return _driver_rows(form, driver.execute(form.sql, _driver_arguments(form, parameters)))


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


async def _find_api_key_alone(conn: DriverConnection, public_id: str) -> Any:
    rows = await _FIND_API_KEY.fetchall(conn, {"public_id": public_id})
    return rows[0] if rows else None


async def _find_api_keys(conn: AsyncConnection, public_ids: list[str]) -> list[Any]:
    rows = await _FIND_API_KEYS.fetchall(conn, {"public_ids": sorted(set(public_ids))})
    found = {row.public_id: row for row in rows}
    return [found.get(public_id) for public_id in public_ids]


async def find_api_key(conn: DriverConnection, public_id: str) -> ApiKeyRecord | None:
    """The key with this public id; `conn` is a `db.DriverConnection`.

    On PostgreSQL the read goes in a group read (`db.run_grouped`) with the other requests'
    key reads waiting in this process: one statement (`public_id = ANY(...)`) for all of them,
    each still read after its request arrived. On SQLite `conn` serves it alone."""
    row = await run_grouped(conn.engine, _find_api_keys, _find_api_key_alone, public_id, conn=conn)
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


# --- customer sessions ----------------------------------------------------------------------


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


async def _find_session_alone(conn: DriverConnection, public_id: str) -> Any:
    rows = await _FIND_SESSION.fetchall(conn, {"public_id": public_id})
    return rows[0] if rows else None


async def _find_sessions(conn: AsyncConnection, public_ids: list[str]) -> list[Any]:
    rows = await _FIND_SESSIONS.fetchall(conn, {"public_ids": sorted(set(public_ids))})
    found = {row.public_id: row for row in rows}
    return [found.get(public_id) for public_id in public_ids]


async def find_customer_session(
    conn: DriverConnection, public_id: str
) -> CustomerSessionRecord | None:
    """The session with this public id, with its API key's revocation time; `conn` is a
    `db.DriverConnection`. Read as `find_api_key` reads a key: in a group read on PostgreSQL,
    each still read after its request arrived; on SQLite alone, on the event loop's thread."""
    row = await run_grouped(conn.engine, _find_sessions, _find_session_alone, public_id, conn=conn)
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


# --- idempotency ----------------------------------------------------------------------------


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
    return IdempotencyRecord(row.request, row.transaction_seq, row.error_code)


_KEY_MATCHES = and_(
    idempotency_keys.c.organization_id == bindparam("p_organization_id"),
    idempotency_keys.c.key == bindparam("p_key"),
)
_IDEMPOTENCY_RECORD = select(
    idempotency_keys.c.request,
    idempotency_keys.c.transaction_seq,
    idempotency_keys.c.error_code,
).where(_KEY_MATCHES)
_RECORD_OUTCOME = DriverWrite(
    update(idempotency_keys)
    .where(_KEY_MATCHES)
    .values(
        transaction_seq=bindparam("p_transaction_seq"),
        error_code=bindparam("p_error_code"),
    )
)


def record_outcome(
    conn: Connection,
    organization_id: uuid.UUID,
    key: str,
    *,
    transaction_seq: int | None = None,
    error_code: str | None = None,
) -> None:
    _RECORD_OUTCOME.execute(
        conn,
        {
            "p_organization_id": organization_id,
            "p_key": key,
            "p_transaction_seq": transaction_seq,
            "p_error_code": error_code,
        },
    )


# --- wallets: writes ------------------------------------------------------------------------


def insert_wallet_if_missing(
    conn: Connection,
    organization_id: uuid.UUID,
    customer_id: str,
    currency: str,
    now: datetime,
) -> None:
    conn.execute(
        _INSERT_WALLET[conn.dialect.name],
        {
            "p_id": uuid.uuid4(),
            "p_organization_id": organization_id,
            "p_customer_id": customer_id,
            "p_currency": currency,
            "p_now": now,
        },
    )


def _insert_wallet(dialect: Any) -> Any:
    return (
        dialect.insert(wallets)
        .values(
            id=bindparam("p_id"),
            organization_id=bindparam("p_organization_id"),
            customer_id=bindparam("p_customer_id"),
            currency=bindparam("p_currency"),
            balance=0,
            created_at=bindparam("p_now"),
            modified_at=bindparam("p_now"),
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "customer_id", "currency"])
    )


_INSERT_WALLET = {"postgresql": _insert_wallet(postgresql), "sqlite": _insert_wallet(sqlite)}


def change_balance(
    conn: Connection,
    organization_id: uuid.UUID,
    customer_id: str,
    currency: str,
    delta: int,
    floor: int,
    ceiling: int,
    now: datetime,
) -> WalletRecord | None:
    """Add `delta` (signed) to the wallet's balance if the result stays in floor..ceiling,
    checked against the row the UPDATE locks.

    Returns the updated wallet, or None when there is no such wallet or the condition failed.
    """
    params = {
        "w_organization_id": organization_id,
        "w_customer_id": customer_id,
        "w_currency": currency,
        "w_delta": delta,
        "w_floor": floor,
        "w_ceiling": ceiling,
        "w_now": now,
    }
    rows = _CHANGE_BALANCE.execute(conn, params)
    return WalletRecord.from_row(rows[0]) if rows else None


# Built once, like every statement of a top-up or charge: see _FIND_API_KEY. Bind names must
# not be column names of an UPDATE's table; hence the w_ prefix.
_CHANGE_BALANCE = DriverWrite(
    update(wallets)
    .where(
        wallets.c.organization_id == bindparam("w_organization_id"),
        wallets.c.customer_id == bindparam("w_customer_id"),
        wallets.c.currency == bindparam("w_currency"),
        (wallets.c.balance + bindparam("w_delta")).between(
            bindparam("w_floor"), bindparam("w_ceiling")
        ),
    )
    .values(balance=wallets.c.balance + bindparam("w_delta"), modified_at=bindparam("w_now"))
    .returning(*_WALLET_COLUMNS)
)


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


@dataclass(frozen=True)
class BalanceChangeOutcome:
    """What `gql_wallet_balance_change` did (migrations/sql/, newest version): see
    `apply_balance_change`."""

    outcome: str  # applied | refused | taken
    refusal_code: str | None
    wallet: WalletRecord | None
    transaction: TransactionRecord | None


_BALANCE_CHANGE_PARAMS = (
    "organization_id",
    "idempotency_key",
    "request",
    "customer_id",
    "currency",
    "type",
    "delta",
    "floor",
    "ceiling",
    "description",
    "reference",
    "create_missing",
    "wallet_id",
    "entry_id",
    "now",
    "channel",
    "missing_code",
    "refused_code",
)


def _outcome_columns() -> tuple[list[str], list[Any]]:
    """The function's outcome with the wallet and entry flattened into typed columns
    (w_<column>, t_<column>), so that SQLAlchemy converts them like table rows."""
    columns = ["r.outcome", "r.refusal_code"]
    typed = [column("outcome", String()), column("refusal_code", String())]
    for prefix, composite, table in (("w", "wallet", wallets), ("t", "entry", transactions)):
        for col in table.c:
            columns.append(f"(r.{composite}).{col.name} AS {prefix}_{col.name}")
            typed.append(column(f"{prefix}_{col.name}", col.type))
    return columns, typed


def _balance_change_call() -> Any:
    """SELECT gql_wallet_balance_change(...) for one write."""
    columns, typed = _outcome_columns()
    arguments = ", ".join(f":{name}" for name in _BALANCE_CHANGE_PARAMS)
    # Only column names of our own tables and fixed parameter names go into the text.
    sql = f"SELECT {', '.join(columns)} FROM gql_wallet_balance_change({arguments}) AS r"  # noqa: S608
    return text(sql).columns(*typed)


# The SQL types of the parameters, for the group's JSON records (`_balance_changes_call`).
_BALANCE_CHANGE_TYPES = {
    "organization_id": "uuid",
    "delta": "bigint",
    "floor": "bigint",
    "ceiling": "bigint",
    "create_missing": "boolean",
    "wallet_id": "uuid",
    "entry_id": "uuid",
    "now": "timestamptz",
    "i": "integer",
}


def _balance_changes_call() -> Any:
    """Several writes in one statement (one transaction): the same function, called for each
    record of a JSON array in turn (a nested loop over the array, in its order), so each call
    sees the writes before it. `i` is the record's position in the caller's list."""
    columns, typed = _outcome_columns()
    fields = ", ".join(
        f"{name} {_BALANCE_CHANGE_TYPES.get(name, 'text')}"
        for name in (*_BALANCE_CHANGE_PARAMS, "i")
        if name != "channel"
    )
    arguments = ", ".join(
        ":channel" if name == "channel" else f"c.{name}" for name in _BALANCE_CHANGE_PARAMS
    )
    # As above: only fixed names go into the text; the writes travel as one JSON parameter.
    sql = (
        f"SELECT c.i, {', '.join(columns)} "  # noqa: S608
        f"FROM jsonb_to_recordset(CAST(:calls AS jsonb)) AS c({fields}) "
        f"CROSS JOIN LATERAL gql_wallet_balance_change({arguments}) AS r"
    )
    return text(sql).columns(column("i", Integer()), *typed)


# Built once, like the other statements of a write; sent on the driver's own connection (see
# DriverRead: the call is a SELECT, and outside a transaction it is its own, in autocommit).
_BALANCE_CHANGE = DriverRead(_balance_change_call())
_BALANCE_CHANGES = DriverRead(_balance_changes_call())


# A write's wallet and ledger entry, read from its outcome row's w_ and t_ columns in the
# records' field order, one attrgetter call each.
_OUTCOME_WALLET = attrgetter(*(f"w_{field.name}" for field in fields(WalletRecord)))
_OUTCOME_ENTRY = attrgetter(*(f"t_{field.name}" for field in fields(TransactionRecord)))


def _outcome(row: Any) -> BalanceChangeOutcome:
    wallet = transaction = None
    if row.w_seq is not None:
        seq, id_, organization_id, customer_id, currency, balance, created_at, modified_at = (
            _OUTCOME_WALLET(row)
        )
        wallet = WalletRecord(
            seq, id_, organization_id, customer_id, currency, balance, utc(created_at),
            utc(modified_at),
        )  # fmt: skip
    if row.t_seq is not None:
        (
            seq, id_, wallet_seq, type_, amount, balance_after, description, reference,
            idempotency_key, created_at,
        ) = _OUTCOME_ENTRY(row)  # fmt: skip
        transaction = TransactionRecord(
            seq, id_, wallet_seq, type_, amount, balance_after, description, reference,
            idempotency_key, utc(created_at),
        )  # fmt: skip
    return BalanceChangeOutcome(row.outcome, row.refusal_code, wallet, transaction)


async def send_balance_change(conn: DriverConnection, call: dict[str, Any]) -> BalanceChangeOutcome:
    """One write alone: `call` holds the function's parameters (see `apply_balance_change`)."""
    rows = await _BALANCE_CHANGE.fetchall(conn, {**call, "channel": LEDGER_CHANNEL})
    return _outcome(rows[0])


def _lock_order(call: dict[str, Any]) -> tuple[str, str, str]:
    return (str(call["organization_id"]), call["customer_id"], call["currency"])


async def send_balance_changes(
    conn: AsyncConnection, calls: list[dict[str, Any]]
) -> list[BalanceChangeOutcome]:
    """Several writes in one statement and one transaction; their outcomes, in `calls`' order.

    The calls run in the order of their wallets (stable for writes of one wallet), so that
    groups sent at the same time by other processes take the wallets' row locks in one order
    and cannot deadlock on them."""
    order = sorted(range(len(calls)), key=lambda i: _lock_order(calls[i]))
    records = [{**calls[i], "i": i} for i in order]
    rows = await _BALANCE_CHANGES.fetchall(
        conn, {"calls": orjson.dumps(records, default=str).decode(), "channel": LEDGER_CHANNEL}
    )
    outcomes: list[BalanceChangeOutcome | None] = [None] * len(calls)
    for row in rows:
        outcomes[row.i] = _outcome(row)
    if any(outcome is None for outcome in outcomes):
        raise RuntimeError("the group statement did not answer every write")
    return outcomes  # type: ignore[return-value]


async def apply_balance_change(engine: AsyncEngine, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a whole balance change in one statement, by the function of migrations/sql/
    (its newest version), in a group commit with the other writes waiting in this process
    (`db.run_grouped`: one statement and one transaction for the group, each write with its own
    outcome). `call` holds the function's parameters but the IDs it makes for a new wallet and
    entry (ledger.store.BalanceChangeCall)."""
    return await run_grouped(
        engine,
        send_balance_changes,
        send_balance_change,
        {**call, "wallet_id": uuid.uuid4(), "entry_id": uuid.uuid4()},
        observe=metrics.WRITE_GROUP_SIZE.observe,
        senders=1,  # one group in flight: larger groups, fewer commits (see db._PgGroupCommit)
    )


# --- wallets: reads -------------------------------------------------------------------------


def get_wallet_by_owner(
    conn: Connection, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WalletRecord | None:
    params = {
        "p_organization_id": organization_id,
        "p_customer_id": customer_id,
        "p_currency": currency,
    }
    row = conn.execute(_WALLET_BY_OWNER, params).first()
    return WalletRecord.from_row(row) if row else None


_WALLET_BY_OWNER = select(*_WALLET_COLUMNS).where(
    wallets.c.organization_id == bindparam("p_organization_id"),
    wallets.c.customer_id == bindparam("p_customer_id"),
    wallets.c.currency == bindparam("p_currency"),
)


async def get_wallet_by_id(
    conn: AsyncConnection,
    organization_id: uuid.UUID,
    wallet_id: uuid.UUID,
    *,
    customer_id: str | None = None,
) -> WalletRecord | None:
    query = select(*_WALLET_COLUMNS).where(
        wallets.c.id == wallet_id, wallets.c.organization_id == organization_id
    )
    if customer_id is not None:
        query = query.where(wallets.c.customer_id == customer_id)
    row = (await conn.execute(query)).first()
    return WalletRecord.from_row(row) if row else None


async def get_wallets_by_seq(conn: AsyncConnection, seqs: Sequence[int]) -> list[WalletRecord]:
    rows = (await conn.execute(select(*_WALLET_COLUMNS).where(wallets.c.seq.in_(seqs)))).all()
    return [WalletRecord.from_row(row) for row in rows]


_CUSTOMER_WALLETS = DriverRead(
    select(*_WALLET_COLUMNS)
    .where(
        wallets.c.organization_id == bindparam("organization_id"),
        wallets.c.customer_id == bindparam("customer_id"),
    )
    .order_by(wallets.c.seq),
    point_read=True,  # the (organization, customer, currency) unique index; a few rows
)


# PostgreSQL: the wallets of the customers that the requests waiting in a process ask for, in
# one statement; `i` numbers the (organization, customer) pairs asked for.
_CUSTOMERS_WALLETS = DriverRead(
    select(column("i", Integer()), *_WALLET_COLUMNS)
    .select_from(
        wallets.join(
            text(
                "unnest(CAST(:organization_ids AS uuid[]), CAST(:customer_ids AS text[])) "
                "WITH ORDINALITY AS q(organization_id, customer_id, i)"
            ),
            text(
                "wallets.organization_id = q.organization_id AND wallets.customer_id = q.customer_id"
            ),
        )
    )
    .order_by(wallets.c.seq)
)


async def _customer_wallets_alone(
    conn: DriverConnection, owner: tuple[uuid.UUID, str]
) -> list[Any]:
    return await _CUSTOMER_WALLETS.fetchall(
        conn, {"organization_id": owner[0], "customer_id": owner[1]}
    )


async def _customers_wallets(
    conn: AsyncConnection, owners: list[tuple[uuid.UUID, str]]
) -> list[list[Any]]:
    asked = list(dict.fromkeys(owners))  # each pair once, in order
    rows = await _CUSTOMERS_WALLETS.fetchall(
        conn,
        {
            "organization_ids": [organization_id for organization_id, _ in asked],
            "customer_ids": [customer_id for _, customer_id in asked],
        },
    )
    found: dict[tuple[uuid.UUID, str], list[Any]] = {owner: [] for owner in asked}
    for row in rows:  # in seq order, so each customer's list is too
        found[asked[row.i - 1]].append(row)
    return [found[owner] for owner in owners]


async def list_customer_wallets(
    conn: DriverConnection, organization_id: uuid.UUID, customer_id: str
) -> list[WalletRecord]:
    """A customer's wallets, oldest first: `list_wallets` for the hot path, built once;
    `conn` is a `db.DriverConnection`. On PostgreSQL the read goes in a group read
    with the other requests' (see `find_api_key`)."""
    owner = (organization_id, customer_id)
    rows = await run_grouped(
        conn.engine, _customers_wallets, _customer_wallets_alone, owner, conn=conn
    )
    return [WalletRecord.from_row(row) for row in rows]


async def list_wallets(
    conn: AsyncConnection,
    organization_id: uuid.UUID,
    *,
    customer_id: str | None = None,
    currency: str | None = None,
    after_seq: int | None = None,
    limit: int | None = None,
) -> list[WalletRecord]:
    """The organization's wallets, oldest first, keyset-paginated by `seq`."""
    query = select(*_WALLET_COLUMNS).where(wallets.c.organization_id == organization_id)
    if customer_id is not None:
        query = query.where(wallets.c.customer_id == customer_id)
    if currency is not None:
        query = query.where(wallets.c.currency == currency)
    if after_seq is not None:
        query = query.where(wallets.c.seq > after_seq)
    query = query.order_by(wallets.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [WalletRecord.from_row(row) for row in (await conn.execute(query)).all()]


# --- ledger: reads --------------------------------------------------------------------------


def get_transaction_by_seq(conn: Connection, seq: int) -> TransactionRecord:
    return TransactionRecord.from_row(conn.execute(_TRANSACTION_BY_SEQ, {"p_seq": seq}).one())


_TRANSACTION_BY_SEQ = select(*transactions.c).where(transactions.c.seq == bindparam("p_seq"))


async def list_transactions(
    conn: AsyncConnection, wallet_seq: int, *, before_seq: int | None, limit: int
) -> list[TransactionRecord]:
    """A wallet's ledger, newest first, keyset-paginated by `seq`."""
    query = select(*transactions.c).where(transactions.c.wallet_seq == wallet_seq)
    if before_seq is not None:
        query = query.where(transactions.c.seq < before_seq)
    query = query.order_by(transactions.c.seq.desc()).limit(limit)
    return [TransactionRecord.from_row(row) for row in (await conn.execute(query)).all()]


# --- live changes ---------------------------------------------------------------------------

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
) -> dict[int, int]:
    """wallet seq -> seq of its newest ledger entry (0 if none), for a customer's wallets."""
    rows = await conn.execute(
        select(wallets.c.seq, func.coalesce(func.max(transactions.c.seq), 0))
        .select_from(wallets.outerjoin(transactions, transactions.c.wallet_seq == wallets.c.seq))
        .where(wallets.c.organization_id == organization_id, wallets.c.customer_id == customer_id)
        .group_by(wallets.c.seq)
    )
    return {int(wallet_seq): int(last) for wallet_seq, last in rows}


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


# --- audit ----------------------------------------------------------------------------------


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


def now_utc() -> datetime:
    return datetime.now(UTC)
