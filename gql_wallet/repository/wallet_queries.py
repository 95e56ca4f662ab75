"""Wallets: creation, the conditional balance change, and reads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    Uuid,
    bindparam,
    column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet.db import Database, DriverConnection, OnDemandConnection
from gql_wallet.repository.driver import DriverRead, GroupedPages
from gql_wallet.repository.records import _WALLET_COLUMNS, WalletRecord, among, wallets


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


def get_wallet_by_owner(
    conn: Connection, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WalletRecord | None:
    row = conn.execute(_WALLET_BY_OWNER, _owner(organization_id, customer_id, currency)).first()
    return WalletRecord.from_row(row) if row else None


def _owner(organization_id: uuid.UUID, customer_id: str, currency: str) -> dict[str, Any]:
    return {
        "p_organization_id": organization_id,
        "p_customer_id": customer_id,
        "p_currency": currency,
    }


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
    rows = (
        await conn.execute(select(*_WALLET_COLUMNS).where(among(conn, wallets.c.seq, seqs)))
    ).all()
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
    database: Database, organization_id: uuid.UUID, customer_id: str
) -> list[WalletRecord]:
    """A customer's wallets, oldest first: `list_wallets` for the hot path, built once. On
    PostgreSQL the read goes in a group read with the other requests' (see `find_api_key`)."""
    owner = (organization_id, customer_id)
    rows = await database.run_grouped(_customers_wallets, _customer_wallets_alone, owner)
    return [WalletRecord.from_row(row) for row in rows]


async def list_wallets(
    conn: DriverConnection,
    organization_id: uuid.UUID,
    *,
    customer_id: str | None = None,
    currency: str | None = None,
    after_seq: int | None = None,
    limit: int | None = None,
) -> list[WalletRecord]:
    """The organization's wallets, oldest first, keyset-paginated by `seq`."""
    given = {"customer_id": customer_id, "currency": currency, "after_seq": after_seq}
    given = {name: value for name, value in given.items() if value is not None}
    if limit is not None:
        given["limit"] = limit
    shape = tuple(given)
    statement = _WALLET_LISTS.get(shape)
    if statement is None:
        statement = _WALLET_LISTS[shape] = _wallet_list(shape)
    records: list[WalletRecord] = await statement.fetchall(
        conn, {"organization_id": organization_id, **given}
    )
    return records


def _wallets_query(
    organization_id: Any,
    *,
    customer_id: Any = None,
    currency: Any = None,
    after_seq: Any = None,
    limit: Any = None,
) -> Select[Any]:
    query = select(*_WALLET_COLUMNS).where(wallets.c.organization_id == organization_id)
    if customer_id is not None:
        query = query.where(wallets.c.customer_id == customer_id)
    if currency is not None:
        query = query.where(wallets.c.currency == currency)
    if after_seq is not None:
        query = query.where(wallets.c.seq > after_seq)
    query = query.order_by(wallets.c.seq)
    return query if limit is None else query.limit(limit)


def _wallet_list(shape: tuple[str, ...]) -> DriverRead:
    query = _wallets_query(
        bindparam("organization_id"), **{name: bindparam(name) for name in shape}
    )
    # A page on the (organization_id, seq) index is a point read; an unbounded list is not.
    return DriverRead(query, point_read="limit" in shape, record=WalletRecord)


# One statement per combination of filters given, each built once.
_WALLET_LISTS: dict[tuple[str, ...], DriverRead] = {}


async def page_of_wallets(
    database: Database,
    organization_id: uuid.UUID,
    *,
    customer_id: str | None,
    currency: str | None,
    after_seq: int | None,
    limit: int,
) -> list[WalletRecord]:
    """`list_wallets` for a page read outside a transaction. On PostgreSQL a page of the
    organization's wallets without filters goes in a group read with the other requests' pages
    (see `find_api_key`)."""
    if customer_id is None and currency is None:
        page = (organization_id, after_seq or 0, limit)
        records: list[WalletRecord] = await database.run_grouped(
            _organizations_pages, _organization_page_alone, page
        )
        return records
    async with OnDemandConnection(database) as conn:
        return await list_wallets(
            conn,
            organization_id,
            customer_id=customer_id,
            currency=currency,
            after_seq=after_seq,
            limit=limit,
        )


async def _organization_page_alone(
    conn: DriverConnection, page: tuple[uuid.UUID, int, int]
) -> list[WalletRecord]:
    organization_id, after_seq, limit = page
    return await list_wallets(conn, organization_id, after_seq=after_seq, limit=limit)


# PostgreSQL: the pages of wallets without filters that the requests waiting in a process ask for.
_ORGANIZATIONS_PAGES = GroupedPages(
    lambda organization_id, after_seq, limit: _wallets_query(
        organization_id, after_seq=after_seq, limit=limit
    ),
    (("organization_id", Uuid()), ("after_seq", BigInteger()), ("limit", Integer())),
    lambda page: page.seq,
)


async def _organizations_pages(
    conn: AsyncConnection, pages: list[tuple[uuid.UUID, int, int]]
) -> list[list[WalletRecord]]:
    found = await _ORGANIZATIONS_PAGES(conn, pages)
    return [[WalletRecord._make(row[1:]) for row in page] for page in found]


async def find_wallet_by_owner(
    database: Database, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WalletRecord | None:
    """`get_wallet_by_owner` for a read outside a write transaction: from the customer's
    wallets (a few), so that it shares their group read with `list_customer_wallets`."""
    wallets_of_customer = await list_customer_wallets(database, organization_id, customer_id)
    return next((w for w in wallets_of_customer if w.currency == currency), None)
