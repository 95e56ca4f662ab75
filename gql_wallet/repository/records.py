"""The tables and the records the stores hand up: one place for each row's shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Row,
    Table,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

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

    @classmethod
    def from_row(cls, row: Row[Any, Any, Any, Any, Any, Any, Any, Any]) -> WalletRecord:
        return cls(
            row.seq,
            row.id,
            row.organization_id,
            row.customer_id,
            row.currency,
            row.balance,
            utc(row.created_at),
            utc(row.modified_at),
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


def now_utc() -> datetime:
    return datetime.now(UTC)
