"""Reconciliation reads: a wallet's balance at an instant, its statement over a period, and the
lookups of one entry. Every figure is a sum over the ledger's entries (and, for the split by
category, over the credit blocks they created and the allocations they made), so that a
balance at an instant is what the entries committed by then add up to: CONTRACT part 2,
"Statements"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from gql_wallet.repository import credits
from gql_wallet.repository.entries import ledger_page
from gql_wallet.repository.records import (
    TransactionRecord,
    credit_allocations,
    credit_blocks,
    organizations,
    transactions,
    utc,
    wallets,
)

PAID, PROMOTIONAL = "PAID", "PROMOTIONAL"


class BalanceAt(NamedTuple):
    balance: int
    paid: int
    promotional: int


class TypeTotal(NamedTuple):
    type: str
    total: int
    entries: int


async def balance_at(conn: AsyncConnection, wallet_seq: int, at: datetime) -> BalanceAt:
    """The wallet's balance, and its paid and promotional parts, counting every entry created
    at or before `at`: the blocks those entries created, plus what those entries spent from
    or gave back to them."""
    balance = (
        await conn.execute(
            select(func.coalesce(func.sum(transactions.c.amount), 0)).where(
                transactions.c.wallet_seq == wallet_seq, transactions.c.created_at <= at
            )
        )
    ).scalar_one()
    created = (
        select(credit_blocks.c.category, credit_blocks.c.amount)
        .join(transactions, transactions.c.seq == credit_blocks.c.source_seq)
        .where(credit_blocks.c.wallet_seq == wallet_seq, transactions.c.created_at <= at)
    )
    moved = (
        select(credit_blocks.c.category, credit_allocations.c.amount)
        .join(credit_blocks, credit_blocks.c.seq == credit_allocations.c.block_seq)
        .join(transactions, transactions.c.seq == credit_allocations.c.entry_seq)
        .where(credit_blocks.c.wallet_seq == wallet_seq, transactions.c.created_at <= at)
    )
    parts = created.union_all(moved).subquery()
    by_category = dict(
        (
            await conn.execute(
                select(parts.c.category, func.sum(parts.c.amount)).group_by(parts.c.category)
            )
        ).all()
    )
    return BalanceAt(
        int(balance), int(by_category.get(PAID, 0)), int(by_category.get(PROMOTIONAL, 0))
    )


async def totals_by_type(
    conn: AsyncConnection, wallet_seq: int, start: datetime, end: datetime
) -> list[TypeTotal]:
    """The sum and number of the wallet's entries of each type created after `start` and at
    or before `end`, by type name."""
    query = (
        select(transactions.c.type, func.sum(transactions.c.amount), func.count())
        .where(
            transactions.c.wallet_seq == wallet_seq,
            transactions.c.created_at > start,
            transactions.c.created_at <= end,
        )
        .group_by(transactions.c.type)
        .order_by(transactions.c.type)
    )
    return [TypeTotal(row[0], int(row[1]), int(row[2])) for row in await conn.execute(query)]


class Statement(NamedTuple):
    opening: BalanceAt  # at the period's start
    totals: list[TypeTotal]  # of the entries after the start, up to the end
    closing: BalanceAt  # at its end


async def statement(
    conn: AsyncConnection, wallet_seq: int, start: datetime, end: datetime
) -> Statement:
    """The wallet's statement for the period after `start` up to `end`; in one snapshot when
    `conn` is a read transaction."""
    return Statement(
        await balance_at(conn, wallet_seq, start),
        await totals_by_type(conn, wallet_seq, start, end),
        await balance_at(conn, wallet_seq, end),
    )


def period_page(
    wallet_seq: int,
    before_seq: int | None,
    limit: int,
    start: datetime | None,
    end: datetime | None,
    types: Sequence[str] | None,
    metadata: str | None = None,
) -> Select[tuple[int, ...]]:
    """A page of the wallet's entries, newest first, keyset-paginated by seq, of those created
    after `start`, at or before `end`, of one of `types`, whose metadata has every key and
    value of `metadata` (canonical JSON) (None: no such bound)."""
    query = ledger_page(wallet_seq, before_seq, limit)
    if start is not None:
        query = query.where(transactions.c.created_at > start)
    if end is not None:
        query = query.where(transactions.c.created_at <= end)
    if types is not None:
        query = query.where(transactions.c.type.in_(types))
    if metadata is not None:
        query = query.where(_MetadataContains(transactions.c.metadata, metadata))
    return query


class _MetadataContains(FunctionElement[bool]):
    """(stored, match): the stored metadata (JSON text) has every key of `match` (JSON text)
    with its value. Compiled for each database below."""

    type = Boolean()
    inherit_cache = True
    name = "metadata_contains"


def _parts(element: _MetadataContains, compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(clause, **kw) for clause in element.clauses]


@compiles(_MetadataContains, "postgresql")
def _contains_pg(element: _MetadataContains, compiler: SQLCompiler, **kw: Any) -> str:
    stored, match = _parts(element, compiler, **kw)
    return f"(CAST({stored} AS jsonb) @> CAST({match} AS jsonb))"


@compiles(_MetadataContains, "sqlite")
def _contains_sqlite(element: _MetadataContains, compiler: SQLCompiler, **kw: Any) -> str:
    stored, match = _parts(element, compiler, **kw)
    return (
        f"(NOT EXISTS (SELECT 1 FROM json_each({match}) AS m WHERE NOT EXISTS ("  # noqa: S608
        f"SELECT 1 FROM json_each({stored}) AS e WHERE e.key = m.key AND e.value = m.value)))"
    )


async def transaction_by_id(
    conn: AsyncConnection, organization_id: uuid.UUID, entry_id: uuid.UUID
) -> TransactionRecord | None:
    """The organization's entry with this ID (the lookup an undo's replay makes, too)."""
    return await conn.run_sync(credits.transaction_by_id, organization_id, entry_id)


async def transaction_by_key(
    conn: AsyncConnection, organization_id: uuid.UUID, key: str
) -> TransactionRecord | None:
    """The entry the write with this idempotency key made (the organization's one key space)."""
    query = select(*transactions.c).where(
        transactions.c.organization_id == organization_id, transactions.c.idempotency_key == key
    )
    row = (await conn.execute(query)).first()
    return None if row is None else TransactionRecord.from_row(row)


class ExportRow(NamedTuple):
    """An entry as exports show it: with its wallet's ID, customer and currency."""

    id: uuid.UUID
    created_at: datetime
    wallet_id: uuid.UUID
    customer_id: str
    currency: str
    type: str
    amount: int
    balance_after: int
    description: str | None
    reference: str | None
    idempotency_key: str
    metadata: str


_EXPORT_COLUMNS = (
    transactions.c.id, transactions.c.created_at, wallets.c.id, wallets.c.customer_id,
    wallets.c.currency, transactions.c.type, transactions.c.amount, transactions.c.balance_after,
    transactions.c.description, transactions.c.reference, transactions.c.idempotency_key,
    transactions.c.metadata,
)  # fmt: skip


def _organization_entries(organization_id: uuid.UUID, start: datetime, end: datetime) -> Any:
    return (
        select(*_EXPORT_COLUMNS)
        .join(wallets, wallets.c.seq == transactions.c.wallet_seq)
        .where(
            transactions.c.organization_id == organization_id,
            transactions.c.created_at > start,
            transactions.c.created_at <= end,
        )
    )


async def count_entries(
    conn: AsyncConnection, organization_id: uuid.UUID, start: datetime, end: datetime
) -> int:
    entries = _organization_entries(organization_id, start, end).subquery()
    return int((await conn.execute(select(func.count()).select_from(entries))).scalar_one())


async def stream_entries(
    conn: AsyncConnection, organization_id: uuid.UUID, start: datetime, end: datetime
) -> AsyncIterator[ExportRow]:
    """The organization's entries created after `start` and at or before `end`, in ledger order,
    fetched a thousand at a time (a server-side cursor on PostgreSQL): memory stays flat."""
    query = _organization_entries(organization_id, start, end).order_by(transactions.c.seq)
    result = await conn.stream(query.execution_options(yield_per=1000))
    async for row in result:
        yield ExportRow(row[0], utc(row[1]), *row[2:])


async def organization_named(conn: AsyncConnection, name: str) -> uuid.UUID | None:
    found = await conn.execute(select(organizations.c.id).where(organizations.c.name == name))
    value = found.scalar()
    return None if value is None else uuid.UUID(str(value))


class WalletStatementRow(NamedTuple):
    """One wallet's statement for a period, as an export's statement file holds it."""

    wallet_id: uuid.UUID
    customer_id: str
    currency: str
    opening: int
    total: int
    closing: int
    entries: int


async def wallet_statements(
    conn: AsyncConnection, organization_id: uuid.UUID, start: datetime, end: datetime
) -> list[WalletStatementRow]:
    """Each of the organization's wallets with an entry created at or before `end`: its
    balance at `start`, the sum and number of its entries after `start` up to `end`, and its
    balance at `end`; oldest wallet first."""
    in_period = transactions.c.created_at > start
    query = (
        select(
            wallets.c.id,
            wallets.c.customer_id,
            wallets.c.currency,
            func.sum(case((in_period, 0), else_=transactions.c.amount)),
            func.sum(case((in_period, transactions.c.amount), else_=0)),
            func.sum(transactions.c.amount),
            func.count(case((in_period, 1))),
        )
        .join(wallets, wallets.c.seq == transactions.c.wallet_seq)
        .where(transactions.c.organization_id == organization_id, transactions.c.created_at <= end)
        .group_by(wallets.c.seq, wallets.c.id, wallets.c.customer_id, wallets.c.currency)
        .order_by(wallets.c.seq)
    )
    return [
        WalletStatementRow(
            uuid.UUID(str(r[0])), r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6])
        )
        for r in await conn.execute(query)
    ]


async def wallet_seq_of(conn: AsyncConnection, wallet_id: uuid.UUID) -> int | None:
    found = (await conn.execute(select(wallets.c.seq).where(wallets.c.id == wallet_id))).scalar()
    return None if found is None else int(found)
