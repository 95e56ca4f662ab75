"""PostgreSQL: a whole balance change in one call of its server-side function, in group commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import orjson
from sqlalchemy import (
    Integer,
    String,
    column,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gql_wallet import metrics
from gql_wallet.db import Database, DriverConnection
from gql_wallet.repository.driver import DriverRead
from gql_wallet.repository.feed import LEDGER_CHANNEL
from gql_wallet.repository.records import (
    TransactionRecord,
    WalletRecord,
    transactions,
    utc,
    wallets,
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
_OUTCOME_WALLET = attrgetter(*(f"w_{name}" for name in WalletRecord._fields))


_OUTCOME_ENTRY = attrgetter(*(f"t_{name}" for name in TransactionRecord._fields))


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


async def apply_balance_change(database: Database, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a whole balance change in one statement, by the function of migrations/sql/
    (its newest version), in a group commit with the other writes waiting in this process
    (`Database.run_grouped`: one statement and one transaction for the group, each write with its own
    outcome). `call` holds the function's parameters but the IDs it makes for a new wallet and
    entry (ledger.store.BalanceChangeCall)."""
    return await database.run_grouped(
        send_balance_changes,
        send_balance_change,
        {**call, "wallet_id": uuid.uuid4(), "entry_id": uuid.uuid4()},
        observe=metrics.WRITE_GROUP_SIZE.observe,
        senders=1,  # one group in flight: larger groups, fewer commits (see db.groups.PgGroupCommit)
    )
