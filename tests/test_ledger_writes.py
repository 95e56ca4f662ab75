"""Write semantics of topUpWallet, chargeWallet and createWallet (CONTRACT: Semantics of writes)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gql_wallet import auth, ledger, metrics, repository
from gql_wallet.db import async_url, checked_out
from gql_wallet.db import sqlite as sqlite_db
from gql_wallet.db.sqlite import SqliteWriterQueue
from gql_wallet.settings import Settings
from tests.conftest import CHARGE, TOP_UP, Api, Env

MAX = 2**53 - 1


def codes(payload: dict) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


class TestTopUp:
    async def test_first_top_up_creates_the_wallet_and_one_entry(self, env: Env) -> None:
        payload = await env.api.top_up("cus_1", 5000, "k1", currency="USD", description="card")
        assert payload["userErrors"] == []
        wallet, tx = payload["wallet"], payload["transaction"]
        assert (wallet["customerId"], wallet["currency"], wallet["balance"]) == (
            "cus_1",
            "usd",
            5000,
        )
        assert (tx["type"], tx["amount"], tx["balanceAfter"]) == ("TOP_UP", 5000, 5000)
        assert (
            tx["description"] == "card" and tx["reference"] is None and tx["idempotencyKey"] == "k1"
        )
        assert wallet["createdAt"].endswith("+00:00")
        assert datetime.fromisoformat(wallet["modifiedAt"]) == datetime.fromisoformat(
            tx["createdAt"]
        )
        assert await env.counts() == (1, 1, 1)

    async def test_every_write_moves_modified_at(self, env: Env) -> None:
        first = (await env.api.top_up("cus_1", 100, "k1"))["wallet"]
        second = (await env.api.charge("cus_1", 40, "k2"))["wallet"]
        assert second["createdAt"] == first["createdAt"]
        assert datetime.fromisoformat(second["modifiedAt"]) > datetime.fromisoformat(
            first["modifiedAt"]
        )

    async def test_balance_up_to_the_safe_integer_limit(self, env: Env) -> None:
        assert (await env.api.top_up("cus_1", MAX, "k1"))["wallet"]["balance"] == MAX
        before = await env.counts()
        refused = await env.api.top_up("cus_1", 1, "k2")
        assert codes(refused) == ["BALANCE_LIMIT_EXCEEDED"]
        assert refused["wallet"]["balance"] == MAX and refused["transaction"] is None
        assert (await env.counts())[:2] == before[:2]

    @pytest.mark.parametrize("amount", [0, -1, -MAX, MAX + 1, 2**63, 10**25])
    async def test_amount_outside_1_to_max_is_invalid_and_writes_nothing(
        self, env: Env, amount: int
    ) -> None:
        payload = await env.api.top_up("cus_1", amount, "k1")
        assert codes(payload) == ["INVALID_AMOUNT"]
        assert payload["userErrors"][0]["field"] == ["input", "amount"]
        assert payload["wallet"] is None and payload["transaction"] is None
        assert await env.counts() == (0, 0, 0)
        # An invalid write does not use up its key.
        assert (await env.api.top_up("cus_1", 10, "k1"))["userErrors"] == []

    async def test_amount_just_above_the_limit_as_a_literal(self, env: Env) -> None:
        data = await env.api(
            'mutation { topUpWallet(input: {customerId: "c", currency: "usd", '
            f'amount: {MAX + 1}, idempotencyKey: "k"}}) {{ userErrors {{ code }} }} }}'
        )
        assert data["topUpWallet"]["userErrors"] == [{"code": "INVALID_AMOUNT"}]
        assert await env.counts() == (0, 0, 0)

    @pytest.mark.parametrize("amount", [1.5, 100.0, "100", True, None])
    async def test_non_integer_amounts_are_request_errors(self, env: Env, amount: object) -> None:
        response = await env.api.post(
            TOP_UP,
            {
                "input": {
                    "customerId": "c",
                    "currency": "usd",
                    "amount": amount,
                    "idempotencyKey": "k",
                }
            },
        )
        assert response.status_code == 200
        body = response.json()
        assert "data" not in body and body["errors"]
        assert await env.counts() == (0, 0, 0)


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value", "code"),
        [
            ("currency", "xts", "INVALID_CURRENCY"),
            ("currency", "XXX", "INVALID_CURRENCY"),
            ("currency", "dollars", "INVALID_CURRENCY"),
            ("currency", "", "INVALID_CURRENCY"),
            ("customerId", "", "INVALID_CUSTOMER_ID"),
            ("customerId", "x" * 129, "INVALID_CUSTOMER_ID"),
            ("customerId", "cus\n1", "INVALID_CUSTOMER_ID"),
            ("customerId", "cus\x001", "INVALID_CUSTOMER_ID"),
            ("description", "d" * 501, "INVALID_INPUT"),
            ("reference", "r" * 256, "INVALID_INPUT"),
            ("idempotencyKey", "", "INVALID_INPUT"),
            ("idempotencyKey", "k" * 256, "INVALID_INPUT"),
        ],
    )
    @pytest.mark.parametrize("mutation", ["top_up", "charge"])
    async def test_each_invalid_field_is_a_typed_error_and_writes_nothing(
        self, env: Env, mutation: str, field: str, value: str, code: str
    ) -> None:
        await env.api.top_up("cus_1", 100, "seed")
        before = await env.counts()
        args = {"customerId": "cus_1", "currency": "usd", "idempotencyKey": "k1", field: value}
        customer, key = args.pop("customerId"), args.pop("idempotencyKey")
        payload = await getattr(env.api, mutation)(customer, 50, key, **args)
        assert payload["userErrors"] == [
            {
                "code": code,
                "field": ["input", field],
                "message": payload["userErrors"][0]["message"],
            }
        ]
        assert payload["wallet"] is None and payload["transaction"] is None
        assert await env.counts() == before

    async def test_limits_are_inclusive(self, env: Env) -> None:
        payload = await env.api.top_up(
            "x" * 128, 1, "k" * 255, description="d" * 500, reference="r" * 255
        )
        assert payload["userErrors"] == []

    async def test_customer_id_counts_code_points_and_allows_unicode(self, env: Env) -> None:
        assert (await env.api.top_up("ü" * 128, 1, "k1"))["userErrors"] == []
        assert codes(await env.api.top_up("ü" * 129, 1, "k2")) == ["INVALID_CUSTOMER_ID"]

    async def test_several_invalid_fields_each_get_an_error(self, env: Env) -> None:
        payload = await env.api.charge("", 0, "", currency="zzz", reference="r" * 256)
        assert sorted(codes(payload)) == sorted(
            [
                "INVALID_CUSTOMER_ID",
                "INVALID_CURRENCY",
                "INVALID_AMOUNT",
                "INVALID_INPUT",
                "INVALID_INPUT",
            ]
        )
        assert await env.counts() == (0, 0, 0)


class TestCharge:
    async def test_charge_draws_from_the_balance(self, env: Env) -> None:
        await env.api.top_up("cus_1", 5000, "k1")
        payload = await env.api.charge("cus_1", 1250, "k2", reference="inv_1")
        assert payload["userErrors"] == []
        assert payload["wallet"]["balance"] == 3750
        assert (payload["transaction"]["type"], payload["transaction"]["amount"]) == (
            "CHARGE",
            -1250,
        )
        assert payload["transaction"]["balanceAfter"] == 3750

    async def test_charge_of_the_whole_balance_leaves_zero(self, env: Env) -> None:
        await env.api.top_up("cus_1", 5000, "k1")
        assert (await env.api.charge("cus_1", 5000, "k2"))["wallet"]["balance"] == 0

    async def test_insufficient_funds_writes_nothing_to_the_ledger(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        payload = await env.api.charge("cus_1", 101, "k2")
        assert codes(payload) == ["INSUFFICIENT_FUNDS"]
        assert payload["transaction"] is None and payload["wallet"]["balance"] == 100
        wallets, entries, _ = await env.counts()
        assert (wallets, entries) == (1, 1)

    async def test_charge_to_a_missing_wallet(self, env: Env) -> None:
        payload = await env.api.charge("nobody", 1, "k1")
        assert codes(payload) == ["WALLET_NOT_FOUND"]
        assert payload["wallet"] is None
        assert (await env.counts())[:2] == (0, 0)

    async def test_charge_in_another_currency_is_another_wallet(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1", currency="usd")
        assert codes(await env.api.charge("cus_1", 1, "k2", currency="eur")) == ["WALLET_NOT_FOUND"]


class TestIdempotency:
    async def test_replay_returns_the_identical_payload_and_writes_nothing(self, env: Env) -> None:
        first = await env.api.top_up("cus_1", 5000, "k1", description="d")
        before = await env.counts()
        again = await env.api.top_up("cus_1", 5000, "k1", currency="USD", description="d")
        assert again == first
        assert await env.counts() == before

    async def test_replay_shows_the_wallet_as_it_is_now(self, env: Env) -> None:
        first = await env.api.top_up("cus_1", 5000, "k1")
        await env.api.charge("cus_1", 1000, "k2")
        again = await env.api.top_up("cus_1", 5000, "k1")
        assert again["transaction"] == first["transaction"]
        assert again["wallet"]["balance"] == 4000

    async def test_insufficient_funds_is_final_for_its_key(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        refused = await env.api.charge("cus_1", 500, "k2")
        assert codes(refused) == ["INSUFFICIENT_FUNDS"]
        await env.api.top_up("cus_1", 1000, "k3")
        before = await env.counts()
        replay = await env.api.charge("cus_1", 500, "k2")
        assert replay["userErrors"] == refused["userErrors"] and replay["transaction"] is None
        assert replay["wallet"]["balance"] == 1100
        assert await env.counts() == before

    async def test_wallet_not_found_is_final_for_its_key(self, env: Env) -> None:
        assert codes(await env.api.charge("cus_1", 5, "k1")) == ["WALLET_NOT_FOUND"]
        await env.api.top_up("cus_1", 100, "k2")
        assert codes(await env.api.charge("cus_1", 5, "k1")) == ["WALLET_NOT_FOUND"]
        assert (await env.api.charge("cus_1", 5, "k3"))["wallet"]["balance"] == 95

    @pytest.mark.parametrize(
        "change",
        [
            {"amount": 5001},
            {"currency": "eur"},
            {"customerId": "cus_2"},
            {"description": "other"},
            {"reference": "inv_9"},
        ],
    )
    async def test_same_key_with_different_input_is_refused(self, env: Env, change: dict) -> None:
        first = {"customerId": "cus_1", "currency": "usd", "amount": 5000, "idempotencyKey": "k1"}
        await env.api(TOP_UP, {"input": first})
        before = await env.counts()
        data = await env.api(TOP_UP, {"input": {**first, **change}})
        payload = data["topUpWallet"]
        assert codes(payload) == ["IDEMPOTENCY_KEY_REUSED"]
        assert payload["userErrors"][0]["field"] == ["input", "idempotencyKey"]
        assert payload["transaction"] is None
        assert await env.counts() == before

    async def test_absent_optional_field_equals_null(self, env: Env) -> None:
        first = await env.api.top_up("cus_1", 10, "k1")
        assert await env.api.top_up("cus_1", 10, "k1", description=None) == first

    async def test_top_ups_and_charges_share_one_key_space(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        assert codes(await env.api.charge("cus_1", 100, "k1")) == ["IDEMPOTENCY_KEY_REUSED"]

    async def test_keys_are_scoped_to_the_organization(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        payload = await env.other.top_up("cus_1", 100, "k1")
        assert payload["userErrors"] == [] and payload["wallet"]["balance"] == 100


class TestCreateWallet:
    QUERY = """mutation($input: CreateWalletInput!) { createWallet(input: $input) {
        wallet { id balance currency customerId } userErrors { code field } } }"""

    async def test_creates_an_empty_wallet_once(self, env: Env) -> None:
        inp = {"input": {"customerId": "cus_1", "currency": "EUR"}}
        first = (await env.api(self.QUERY, inp))["createWallet"]
        assert first["userErrors"] == [] and first["wallet"]["balance"] == 0
        assert first["wallet"]["currency"] == "eur"
        again = (await env.api(self.QUERY, inp))["createWallet"]
        assert again["wallet"]["id"] == first["wallet"]["id"]
        assert await env.counts() == (1, 0, 0)

    async def test_invalid_owner(self, env: Env) -> None:
        data = await env.api(self.QUERY, {"input": {"customerId": "", "currency": "xts"}})
        assert sorted(codes(data["createWallet"])) == ["INVALID_CURRENCY", "INVALID_CUSTOMER_ID"]
        assert await env.counts() == (0, 0, 0)

    async def test_a_created_wallet_can_be_topped_up_and_charged(self, env: Env) -> None:
        await env.api(self.QUERY, {"input": {"customerId": "cus_1", "currency": "usd"}})
        assert codes(await env.api.charge("cus_1", 1, "k1")) == ["INSUFFICIENT_FUNDS"]
        assert (await env.api.top_up("cus_1", 7, "k2"))["wallet"]["balance"] == 7


async def test_charge_mutation_text_is_valid_graphql(env: Env) -> None:
    """The shared operation texts used across the suite run without request errors."""
    response = await env.api.post(
        CHARGE,
        {"input": {"customerId": "c", "currency": "usd", "amount": 1, "idempotencyKey": "k"}},
    )
    assert response.status_code == 200 and "errors" not in response.json()


@contextmanager
def statements_sent(env: Env) -> Iterator[list[str]]:
    """The first word of every statement the app sends while the block runs, with AUTOCOMMIT/
    when it runs outside a transaction, and COMMIT for each commit."""
    sent: list[str] = []

    def on_execute(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        sent.append(("AUTOCOMMIT/" if autocommit else "") + statement.split(None, 1)[0].upper())

    def on_commit(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            sent.append("COMMIT")

    # The hot reads go to the driver's own connection, past SQLAlchemy's events: seen here, with
    # the driver's word on whether a transaction is open (AUTOCOMMIT/ on PostgreSQL as above).
    driver_read = repository.DriverRead.fetchall

    async def on_driver_read(
        read: repository.DriverRead, conn: Any, parameters: dict[str, Any]
    ) -> Any:
        # The request's connection, checked out here if it is on demand (db.OnDemandConnection).
        driver = (await (await checked_out(conn)).get_raw_connection()).driver_connection
        in_transaction = (
            driver.in_transaction if conn.dialect.name == "sqlite" else driver.is_in_transaction()
        )
        prefix = "IN-TRANSACTION/" if in_transaction else ""
        if not in_transaction and conn.dialect.name == "postgresql":
            prefix = "AUTOCOMMIT/"
        sent.append(prefix + str(read.statement).split(None, 1)[0].upper())
        return await driver_read(read, conn, parameters)

    listeners = [
        (database, name, listener)
        for database in env.database.sync_engines()  # on SQLite also the writer thread's
        for name, listener in (("before_cursor_execute", on_execute), ("commit", on_commit))
    ]
    for listener in listeners:
        event.listen(*listener)
    repository.DriverRead.fetchall = on_driver_read  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        repository.DriverRead.fetchall = driver_read  # type: ignore[method-assign]
        for listener in listeners:
            event.remove(*listener)


async def test_postgresql_writes_in_one_statement_sqlite_in_one_transaction(env: Env) -> None:
    """On PostgreSQL a top-up or charge, applied or refused, is one statement (the function of
    migration 0003) after the key lookup; on SQLite it is one BEGIN IMMEDIATE transaction."""
    await env.api.top_up("cus_1", 100, "warm-up")  # creates the wallet
    for write in (
        lambda: env.api.top_up("cus_1", 50, "k1"),
        lambda: env.api.charge("cus_1", 30, "k2"),
        lambda: env.api.charge("cus_1", 10**6, "k3"),  # refused: INSUFFICIENT_FUNDS
        lambda: env.api.charge("cus_2", 1, "k4"),  # refused: WALLET_NOT_FOUND
    ):
        with statements_sent(env) as sent:
            await write()
        if env.database.dialect.name == "postgresql":
            # The API key lookup, then the balance change.
            assert sent == ["AUTOCOMMIT/SELECT", "AUTOCOMMIT/SELECT"], sent
        else:
            # The API key lookup, then the write in one BEGIN IMMEDIATE transaction.
            assert sent[:2] == ["SELECT", "BEGIN"] and sent[-1] == "COMMIT", sent
            assert sent.count("BEGIN") == sent.count("COMMIT") == 1, sent
    assert (await env.api.top_up("cus_1", 50, "k1"))["wallet"]["balance"] == 120  # a replay
    assert codes(await env.api.charge("cus_1", 10**6, "k3")) == ["INSUFFICIENT_FUNDS"]
    assert codes(await env.api.charge("cus_2", 1, "k4")) == ["WALLET_NOT_FOUND"]
    assert await env.counts() == (1, 3, 5)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_writers_wait_in_the_writer_lock_queue(env: Env) -> None:
    """A write waits while another process holds `<file>.writer-lock`, and goes on the moment
    it is released (instead of polling in SQLite's busy handler); reads do not wait."""
    await env.api.top_up("cus_1", 100, "k1")
    path = env.database.engine.url.database
    assert path is not None
    fd = os.open(f"{path}.writer-lock", os.O_RDWR)  # another open file: another process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write = asyncio.create_task(env.api.top_up("cus_1", 50, "k2"))
        read = await env.api('query { customerWallets(customerId: "cus_1") { balance } }')
        assert read["customerWallets"] == [{"balance": 100}]
        await asyncio.sleep(0.5)
        assert not write.done()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert (await asyncio.wait_for(write, 10))["wallet"]["balance"] == 150


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_group_commit_keeps_each_writes_outcome(env: Env) -> None:
    """Writes that wait for the writer thread together share one BEGIN .. COMMIT, each in its
    own savepoint: one that raises is rolled back alone and gets its exception."""
    database = env.database
    await database.run_write(_create_scratch_tables)
    # The savepoints go to sqlite3 directly, past SQLAlchemy's events: SQLite's own trace of
    # the writer thread's connection sees every statement it runs.
    traced: list[str] = []
    await database.run_write(_trace_into, traced.append)
    first, release = await _writer_thread_busy(database)
    with statements_sent(env) as sent:
        group = [
            asyncio.create_task(database.run_write(_insert, 1)),
            asyncio.create_task(database.run_write(_insert_then_fail, 2)),
            asyncio.create_task(database.run_write(_insert, 3)),
        ]
        await asyncio.sleep(0.2)  # all three wait behind the blocker
        release.set()
        results = await asyncio.gather(*group, return_exceptions=True)
    await database.run_write(_trace_into, None)
    assert await first == "blocker"
    assert results[0] == 1 and results[2] == 3, results
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "refused"
    # The blocker's group commits, then the three writes in one group: one BEGIN, 3 savepoints.
    assert sent.count("BEGIN") == 1 and sent.count("COMMIT") == 2, sent
    # From the group's BEGIN (the one after the blocker's savepoint) to its COMMIT.
    begin = traced.index("BEGIN IMMEDIATE", traced.index("SAVEPOINT gql_wallet_write"))
    group_sql = traced[begin : traced.index("COMMIT", begin) + 1]
    assert [sql.split(" (", 1)[0] for sql in group_sql] == [
        "BEGIN IMMEDIATE",
        *("SAVEPOINT gql_wallet_write", "INSERT INTO scratch", "RELEASE gql_wallet_write"),
        *("SAVEPOINT gql_wallet_write", "INSERT INTO scratch"),
        *("ROLLBACK TO gql_wallet_write", "RELEASE gql_wallet_write"),
        *("SAVEPOINT gql_wallet_write", "INSERT INTO scratch", "RELEASE gql_wallet_write"),
        "COMMIT",
    ], traced
    assert await database.run_write(_scratch) == [1, 3]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_group_commit_that_fails_writes_nothing_of_the_group(env: Env) -> None:
    """No write hears of success before its group's COMMIT: when the COMMIT fails (here a
    deferred foreign key), every write of the group gets the error and none is written."""
    database = env.database
    await database.run_write(_create_scratch_tables)
    first, release = await _writer_thread_busy(database)
    group = [
        asyncio.create_task(database.run_write(_insert, 1)),
        asyncio.create_task(database.run_write(_orphan)),  # fails only at COMMIT
        asyncio.create_task(database.run_write(_insert, 2)),
    ]
    await asyncio.sleep(0.2)
    release.set()
    results = await asyncio.gather(*group, return_exceptions=True)
    assert await first == "blocker"
    assert all(isinstance(r, IntegrityError) for r in results), results
    assert await database.run_write(_scratch) == []
    assert await database.run_write(_insert, 7) == 7  # the writer goes on afterwards
    assert await database.run_write(_scratch) == [7]


async def test_a_writes_records_are_what_sqlalchemy_reads_back(env: Env) -> None:
    """On SQLite a write's statements go to sqlite3 directly (`repository.DriverWrite`), with
    SQLAlchemy's type conversions: the wallet and entry it answers with are exactly the rows
    that SQLAlchemy's own execution reads back, type for type (UUIDs, UTC datetimes, ints)."""
    org = await _organization_of(env)
    for write, amount in ((ledger.top_up, 250), (ledger.charge, 70)):
        done = await write(env.database, org, _change("cus_1", amount, f"k-{amount}"))
        assert done.transaction is not None and done.wallet is not None, done
        seq = done.transaction.seq

        def read_back(conn: Connection, seq: int = seq) -> tuple[Any, Any]:
            return (
                repository.get_transaction_by_seq(conn, seq),
                repository.get_wallet_by_owner(conn, org, "cus_1", "usd"),
            )

        async with env.database.read_transaction() as conn:
            entry, wallet = await conn.run_sync(read_back)
        assert done.transaction == entry and done.wallet == wallet
        for ours, theirs in ((done.transaction, entry), (done.wallet, wallet)):
            assert [type(v) for v in ours] == [type(v) for v in theirs]
        assert isinstance(entry.id, uuid.UUID) and entry.created_at.tzinfo is not None
    assert (done.wallet.balance, done.transaction.amount) == (180, -70)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_writer_thread_survives_an_error_outside_the_database(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after a group ran (here its metric) is that group's writes' answer, and the
    writer thread goes on: later writes are served instead of waiting forever."""
    database = env.database
    await database.run_write(_create_scratch_tables)
    observed: list[int] = []

    def broken_once(size: int) -> None:
        observed.append(size)
        if len(observed) == 1:
            raise RuntimeError("the metrics file broke")

    monkeypatch.setattr(metrics.WRITE_GROUP_SIZE, "observe", broken_once)
    with pytest.raises(RuntimeError, match="the metrics file broke"):
        await asyncio.wait_for(database.run_write(_insert, 1), 10)
    assert await asyncio.wait_for(database.run_write(_insert, 2), 10) == 2
    # The first write had committed before the error: a retry with its key would replay it.
    assert await asyncio.wait_for(database.run_write(_scratch), 10) == [1, 2]
    assert observed == [1, 1, 1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_writer_checkpoints_after_it_released_the_write_lock(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread's connection has SQLite's automatic checkpoint off (it would run inside
    a COMMIT, holding the write lock); the thread checkpoints the WAL itself, PASSIVE, after
    the write lock is released. Every other connection keeps the automatic checkpoint. A
    checkpoint that fails is logged, and writes go on."""
    database = env.database
    monkeypatch.setattr(sqlite_db, "_CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(sqlite_db, "_CHECKPOINT_GROUPS", 1)
    await database.run_write(_create_scratch_tables)
    writer = database.sqlite_writer
    events: list[str] = []
    file_lock = writer._file_lock

    @contextmanager
    def recorded_lock() -> Iterator[None]:
        with file_lock():
            events.append("flock")
            yield
        events.append("released")

    monkeypatch.setattr(writer, "_file_lock", recorded_lock)
    await database.run_write(_trace_into, events.append)
    events.clear()
    assert await database.run_write(_insert, 1) == 1
    await asyncio.sleep(0.2)  # the checkpoint follows the answer
    await database.run_write(_trace_into, None)
    # The group that installed the trace checkpoints after its answer, on the writer thread,
    # so its checkpoint may be traced before our write's "flock": start there.
    ours = events[events.index("flock") :]
    first = ours[: ours.index("PRAGMA wal_checkpoint(PASSIVE)") + 1]
    assert [e.split(" (", 1)[0] for e in first] == [
        *("flock", "BEGIN IMMEDIATE", "SAVEPOINT gql_wallet_write", "INSERT INTO scratch"),
        *("RELEASE gql_wallet_write", "COMMIT", "released", "PRAGMA wal_checkpoint(PASSIVE)"),
    ], events

    def autocheckpoint(conn: Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    assert await database.run_write(autocheckpoint) == 0  # the writer thread's connection
    async with database.read_transaction() as conn:
        assert await conn.run_sync(autocheckpoint) == 1000  # SQLite's default elsewhere

    monkeypatch.setattr(sqlite_db, "_CHECKPOINT", "PRAGMA no_such_thing(")
    assert await database.run_write(_insert, 2) == 2
    await asyncio.sleep(0.2)
    assert await asyncio.wait_for(database.run_write(_scratch), 10) == [1, 2]


async def _writer_thread_busy(database: Any) -> tuple[asyncio.Task[str], threading.Event]:
    """A write that keeps the writer thread busy until the event is set: writes submitted
    meanwhile wait, and then run as one group."""
    started, release = threading.Event(), threading.Event()

    def blocker(_conn: Connection) -> str:
        started.set()
        release.wait(10)
        return "blocker"

    first = asyncio.create_task(database.run_write(blocker))
    assert await asyncio.to_thread(started.wait, 10)
    return first, release


def _trace_into(conn: Connection, callback: Callable[[str], object] | None) -> None:
    """SQLite's trace of the writer thread's one connection: every statement it runs."""
    conn.connection.driver_connection.set_trace_callback(callback)  # type: ignore[union-attr]


def _create_scratch_tables(conn: Connection) -> None:
    conn.exec_driver_sql("CREATE TABLE scratch (v INTEGER PRIMARY KEY)")
    conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.exec_driver_sql(
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )


def _insert(conn: Connection, value: int) -> int:
    conn.exec_driver_sql("INSERT INTO scratch (v) VALUES (?)", (value,))
    return value


def _insert_then_fail(conn: Connection, value: int) -> None:
    _insert(conn, value)
    raise RuntimeError("refused")


def _orphan(conn: Connection) -> None:
    conn.exec_driver_sql("INSERT INTO child (parent_id) VALUES (42)")


def _scratch(conn: Connection) -> list[int]:
    return [row[0] for row in conn.exec_driver_sql("SELECT v FROM scratch ORDER BY v")]


async def test_single_reads_send_one_statement_each(env: Env) -> None:
    """A lookup is the API key SELECT and the wallets SELECT, each its own implicit transaction:
    no BEGIN or COMMIT on either database (a single statement reads one snapshot anyway)."""
    await env.api.top_up("cus_1", 100, "k1")
    with statements_sent(env) as sent:
        data = await env.api('query { customerWallets(customerId: "cus_1") { balance } }')
    assert data["customerWallets"] == [{"balance": 100}]
    if env.database.dialect.name == "postgresql":
        assert sent == ["AUTOCOMMIT/SELECT", "AUTOCOMMIT/SELECT"], sent
    else:
        assert sent == ["SELECT", "SELECT"], sent


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("customerId", "cus\ud800", "INVALID_CUSTOMER_ID"),
        ("description", "d\udfff", "INVALID_INPUT"),
        ("reference", "\ud800r", "INVALID_INPUT"),
        ("idempotencyKey", "k\udc00", "INVALID_INPUT"),
    ],
)
async def test_lone_surrogates_are_typed_errors_and_write_nothing(
    env: Env, field: str, value: str, code: str
) -> None:
    """JSON may carry "\\ud800" (a lone surrogate); no database stores it, so it is invalid
    input, never a masked internal error, and a lookup of such a customer is refused alike."""
    await env.api.top_up("cus_1", 100, "seed")
    before = await env.counts()
    change = {"customerId": "cus_1", "currency": "usd", "amount": 5, "idempotencyKey": "k1"}
    for mutation, query in (("topUpWallet", TOP_UP), ("chargeWallet", CHARGE)):
        body = json.dumps({"query": query, "variables": {"input": {**change, field: value}}})
        response = await env.api.client.post(
            "/graphql",
            content=body.encode(),  # ASCII: json.dumps escapes the surrogate
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        payload = response.json()["data"][mutation]
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [
            (code, ["input", field])
        ]
    assert await env.counts() == before
    lookup = json.dumps(
        {
            "query": "query($c: String!) { customerWallets(customerId: $c) { id } }",
            "variables": {"c": "cus\ud800"},
        }
    )
    for _ in range(2):  # the second one from the parser's and validator's caches
        response = await env.api.client.post(
            "/graphql",
            content=lookup.encode(),
            headers={"Authorization": f"Bearer {env.api.key}", "Content-Type": "application/json"},
        )
        body = response.json()
        assert body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CUSTOMER_ID"


async def test_a_cancelled_wait_never_releases_the_next_writers_lock(tmp_path: Path) -> None:
    """A writer cancelled while it waits for the writer lock leaves a thread that may still get
    the lock later; that must never end the lock of the writer whose turn it is then."""
    database = tmp_path / "w.db"
    database.touch()
    url = f"sqlite:///{database}"
    queue = SqliteWriterQueue(async_url(url), Settings(database_url=url))
    for _ in range(5):
        other = os.open(f"{database}.writer-lock", os.O_RDONLY | os.O_CREAT)
        fcntl.flock(other, fcntl.LOCK_EX)  # another process holds the lock

        async def write(inside: asyncio.Event, leave: asyncio.Event) -> None:
            async with queue.turn():
                inside.set()
                await leave.wait()

        cancelled = asyncio.create_task(write(asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        inside, leave = asyncio.Event(), asyncio.Event()
        second = asyncio.create_task(write(inside, leave))
        await asyncio.sleep(0.1)
        os.close(other)  # the other process lets go: the cancelled wait's thread may win first
        await asyncio.wait_for(inside.wait(), 10)
        await asyncio.sleep(0.2)  # time for the cancelled wait's thread and its clean-up
        probe = os.open(f"{database}.writer-lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the second writer still holds it
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        leave.set()
        await second
        with pytest.raises(asyncio.CancelledError):
            await cancelled


@contextmanager
def _group_commits() -> Iterator[list[float]]:
    """[groups, writes] of the group commits made in the block (from the metric), filled in
    when the block ends."""

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"gql_wallet_write_group_size_{name}") or 0.0

    before = [sample("count"), sample("sum")]
    found: list[float] = []
    yield found
    found.extend([sample("count") - before[0], sample("sum") - before[1]])


@asynccontextmanager
async def _table_locked(
    env: Env, lock: str = "LOCK TABLE wallets IN SHARE MODE"
) -> AsyncIterator[None]:
    """Another session holds `lock` (by default one that every balance UPDATE waits for), so
    the statements sent meanwhile queue up in this process; they go on when the block ends."""
    locker = await asyncpg.connect(env.settings.database_url)
    try:
        async with locker.transaction():
            await locker.execute(lock)
            yield
    finally:
        await locker.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_group_commit_keeps_each_writes_outcome(env: Env) -> None:
    """The writes waiting in a process go to PostgreSQL as one statement and one transaction,
    and each keeps exactly the outcome it would have had alone: applied, refused, replayed
    (the same key twice in one group, whichever of the two runs first) or refused for a
    reused key."""
    api = env.api
    await api.top_up("cus_1", 100, "seed")
    with _group_commits() as sizes:
        async with _table_locked(env):
            # Two writes occupy the sender (the first waits for the lock) ...
            blocked = await _one_by_one(api.top_up("cus_1", 1, "b1"), api.top_up("cus_2", 1, "b2"))
            # ... so these wait in the line and go together once the lock is gone.
            grouped = [
                asyncio.create_task(write)
                for write in (
                    api.top_up("cus_1", 10, "g1"),
                    api.charge("cus_1", 5, "g2"),
                    api.charge("cus_1", 10**6, "g3"),  # INSUFFICIENT_FUNDS
                    api.charge("cus_9", 1, "g4"),  # WALLET_NOT_FOUND
                    api.top_up("cus_3", 7, "g5"),  # creates the wallet
                    api.top_up("cus_3", 7, "g5"),  # the same write again: a replay
                    api.top_up("cus_3", 8, "seed"),  # a used key, another input
                )
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in blocked + grouped)
        results = await asyncio.gather(*blocked, *grouped)
    groups, writes = sizes
    assert writes == 9 and groups < 9, sizes  # at least one group of several writes
    g1, g2, g3, g4, g5, g5_again, g5_other = results[2:]
    assert g1["userErrors"] == [] and g2["userErrors"] == []
    assert codes(g3) == ["INSUFFICIENT_FUNDS"] and codes(g4) == ["WALLET_NOT_FOUND"]
    assert g5["wallet"]["balance"] == 7 and g5["transaction"] is not None
    applied = [r for r in (g5, g5_again) if r["transaction"] is not None]
    assert len(applied) == 2 and applied[0]["transaction"] == applied[1]["transaction"]
    assert codes(g5_other) == ["IDEMPOTENCY_KEY_REUSED"]
    # cus_1: 100 + 1 + 10 - 5; cus_2: 1; cus_3: 7, once.
    balances = {
        r["wallet"]["customerId"]: r["wallet"]["balance"]
        for r in await asyncio.gather(
            *(api.top_up(c, 1, f"check-{c}") for c in ("cus_1", "cus_2", "cus_3"))
        )
    }
    assert balances == {"cus_1": 107, "cus_2": 2, "cus_3": 8}
    # Wallets: cus_1..3; entries: seed, b1, b2, g1, g2, g5 and three checks; keys: those and
    # the two refusals (g3, g4).
    assert await env.counts() == (3, 9, 11)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_group_that_fails_sends_each_write_alone(env: Env) -> None:
    """When a group's statement raises, its transaction wrote nothing: each write is sent again
    alone, so only the write that fails gets the error, and nothing is written twice."""
    database = env.database
    org = await _organization_of(env)
    await env.api.top_up("cus_1", 100, "seed")
    missing_org = uuid.uuid4()  # no such organization: its key's INSERT breaks a foreign key
    with _group_commits() as sizes:
        async with _table_locked(env):
            blocked = await _one_by_one(
                ledger.top_up(database, org, _change("cus_1", 1, "b1")),
                ledger.top_up(database, org, _change("cus_2", 1, "b2")),
            )
            grouped = [
                asyncio.create_task(ledger.top_up(database, org, _change("cus_1", 10, "g1"))),
                asyncio.create_task(ledger.top_up(database, missing_org, _change("cus_1", 1, "x"))),
                asyncio.create_task(ledger.charge(database, org, _change("cus_1", 5, "g2"))),
            ]
            await asyncio.sleep(0.3)
        results = await asyncio.gather(*blocked, *grouped, return_exceptions=True)
    assert isinstance(results[3], asyncpg.ForeignKeyViolationError), results
    for result in (*results[:3], results[4]):
        assert isinstance(result, ledger.WriteResult) and result.transaction is not None, result
    assert results[4].wallet.balance in (105, 106)  # type: ignore[union-attr]
    _groups, writes = sizes
    assert writes == 4, sizes  # b1, b2, then g1 and g2 alone; the failed write counts nowhere
    assert await env.counts() == (2, 5, 5)


async def _one_by_one(*writes: Coroutine[Any, Any, Any]) -> list[asyncio.Task[Any]]:
    """Start each write once the one before has been sent or queued (and waits for the
    lock): two writes so occupy the senders of the process's line (one for balance changes,
    two for reads), and what comes next waits in the line."""
    tasks = []
    for write in writes:
        tasks.append(asyncio.create_task(write))
        await asyncio.sleep(0.2)
    return tasks


def _change(customer_id: str, amount: int, key: str) -> ledger.BalanceChange:
    return ledger.BalanceChange(customer_id, "usd", amount, key)


async def _organization_of(env: Env) -> uuid.UUID:
    async with env.database.read_transaction() as conn:
        return (
            await conn.execute(
                select(repository.organizations.c.id).where(
                    repository.organizations.c.name == "org-a"
                )
            )
        ).scalar_one()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_write_cancelled_in_the_line_is_never_sent(env: Env) -> None:
    """A write whose caller gives up while it waits for a sender is taken out of the line."""
    database = env.database
    org = await _organization_of(env)
    async with _table_locked(env):
        blocked = await _one_by_one(
            ledger.top_up(database, org, _change("cus_1", 1, "b1")),
            ledger.top_up(database, org, _change("cus_2", 1, "b2")),
        )
        waiting = asyncio.create_task(ledger.top_up(database, org, _change("cus_3", 1, "w")))
        await asyncio.sleep(0.1)
        waiting.cancel()
    await asyncio.gather(*blocked)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await env.counts() == (2, 2, 2)  # nothing of cus_3


LOOKUP = 'query { customerWallets(customerId: "cus_1") { balance } }'


def _group_sizes_of(monkeypatch: pytest.MonkeyPatch, module: Any, group_read: str) -> list[int]:
    """The size of every group that `<module>.<group_read>` (a repository module's group read)
    sends from now on."""
    sizes: list[int] = []
    send = getattr(module, group_read)

    async def recorded(conn: Any, items: list[Any]) -> list[Any]:
        sizes.append(len(items))
        return await send(conn, items)

    monkeypatch.setattr(module, group_read, recorded)
    return sizes


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_key_reads_of_waiting_requests_go_together(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API key reads waiting in a process are one statement on PostgreSQL, and each
    request still gets its own key's answer: its organization's data, or a 401 for an unknown
    or revoked key (revocation counts from the next request on, as before)."""
    sizes = _group_sizes_of(monkeypatch, repository.keys, "_find_api_keys")
    await env.api.top_up("cus_1", 100, "a")
    await env.other.top_up("cus_1", 5, "b")
    revoked = await env.new_key("org-a")
    revoked_id = auth.parse_token(revoked.key)
    assert revoked_id is not None
    async with env.database.write_transaction() as conn:
        assert await repository.revoke_api_key(conn, revoked_id[1], repository.now_utc())
    unknown = Api(env.client, auth.new_token(auth.API_KEY_PREFIX)[0])
    async with _table_locked(env, "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"):
        blocked = await _one_by_one(env.api.post(LOOKUP), env.other.post(LOOKUP))
        grouped = [
            asyncio.create_task(client.post(LOOKUP))
            for client in (env.api, unknown, env.other, revoked, env.api)
        ]
        await asyncio.sleep(0.3)
    responses = await asyncio.gather(*blocked, *grouped)
    assert max(sizes) >= 2, sizes
    answers = [
        r.json()["data"]["customerWallets"] if r.status_code == 200 else r.status_code
        for r in responses
    ]
    a, b = [{"balance": 100}], [{"balance": 5}]
    assert answers == [a, b, a, 401, b, 401, a], answers


async def _session_of(api: Api, customer_id: str) -> tuple[str, str]:
    """A new customer session's token and id."""
    data = await api(
        "mutation($input: CreateCustomerSessionInput!) { createCustomerSession(input: $input) "
        "{ token customerSession { id } } }",
        {"input": {"customerId": customer_id}},
    )
    return data["createCustomerSession"]["token"], data["createCustomerSession"]["customerSession"][
        "id"
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_session_reads_of_waiting_requests_go_together(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer-session token reads waiting in a process are one statement on PostgreSQL,
    like the API key reads, and each request still gets its own answer: its customer's wallets,
    or a 401 for an unknown session, a revoked session, or a session whose API key was revoked
    (each counts from the next request on)."""
    sizes = _group_sizes_of(monkeypatch, repository.sessions, "_find_sessions")
    await env.api.top_up("cus_1", 100, "a")
    await env.other.top_up("cus_1", 5, "b")
    mine = Api(env.client, (await _session_of(env.api, "cus_1"))[0])
    other = Api(env.client, (await _session_of(env.other, "cus_1"))[0])
    revoked_token, revoked_id = await _session_of(env.api, "cus_1")
    revoke = (
        "mutation($id: ID!) { revokeCustomerSession(input: {id: $id}) { userErrors { code } } }"
    )
    assert (await env.api(revoke, {"id": revoked_id}))["revokeCustomerSession"]["userErrors"] == []
    key = await env.new_key("org-a")
    of_revoked_key = Api(env.client, (await _session_of(key, "cus_1"))[0])
    key_id = auth.parse_token(key.key)
    assert key_id is not None
    async with env.database.write_transaction() as conn:
        assert await repository.revoke_api_key(conn, key_id[1], repository.now_utc())
    unknown = Api(env.client, auth.new_token(auth.SESSION_PREFIX)[0])
    revoked = Api(env.client, revoked_token)
    async with _table_locked(env, "LOCK TABLE customer_sessions IN ACCESS EXCLUSIVE MODE"):
        blocked = await _one_by_one(mine.post(LOOKUP), other.post(LOOKUP))
        grouped = [
            asyncio.create_task(client.post(LOOKUP))
            for client in (mine, unknown, other, revoked, of_revoked_key, mine)
        ]
        await asyncio.sleep(0.3)
    responses = await asyncio.gather(*blocked, *grouped)
    assert max(sizes) >= 2, sizes
    answers = [
        r.json()["data"]["customerWallets"] if r.status_code == 200 else r.status_code
        for r in responses
    ]
    a, b = [{"balance": 100}], [{"balance": 5}]
    assert answers == [a, b, a, 401, b, 401, 401, a], answers


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_wallet_reads_of_waiting_lookups_go_together(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `customerWallets` reads waiting in a process are one statement on PostgreSQL, and
    each lookup gets exactly its own customer's wallets, in order, across organizations."""
    sizes = _group_sizes_of(monkeypatch, repository.wallet_queries, "_customers_wallets")
    await env.api.top_up("cus_1", 100, "a")
    await env.api.top_up("cus_1", 7, "a-eur", currency="eur")
    await env.other.top_up("cus_1", 5, "b")
    session = await env.customer_session(env.api, "cus_1")
    query = 'query { customerWallets(customerId: "%s") { currency balance } }'
    async with _table_locked(env, "LOCK TABLE wallets IN ACCESS EXCLUSIVE MODE"):
        blocked = await _one_by_one(env.api.post(query % "cus_1"), env.other.post(query % "cus_1"))
        grouped = [
            asyncio.create_task(client.post(query % customer))
            for client, customer in (
                (env.api, "cus_1"),
                (env.other, "cus_1"),
                (env.api, "cus_2"),  # no wallets
                (session, "cus_1"),
                (env.api, "cus_1"),
            )
        ]
        await asyncio.sleep(0.3)
    responses = await asyncio.gather(*blocked, *grouped)
    assert max(sizes) >= 2, sizes
    answers = [r.json()["data"]["customerWallets"] for r in responses]
    a = [{"currency": "usd", "balance": 100}, {"currency": "eur", "balance": 7}]
    b = [{"currency": "usd", "balance": 5}]
    assert answers == [a, b, a, b, [], a, a], answers


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_group_that_breaks_after_the_database_fails_only_itself(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not the database's (a bug in reading a group's answer) is the answer
    of that group's requests, masked; the line goes on serving, and no request waits forever."""
    group_read = repository.keys._find_api_keys
    broken = [True]

    async def once_broken(conn: Any, public_ids: list[str]) -> list[Any]:
        rows = await group_read(conn, public_ids)
        if broken[0]:
            broken[0] = False
            raise RuntimeError("a bug")
        return rows

    monkeypatch.setattr(repository.keys, "_find_api_keys", once_broken)
    await env.api.top_up("cus_1", 100, "a")
    async with _table_locked(env, "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"):
        blocked = await _one_by_one(env.api.post(LOOKUP), env.other.post(LOOKUP))
        grouped = [asyncio.create_task(env.api.post(LOOKUP)) for _ in range(3)]
        await asyncio.sleep(0.3)
    responses = await asyncio.wait_for(asyncio.gather(*blocked, *grouped), 10)
    assert [r.status_code for r in responses] == [200, 200, 500, 500, 500]
    assert responses[2].json()["errors"][0]["message"] == "Internal server error."
    after = await env.api.post(LOOKUP)
    assert after.json()["data"]["customerWallets"] == [{"balance": 100}]


# gql_wallet_balance_change's parameters, in order, as migrations/sql/ (newest) declares them.
_CALL = (
    "SELECT outcome FROM gql_wallet_balance_change($1, $2, $3, 'cus_1', 'usd', 'TOP_UP', $4, 0, "
    "9007199254740991, NULL, NULL, '{}', true, $5, $6, $7, 'WALLET_NOT_FOUND', "
    "'BALANCE_LIMIT_EXCEEDED', $8, 'PAID', 50, NULL, $9, 'EXPIRATION', 'gql-wallet:expiration:')"
)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_write_alone_that_a_deadlock_rolls_back_is_sent_again(env: Env) -> None:
    """Another process's group holds cus_1's wallet for its first write and then claims the key
    this process's write (alone) has claimed, while that write waits for the wallet: a
    deadlock. PostgreSQL rolls this write back; it is sent again, and replays the group's
    outcome for its key instead of failing the request."""
    from tests.test_subscriptions import organization_of

    await env.api.top_up("cus_1", 100, "seed")
    organization = await organization_of(env.database, env.api.key)
    change = ledger.BalanceChange("cus_1", "usd", 5, "raced")
    request = ledger.service._canonical_request(ledger.TransactionType.TOP_UP, change, "usd")
    block = ledger.credits.burn_key(50, None, ledger.credits.CreditCategory.PAID)
    group = await asyncpg.connect(env.settings.database_url)
    try:
        async with group.transaction():

            async def call(key: str, request: str) -> str:
                return await group.fetchval(  # type: ignore[no-any-return]
                    _CALL, organization, key, request, 5, uuid.uuid4(), uuid.uuid4(),
                    repository.LEDGER_CHANNEL, uuid.uuid4(), block,
                )  # fmt: skip

            assert await call("first", '{"other":"request"}') == "applied"  # holds the wallet
            alone = asyncio.create_task(env.api.top_up("cus_1", 5, "raced"))
            await _until_a_session_waits_for_a_lock(env)  # the key claimed, the wallet awaited
            assert await call("raced", request) == "applied"  # the deadlock's survivor
        answer = await alone
    finally:
        await group.close()
    assert answer["userErrors"] == [] and answer["transaction"] is not None
    assert answer["wallet"]["balance"] == 110  # seed, first, and raced once
    async with env.database.read_connection() as conn:
        rows = await conn.execute(
            select(repository.transactions.c.idempotency_key).where(
                repository.transactions.c.idempotency_key == "raced"
            )
        )
        assert len(rows.all()) == 1


async def _until_a_session_waits_for_a_lock(env: Env) -> None:
    probe = await asyncpg.connect(env.settings.database_url)
    try:
        for _ in range(200):
            waiting = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the write alone never waited for the wallet")
    finally:
        await probe.close()
