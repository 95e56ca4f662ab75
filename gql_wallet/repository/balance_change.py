"""PostgreSQL: a whole balance change in one call of its server-side function, in group commits."""

from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import asyncpg
import orjson
from sqlalchemy import (
    Boolean,
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
    HoldRecord,
    TransactionRecord,
    WalletRecord,
    transactions,
    utc,
    wallet_holds,
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
    hold: HoldRecord | None = None  # a hold write's hold


class _LedgerFunction:
    """One of the ledger functions of migrations/sql/ (newest version): a call alone, and
    several calls in one statement (one transaction), each with its own outcome row.

    The group statement calls the function for each record of a JSON array in turn (a nested
    loop over the array, in its order), so each call sees the writes before it. `i` is the
    record's position in the caller's list. Only fixed function, column and parameter names go
    into the SQL text; the values travel as parameters."""

    def __init__(
        self, name: str, params: tuple[str, ...], types: dict[str, str], *, hold: bool = False
    ) -> None:
        columns, typed = _outcome_columns(hold)
        arguments = ", ".join(f":{param}" for param in params)
        self.alone = DriverRead(
            text(
                f"SELECT {', '.join(columns)} FROM {name}({arguments}) AS r"  # noqa: S608
            ).columns(*typed)
        )
        fields = ", ".join(
            f"{param} {types.get(param, 'text')}" for param in (*params, "i") if param != "channel"
        )
        arguments = ", ".join(
            ":channel" if param == "channel" else f"c.{param}" for param in params
        )
        self.group = DriverRead(
            text(
                f"SELECT c.i, {', '.join(columns)} "  # noqa: S608
                f"FROM jsonb_to_recordset(CAST(:calls AS jsonb)) AS c({fields}) "
                f"CROSS JOIN LATERAL {name}({arguments}) AS r"
            ).columns(column("i", Integer()), *typed)
        )


def _outcome_columns(hold: bool) -> tuple[list[str], list[Any]]:
    """The function's outcome with the wallet, entry and (`hold`) hold flattened into typed
    columns (w_<column>, t_<column>, h_<column>), so that SQLAlchemy converts them like table
    rows. A hold function that writes no entry returns a null one."""
    columns = ["r.outcome", "r.refusal_code"]
    typed = [column("outcome", String()), column("refusal_code", String())]
    parts = [("w", "wallet", wallets), ("t", "entry", transactions)]
    if hold:
        parts.append(("h", "hold", wallet_holds))
    for prefix, composite, table in parts:
        for col in table.c:
            columns.append(f"(r.{composite}).{col.name} AS {prefix}_{col.name}")
            typed.append(column(f"{prefix}_{col.name}", col.type))
    return columns, typed


# The SQL types of the parameters that are not text, for the group's JSON records.
_TYPES = {
    "organization_id": "uuid",
    "delta": "bigint",
    "floor": "bigint",
    "ceiling": "bigint",
    "amount": "bigint",
    "create_missing": "boolean",
    "restore": "boolean",
    "wallet_id": "uuid",
    "entry_id": "uuid",
    "block_id": "uuid",
    "original_id": "uuid",
    "priority": "integer",
    "expires_at": "timestamptz",
    "undoable_types": "text[]",
    "hold_id": "uuid",
    "seconds": "integer",
    "capture": "boolean",
    "i": "integer",
}


_BALANCE_CHANGE = _LedgerFunction(
    "gql_wallet_balance_change",
    (
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
        "metadata",
        "create_missing",
        "wallet_id",
        "entry_id",
        "channel",
        "missing_code",
        "refused_code",
        "block_id",
        "category",
        "priority",
        "expires_at",
        "burn_key",
        "expiration_type",
        "expiration_key_prefix",
    ),
    _TYPES,
)


_UNDO = _LedgerFunction(
    "gql_wallet_undo",
    (
        "organization_id",
        "idempotency_key",
        "request",
        "type",
        "restore",
        "original_id",
        "amount",
        "undoable_types",
        "ceiling",
        "description",
        "metadata",
        "entry_id",
        "channel",
        "not_found_code",
        "wrong_type_code",
        "exceeds_code",
        "limit_code",
        "expiration_type",
        "expiration_key_prefix",
    ),
    _TYPES,
)


_CREATE_HOLD = _LedgerFunction(
    "gql_wallet_create_hold",
    (
        "organization_id",
        "idempotency_key",
        "request",
        "customer_id",
        "currency",
        "amount",
        "seconds",
        "description",
        "reference",
        "metadata",
        "hold_id",
        "channel",
        "missing_code",
        "refused_code",
        "expiration_type",
        "expiration_key_prefix",
    ),
    _TYPES,
    hold=True,
)


_RESOLVE_HOLD = _LedgerFunction(
    "gql_wallet_resolve_hold",
    (
        "organization_id",
        "idempotency_key",
        "request",
        "hold_id",
        "capture",
        "amount",
        "description",
        "metadata",
        "entry_id",
        "channel",
        "capture_type",
        "not_found_code",
        "captured_code",
        "voided_code",
        "expired_code",
        "exceeds_code",
        "expiration_type",
        "expiration_key_prefix",
    ),
    _TYPES,
    hold=True,
)


# A write's wallet and ledger entry, read from its outcome row's w_ and t_ columns in the
# records' field order, one attrgetter call each. A wallet a write returns has no expiry due:
# the write has made every one that was due under its lock.
_OUTCOME_WALLET = attrgetter(*(f"w_{name}" for name in WalletRecord._fields[:-1]))


_OUTCOME_ENTRY = attrgetter(*(f"t_{name}" for name in TransactionRecord._fields))


_OUTCOME_HOLD = attrgetter(*(f"h_{name}" for name in HoldRecord._fields[:-1]))


def _outcome(row: Any) -> BalanceChangeOutcome:
    wallet = transaction = None
    if row.w_seq is not None:
        (
            seq, id_, organization_id, customer_id, currency, balance, created_at, modified_at,
            held_balance,
        ) = _OUTCOME_WALLET(row)  # fmt: skip
        wallet = WalletRecord(
            seq, id_, organization_id, customer_id, currency, balance, utc(created_at),
            utc(modified_at), held_balance, False,
        )  # fmt: skip
    if row.t_seq is not None:
        (
            seq, id_, wallet_seq, type_, amount, balance_after, description, reference,
            idempotency_key, created_at, reverses_seq, held_after, metadata,
        ) = _OUTCOME_ENTRY(row)  # fmt: skip
        transaction = TransactionRecord(
            seq, id_, wallet_seq, type_, amount, balance_after, description, reference,
            idempotency_key, utc(created_at), reverses_seq, held_after, metadata,
        )  # fmt: skip
    hold = None
    if getattr(row, "h_seq", None) is not None:
        # As the function left it, under the wallet's lock: an OPEN hold is not past expiry.
        hold = HoldRecord.from_row(_HoldRow._make((*_OUTCOME_HOLD(row), False)))
    return BalanceChangeOutcome(row.outcome, row.refusal_code, wallet, transaction, hold)


_HoldRow = namedtuple("_HoldRow", HoldRecord._fields)  # type: ignore[misc]


async def _send_one(function: _LedgerFunction, conn: DriverConnection, call: dict[str, Any]) -> Any:
    rows = await function.alone.fetchall(conn, {**call, "channel": LEDGER_CHANNEL})
    return _outcome(rows[0])


async def _send_group(
    function: _LedgerFunction, conn: AsyncConnection, calls: list[dict[str, Any]], order: Any
) -> list[BalanceChangeOutcome]:
    """Several calls in one statement and one transaction; their outcomes, in `calls`' order.

    The calls run sorted by `order` (stable), so that groups sent at the same time by other
    processes take the wallets' row locks in one order and cannot deadlock on them."""
    ordered = sorted(range(len(calls)), key=lambda i: order(calls[i]))
    records = [{**calls[i], "i": i} for i in ordered]
    rows = await function.group.fetchall(
        conn, {"calls": orjson.dumps(records, default=str).decode(), "channel": LEDGER_CHANNEL}
    )
    outcomes: list[BalanceChangeOutcome | None] = [None] * len(calls)
    for row in rows:
        outcomes[row.i] = _outcome(row)
    if any(outcome is None for outcome in outcomes):
        raise RuntimeError("the group statement did not answer every write")
    return outcomes  # type: ignore[return-value]


def lock_order(organization_id: uuid.UUID, customer_id: str, currency: str) -> tuple[str, str, str]:
    """The order in which one transaction locks several wallets, everywhere: by owner."""
    return (str(organization_id), customer_id, currency)


def _owner_order(call: dict[str, Any]) -> tuple[str, str, str]:
    return lock_order(call["organization_id"], call["customer_id"], call["currency"])


async def send_balance_change(conn: DriverConnection, call: dict[str, Any]) -> BalanceChangeOutcome:
    """One write alone: `call` holds the function's parameters (see `apply_balance_change`)."""
    return await _send_one(_BALANCE_CHANGE, conn, call)  # type: ignore[no-any-return]


async def send_balance_changes(
    conn: AsyncConnection, calls: list[dict[str, Any]]
) -> list[BalanceChangeOutcome]:
    return await _send_group(_BALANCE_CHANGE, conn, calls, _owner_order)


async def apply_balance_change(database: Database, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a whole balance change in one statement, by the function of migrations/sql/
    (its newest version), in a group commit with the other writes waiting in this process
    (`Database.run_grouped`: one statement and one transaction for the group, each write with
    its own outcome). `call` holds the function's parameters but the IDs it makes for a new
    wallet, entry and block (ledger.store.BalanceChangeCall)."""
    return await _grouped(
        database,
        send_balance_changes,
        send_balance_change,
        {
            **call,
            "wallet_id": uuid.uuid4(),
            "entry_id": uuid.uuid4(),
            "block_id": None if call["category"] is None else uuid.uuid4(),
        },
    )


async def _grouped(
    database: Database,
    send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
    send_one: Callable[[DriverConnection, Any], Awaitable[BalanceChangeOutcome]],
    call: dict[str, Any],
) -> BalanceChangeOutcome:
    return await database.run_grouped(
        send_group,
        send_one,
        call,
        observe=metrics.WRITE_GROUP_SIZE.observe,
        senders=1,  # one group in flight: larger groups, fewer commits (see db.groups.PgGroupCommit)
    )


def _line(
    function: _LedgerFunction, order: Callable[[dict[str, Any]], Any]
) -> tuple[
    Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
    Callable[[DriverConnection, Any], Awaitable[BalanceChangeOutcome]],
]:
    """The group and single senders of one ledger function: its own line of group commits."""

    async def send_group(conn: AsyncConnection, calls: list[Any]) -> list[Any]:
        return await _send_group(function, conn, calls, order)

    async def send_one(conn: DriverConnection, call: Any) -> BalanceChangeOutcome:
        return await _send_one(function, conn, call)  # type: ignore[no-any-return]

    return send_group, send_one


_UNDOS = _line(_UNDO, lambda call: str(call["original_id"]))
_HOLD_CREATIONS = _line(_CREATE_HOLD, _owner_order)
_HOLD_RESOLUTIONS = _line(_RESOLVE_HOLD, lambda call: str(call["hold_id"]))


async def apply_undo(database: Database, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a refund or reversal in one call of `gql_wallet_undo`, grouped like a balance
    change (on its own line). `call` holds its parameters but the new entry's ID."""
    return await _grouped(database, *_UNDOS, {**call, "entry_id": uuid.uuid4()})


async def apply_create_hold(database: Database, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a new hold in one call of `gql_wallet_create_hold`, grouped (on its own
    line). `call` holds its parameters but the new hold's ID."""
    return await _grouped(database, *_HOLD_CREATIONS, {**call, "hold_id": uuid.uuid4()})


async def apply_resolve_hold(database: Database, call: dict[str, Any]) -> BalanceChangeOutcome:
    """PostgreSQL: a capture or void in one call of `gql_wallet_resolve_hold`, grouped (on its
    own line). `call` holds its parameters but the new entry's ID."""
    return await _grouped(database, *_HOLD_RESOLUTIONS, {**call, "entry_id": uuid.uuid4()})


# The wallets as the function returns them: no expiry is due in a wallet it has just locked.
_EXPIRE = DriverRead(
    text(
        "SELECT w.seq, w.id, w.organization_id, w.customer_id, w.currency, w.balance, "
        "w.created_at, w.modified_at, w.held_balance, false AS expiry_due FROM gql_wallet_expire("
        "CAST(:seqs AS bigint[]), :skip_locked, :channel, :expiration_type, "
        ":expiration_key_prefix) AS w"
    ).columns(
        *(wallets.c[name] for name in WalletRecord._fields[:-1]),
        column("expiry_due", Boolean()),
    )
)


async def expire_wallets(
    database: Database, seqs: list[int], expiration: dict[str, Any], *, skip_locked: bool
) -> list[WalletRecord]:
    """PostgreSQL: write the due expiries of these wallets (`gql_wallet_expire`), each under its
    row lock, taken in the order of `seqs`, and return them as they are after (with
    `skip_locked`, only those it could lock at once). `expiration`: the entries' type and key
    prefix (ledger.store.Expiration).

    A group commit of captures or refunds locks its wallets in another order than this (it
    knows holds and entries, not their owners), so the two can deadlock; PostgreSQL then rolls
    one back. Writing expiries again is safe (what one wrote, the next finds written), so this
    tries again rather than failing the read that asked for them."""
    parameters = {
        "seqs": list(dict.fromkeys(seqs)),
        "skip_locked": skip_locked,
        "channel": LEDGER_CHANNEL,
        **expiration,
    }
    attempts = 3
    while True:
        try:
            async with database.driver_connection() as conn:
                rows = await _EXPIRE.fetchall(conn, parameters)
            return [WalletRecord.from_row(row) for row in rows]
        except asyncpg.exceptions.DeadlockDetectedError:
            attempts -= 1
            if attempts == 0:
                raise
