"""The hot reads sent on the driver's own connection (repository.DriverRead): the same values as
SQLAlchemy's execute path, and a connection that failed a statement never goes back into use."""

from __future__ import annotations

import asyncio
from datetime import UTC

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection

from gql_wallet import repository as repo
from gql_wallet.auth import parse_token
from gql_wallet.repository import entries, sessions, wallet_queries
from gql_wallet.repository.driver import DriverRead
from tests.conftest import Env


class TestSameValuesAsSqlAlchemy:
    async def test_customer_wallets(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1", currency="eur")
        await env.api.top_up("cus_1", 2**53 - 1, "k2", currency="usd")
        async with env.database.read_connection() as conn:
            (key,) = [
                k
                for k in await repo.list_api_keys(conn)
                if k.public_id == parse_token(env.api.key)[1]  # type: ignore[index]
            ]
        async with env.database.read_connection() as conn:
            expected = await repo.list_wallets(conn, key.organization_id, customer_id="cus_1")
        found = await repo.list_customer_wallets(env.database, key.organization_id, "cus_1")
        assert len(found) == 2 and found == expected
        assert [type(getattr(w, f)) for w in found for f in ("id", "created_at")] == [
            type(getattr(w, f)) for w in expected for f in ("id", "created_at")
        ]

    async def test_api_key(self, env: Env) -> None:
        public_id = parse_token(env.api.key)[1]  # type: ignore[index]
        async with env.database.read_connection() as conn:
            (expected,) = [k for k in await repo.list_api_keys(conn) if k.public_id == public_id]
        assert await repo.find_api_key(env.database, public_id) == expected
        assert await repo.find_api_key(env.database, "000000000000") is None

    async def test_customer_session(self, env: Env) -> None:
        """The session read on the driver (a group read on PostgreSQL) gives what SQLAlchemy's
        execute path gives for the same row, the API key's revocation time included."""
        customer = await env.customer_session(env.api, "cus_1")
        public_id = parse_token(customer.key)[1]  # type: ignore[index]
        query = select(
            *repo.customer_sessions.c, repo.api_keys.c.revoked_at.label("key_revoked_at")
        ).join(repo.api_keys, repo.api_keys.c.id == repo.customer_sessions.c.api_key_id)
        async with env.database.read_connection() as conn:
            row = (await conn.execute(query)).one()
        expected = sessions._session_record(row, row.key_revoked_at)
        found = await repo.find_customer_session(env.database, public_id)
        assert await repo.find_customer_session(env.database, "000000000000") is None
        assert found == expected and found is not None
        assert [type(v) for v in vars(found).values()] == [type(v) for v in vars(expected).values()]
        assert found.customer_id == "cus_1" and found.expires_at.tzinfo is not None


async def test_a_page_of_wallets_is_made_of_records_in_utc(env: Env) -> None:
    await env.api.top_up("cus_1", 100, "k1")
    key = await repo.find_api_key(env.database, parse_token(env.api.key)[1])  # type: ignore[index]
    assert key is not None
    async with env.database.driver_connection() as conn:
        (wallet,) = await repo.list_wallets(conn, key.organization_id, limit=5)
    assert type(wallet) is repo.WalletRecord
    assert wallet.created_at.tzinfo is UTC and wallet.modified_at.tzinfo is UTC
    assert (await repo.list_customer_wallets(env.database, key.organization_id, "cus_1")) == [
        wallet
    ]


def test_a_record_must_name_exactly_the_selected_columns() -> None:
    wallets = repo.wallets
    with pytest.raises(ValueError, match="WalletRecord has the fields"):
        DriverRead(select(wallets.c.seq, wallets.c.id), record=repo.WalletRecord)


class TestLedgerPages:
    """A wallet's ledger pages: alone (SQLite, or a request with nobody to group with) and
    several requests' pages in one statement (PostgreSQL's group read), each page exactly what
    SQLAlchemy's execute path reads for it."""

    async def _expected(self, env: Env, wallet_seq: int, before: int | None, limit: int) -> list:
        t = repo.transactions
        query = select(*t.c).where(t.c.wallet_seq == wallet_seq)
        if before is not None:
            query = query.where(t.c.seq < before)
        query = query.order_by(t.c.seq.desc()).limit(limit)
        async with env.database.read_connection() as conn:
            return [repo.TransactionRecord.from_row(row) for row in await conn.execute(query)]

    async def test_pages_of_several_requests(self, env: Env) -> None:
        for i in range(7):
            await env.api.top_up("cus_1", 10 + i, f"a{i}", description=f"top-up {i}")
        for i in range(3):
            await env.api.top_up("cus_2", 20 + i, f"b{i}", reference=f"r{i}")
        key = await repo.find_api_key(env.database, parse_token(env.api.key)[1])  # type: ignore[index]
        assert key is not None
        (one,) = await repo.list_customer_wallets(env.database, key.organization_id, "cus_1")
        (two,) = await repo.list_customer_wallets(env.database, key.organization_id, "cus_2")
        middle = (await self._expected(env, one.seq, None, 4))[-1].seq
        asked = [
            (one.seq, None, 3),
            (one.seq, None, 3),  # the same page twice in one group: read twice
            (two.seq, None, 10),
            (one.seq, middle, 2),
            (one.seq, middle, 100),
            (two.seq, 1, 5),  # before the first entry: empty
            (10**9, None, 5),  # no such wallet: empty
        ]
        found = await asyncio.gather(
            *(
                repo.list_transactions(env.database, seq, before_seq=before, limit=limit)
                for seq, before, limit in asked
            )
        )
        expected = [await self._expected(env, *page) for page in asked]
        assert found == expected
        assert [len(page) for page in found] == [3, 3, 3, 2, 3, 0, 0]
        if env.database.pg_groups is not None:  # the grouped statement itself, all at once
            pages = [(seq, before or entries._NEWEST, limit) for seq, before, limit in asked]
            async with env.database.driver_connection() as conn:
                rows = await entries._PAGES(conn, pages)
            assert [[repo.TransactionRecord.from_row(r) for r in p] for p in rows] == expected


async def test_pages_of_wallets_of_several_requests(env: Env) -> None:
    """Pages of an organization's wallets: alone, and several requests' pages in one statement
    (PostgreSQL's group read, the same page asked twice read twice), each exactly
    `list_wallets`' page; a filtered page is read alone on both databases."""
    other = await env.new_key("other_org")
    for i in range(5):
        await env.api.top_up(f"cus_{i}", 10 + i, f"a{i}")
    await other.top_up("cus_x", 7, "x1")
    organization = (
        await repo.find_api_key(env.database, parse_token(env.api.key)[1])
    ).organization_id  # type: ignore[index, union-attr]
    elsewhere = (await repo.find_api_key(env.database, parse_token(other.key)[1])).organization_id  # type: ignore[index, union-attr]
    async with env.database.driver_connection() as conn:
        every = await repo.list_wallets(conn, organization)
    second = every[1].seq
    asked = [
        (organization, None, 3, None),
        (organization, None, 3, None),
        (organization, second, 2, None),
        (organization, second, 100, None),
        (elsewhere, None, 10, None),
        (organization, every[-1].seq, 5, None),  # after the last: empty
        (organization, None, 10, "cus_3"),  # filtered: alone
    ]
    found = await asyncio.gather(
        *(
            repo.page_of_wallets(
                env.database, org, customer_id=customer, currency=None, after_seq=after, limit=n
            )
            for org, after, n, customer in asked
        )
    )
    expected = []
    async with env.database.driver_connection() as conn:
        for org, after, n, customer in asked:
            expected.append(
                await repo.list_wallets(conn, org, customer_id=customer, after_seq=after, limit=n)
            )
    assert found == expected
    assert [len(page) for page in found] == [3, 3, 2, 3, 1, 0, 1]
    assert all(type(w) is repo.WalletRecord for page in found for w in page)
    if env.database.pg_groups is not None:  # the grouped statement itself, all at once
        pages = [(org, after or 0, n) for org, after, n, customer in asked if customer is None]
        async with env.database.driver_connection() as conn:
            rows = await wallet_queries._organizations_pages(conn, pages)
        assert rows == expected[:-1]
        assert rows[0] is not rows[1] and rows[0][0] is not rows[1][0]  # read for each


async def test_a_failed_statement_invalidates_its_connection(env: Env) -> None:
    missing = Table("no_such_table", MetaData(), Column("x", Integer))
    broken = repo.DriverRead(select(missing.c.x))
    async with env.database.driver_connection() as conn:
        with pytest.raises(Exception, match="no_such_table"):
            await broken.fetchall(conn, {})
        assert conn.invalidated
    # The pool hands out working connections afterwards.
    await env.api.top_up("cus_1", 100, "k1")
    data = await env.api('{ customerWallets(customerId: "cus_1") { balance } }')
    assert data == {"customerWallets": [{"balance": 100}]}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_connection_that_comes_back_inside_a_transaction_is_rolled_back(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's pool resets a connection on checkin only when a transaction is still open on it
    (no unconditional rollback hop to aiosqlite's thread), and then it does roll it back."""
    async with env.database.driver_connection() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        await driver.execute("BEGIN IMMEDIATE")
        await driver.execute("DELETE FROM api_keys")
        assert driver.in_transaction
    assert not driver.in_transaction
    async with env.database.read_connection() as conn:
        assert len(await repo.list_api_keys(conn)) == 2  # the DELETE was rolled back
    calls: list[int] = []
    adapter = AsyncAdapt_aiosqlite_connection
    original = adapter.rollback
    monkeypatch.setattr(adapter, "rollback", lambda self: calls.append(1) or original(self))
    for _ in range(3):  # the general path, then the plan
        data = await env.api('{ customerWallets(customerId: "c") { id } }')
        assert data == {"customerWallets": []}
    assert calls == []  # no rollback hop after autocommit reads
