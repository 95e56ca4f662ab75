"""The tables and the records the stores hand up: one place for each row's shape."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Row,
    Table,
    any_,
    bindparam,
    false,
    func,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from gql_wallet.models import (
    ApiKey,
    CreditAllocation,
    CreditBlock,
    CustomerSession,
    HoldReservation,
    IdempotencyKey,
    Organization,
    Wallet,
    WalletHold,
    WalletTransaction,
)

wallets: Table = Wallet.__table__  # type: ignore[attr-defined]


transactions: Table = WalletTransaction.__table__  # type: ignore[attr-defined]


idempotency_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]


api_keys: Table = ApiKey.__table__  # type: ignore[attr-defined]


organizations: Table = Organization.__table__  # type: ignore[attr-defined]


customer_sessions: Table = CustomerSession.__table__  # type: ignore[attr-defined]


credit_blocks: Table = CreditBlock.__table__  # type: ignore[attr-defined]


credit_allocations: Table = CreditAllocation.__table__  # type: ignore[attr-defined]


wallet_holds: Table = WalletHold.__table__  # type: ignore[attr-defined]


hold_reservations: Table = HoldReservation.__table__  # type: ignore[attr-defined]


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their offset; every value we store is UTC."""
    if value.tzinfo is UTC:  # asyncpg's (a copy would be equal)
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class WalletRecord(NamedTuple):
    """A wallets row. Also the source of the GraphQL `CustomerWallet`, whose fields read these
    attributes as they are (no copy per row: tests/test_execution.py checks the names)."""

    seq: int
    id: uuid.UUID
    organization_id: uuid.UUID
    customer_id: str
    currency: str
    balance: int
    created_at: datetime
    modified_at: datetime
    held_balance: int  # what its open holds reserve
    # An expiry of its credits or holds is due by the database's clock at the read (next_expiry_at has
    # passed): the ledger writes it before the wallet is shown (ledger.service.fresh_wallets).
    expiry_due: bool

    @classmethod
    def from_row(cls, row: Row[Any]) -> WalletRecord:
        return cls(
            row.seq,
            row.id,
            row.organization_id,
            row.customer_id,
            row.currency,
            row.balance,
            utc(row.created_at),
            utc(row.modified_at),
            row.held_balance,
            bool(row.expiry_due),
        )


class TransactionRecord(NamedTuple):
    """A wallet_transactions row; also the source of the GraphQL `WalletTransaction`."""

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
    reverses_seq: int | None  # a REFUND's charge, a REVERSAL's top-up or grant
    held_after: int  # the wallet's held balance right after it
    metadata: str  # canonical JSON, "{}" for none (money.canonical_metadata)

    @classmethod
    def from_row(cls, row: Row[Any]) -> TransactionRecord:
        return cls(
            row.seq,
            row.id,
            row.wallet_seq,
            row.type,
            row.amount,
            row.balance_after,
            row.description,
            row.reference,
            row.idempotency_key,
            utc(row.created_at),
            row.reverses_seq,
            row.held_after,
            row.metadata,
        )


class CreditBlockRecord(NamedTuple):
    """A credit_blocks row; also the source of the GraphQL `WalletCredit`."""

    seq: int
    id: uuid.UUID
    wallet_seq: int
    source_seq: int
    category: str
    priority: int
    expires_at: datetime | None
    burn_key: str
    amount: int
    remaining: int
    created_at: datetime
    held: int  # what open holds reserve from `remaining`
    expired: bool  # its expiry has passed, by the database's clock at the read

    @classmethod
    def from_row(cls, row: Any) -> CreditBlockRecord:
        return cls(
            row.seq,
            row.id,
            row.wallet_seq,
            row.source_seq,
            row.category,
            row.priority,
            None if row.expires_at is None else utc(row.expires_at),
            row.burn_key,
            row.amount,
            row.remaining,
            utc(row.created_at),
            row.held,
            bool(row.expired),
        )


class HoldRecord(NamedTuple):
    """A wallet_holds row; also the source of the GraphQL `WalletHold`."""

    seq: int
    id: uuid.UUID
    organization_id: uuid.UUID
    wallet_seq: int
    amount: int
    captured_amount: int
    status: str  # as stored: an OPEN hold past expires_at is EXPIRED (`expired`)
    expires_at: datetime
    resolved_at: datetime | None
    description: str | None
    reference: str | None
    idempotency_key: str
    created_at: datetime
    capture_seq: int | None
    metadata: str  # canonical JSON, "{}" for none
    expired: bool  # OPEN and past its expiry, by the database's clock at the read

    @classmethod
    def from_row(cls, row: Any) -> HoldRecord:
        return cls(
            row.seq,
            row.id,
            row.organization_id,
            row.wallet_seq,
            row.amount,
            row.captured_amount,
            row.status,
            utc(row.expires_at),
            None if row.resolved_at is None else utc(row.resolved_at),
            row.description,
            row.reference,
            row.idempotency_key,
            utc(row.created_at),
            row.capture_seq,
            row.metadata,
            bool(row.expired),
        )


class AllocationRecord(NamedTuple):
    entry_seq: int
    ordinal: int
    block_seq: int
    amount: int


@dataclass(frozen=True)
class IdempotencyRecord:
    request: str
    transaction_seq: int | None
    error_code: str | None
    hold_seq: int | None = None


class db_now(FunctionElement[datetime]):
    """The database's clock at the statement: the time every expiry is decided by."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now)
def _db_now_default(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CURRENT_TIMESTAMP"  # only for printing a statement: each database has its own


@compiles(db_now, "postgresql")
def _db_now_postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    # The text form SQLAlchemy stores SQLite datetimes in (UTC), to the millisecond.
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


_WALLET_COLUMNS = (
    wallets.c.seq,
    wallets.c.id,
    wallets.c.organization_id,
    wallets.c.customer_id,
    wallets.c.currency,
    wallets.c.balance,
    wallets.c.created_at,
    wallets.c.modified_at,
    wallets.c.held_balance,
    func.coalesce(wallets.c.next_expiry_at <= db_now(), false(), type_=Boolean()).label(
        "expiry_due"
    ),
)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """A dialect-specific INSERT, so that ON CONFLICT is available on both databases."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def among(
    conn: AsyncConnection | Connection, column: ColumnElement[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """`column IN values`. On PostgreSQL as `= ANY(array)`: one parameter, so the statement's
    text, prepared once per connection, is the same for any number of values (an IN list is
    rendered, and prepared by the server, anew for each number)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(list(values))


def now_utc() -> datetime:
    return datetime.now(UTC)
