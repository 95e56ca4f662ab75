"""The ledger service: top_up, charge, create_wallet. Every rule of a write is decided here.

Each write is: validate (nothing written on a bad input) -> decide the change (delta, the
balance range, what each refusal means) -> the store claims the idempotency key, applies the
change and records its outcome atomically (ledger/store.py) -> the answer, with the message of
its code. The first attempt that gets past validation decides the outcome for its key; every
retry with the same input replays it.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from gql_wallet import repository as repo
from gql_wallet.db import Database, DriverConnection, OnDemandConnection, checked_out
from gql_wallet.errors import ErrorCode, UserError
from gql_wallet.ledger import store
from gql_wallet.money import (
    MAX_DESCRIPTION_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    MAX_SAFE_INT,
    check_amount,
    check_owner,
    check_text,
    normalize_currency,
)
from gql_wallet.repository import TransactionRecord, WalletRecord


class TransactionType(enum.Enum):
    TOP_UP = "TOP_UP"
    CHARGE = "CHARGE"


@dataclass(frozen=True)
class BalanceChange:
    """The input of a top-up or a charge, as the caller sent it."""

    customer_id: str
    currency: str
    amount: int
    idempotency_key: str
    description: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class WriteResult:
    wallet: WalletRecord | None = None
    transaction: TransactionRecord | None = None
    errors: tuple[UserError, ...] = ()
    replayed: bool = False  # the first outcome of this idempotency key, returned again


# The refusals decided against the ledger: their messages and the field each points at. A
# store records only the code; the first answer and every replay take the rest from here.
_REFUSALS: dict[ErrorCode, tuple[str, tuple[str, ...]]] = {
    ErrorCode.WALLET_NOT_FOUND: (
        "This customer has no wallet in this currency.",
        ("input", "customerId"),
    ),
    ErrorCode.INSUFFICIENT_FUNDS: (
        "The balance does not cover this charge.",
        ("input", "amount"),
    ),
    ErrorCode.BALANCE_LIMIT_EXCEEDED: (
        f"This top-up would take the balance past {MAX_SAFE_INT}.",
        ("input", "amount"),
    ),
}
# What a change that would leave the balance range means, by kind; a charge to no wallet is
# WALLET_NOT_FOUND, while a top-up creates its wallet.
_OUT_OF_RANGE = {
    TransactionType.TOP_UP: ErrorCode.BALANCE_LIMIT_EXCEEDED,
    TransactionType.CHARGE: ErrorCode.INSUFFICIENT_FUNDS,
}
# Every balance stays in this range, whatever the concurrency: the store applies a change only
# if the locked row's balance after it is within these bounds.
BALANCE_FLOOR, BALANCE_CEILING = 0, MAX_SAFE_INT


def _refusal(code: ErrorCode) -> UserError:
    message, field = _REFUSALS[code]
    return UserError(code, message, field)


def _validate(change: BalanceChange) -> list[UserError]:
    return [
        *check_owner(change.customer_id, change.currency),
        *check_amount(change.amount),
        *check_text(
            change.idempotency_key, "idempotencyKey", MAX_IDEMPOTENCY_KEY_LENGTH, required=True
        ),
        *check_text(change.description, "description", MAX_DESCRIPTION_LENGTH, required=False),
        *check_text(change.reference, "reference", MAX_REFERENCE_LENGTH, required=False),
    ]


def _canonical_request(kind: TransactionType, change: BalanceChange, currency: str) -> str:
    """The normalised input as canonical JSON: equal text means the same request."""
    return json.dumps(
        {
            "type": kind.value,
            "customerId": change.customer_id,
            "currency": currency,
            "amount": change.amount,
            "description": change.description,
            "reference": change.reference,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


async def top_up(
    database: Database,
    organization_id: uuid.UUID,
    change: BalanceChange,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Add funds; the wallet is created by its first top-up. `conn`: the request's connection
    (a `db.DriverConnection`), for a replay on PostgreSQL instead of taking another."""
    return await _write(database, organization_id, TransactionType.TOP_UP, change, conn)


async def charge(
    database: Database,
    organization_id: uuid.UUID,
    change: BalanceChange,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Pay for usage from the balance; refused whole when the balance does not cover it."""
    return await _write(database, organization_id, TransactionType.CHARGE, change, conn)


async def _write(
    database: Database,
    organization_id: uuid.UUID,
    kind: TransactionType,
    change: BalanceChange,
    conn: DriverConnection | None,
) -> WriteResult:
    if errors := _validate(change):
        return WriteResult(errors=tuple(errors))
    currency = normalize_currency(change.currency)
    assert currency is not None  # validated above
    request = _canonical_request(kind, change, currency)
    done = await store.apply_balance_change(
        database,
        store.BalanceChangeCall(
            organization_id=organization_id,
            idempotency_key=change.idempotency_key,
            request=request,
            customer_id=change.customer_id,
            currency=currency,
            type=kind.value,
            delta=_delta(kind, change),
            floor=BALANCE_FLOOR,
            ceiling=BALANCE_CEILING,
            description=change.description,
            reference=change.reference,
            create_missing=kind is TransactionType.TOP_UP,
            missing_code=ErrorCode.WALLET_NOT_FOUND.value,
            refused_code=_OUT_OF_RANGE[kind].value,
            now=repo.now_utc(),
        ),
    )
    if done.outcome == "taken":
        # An earlier write holds the key and has committed (the claim waited for it, or ran
        # after it in the same group): replay its outcome.
        return await _replay_committed(database, conn, organization_id, change, currency, request)
    if done.outcome == "refused":
        return WriteResult(wallet=done.wallet, errors=(_refusal(ErrorCode(done.refusal_code)),))
    return WriteResult(wallet=done.wallet, transaction=done.transaction)


def _delta(kind: TransactionType, change: BalanceChange) -> int:
    return change.amount if kind is TransactionType.TOP_UP else -change.amount


async def _replay_committed(
    database: Database,
    conn: DriverConnection | None,
    organization_id: uuid.UUID,
    change: BalanceChange,
    currency: str,
    request: str,
) -> WriteResult:
    """The replay's reads, in one transaction: on SQLite on the writer thread's connection, so
    that no write of a request takes a pooled connection; on PostgreSQL on the request's."""
    if database.dialect.name == "sqlite":
        return await database.run_write(_replay, organization_id, change, currency, request)
    async with OnDemandConnection(database) as fallback:
        own = await checked_out(conn or fallback)
        async with own.begin():
            return await own.run_sync(_replay, organization_id, change, currency, request)


def _replay(
    conn: Connection,
    organization_id: uuid.UUID,
    change: BalanceChange,
    currency: str,
    request: str,
) -> WriteResult:
    record = repo.get_idempotency_record(conn, organization_id, change.idempotency_key)
    if record.request != request:
        return WriteResult(
            errors=(
                UserError(
                    ErrorCode.IDEMPOTENCY_KEY_REUSED,
                    "This idempotencyKey was already used with a different input.",
                    ("input", "idempotencyKey"),
                ),
            )
        )
    wallet = repo.get_wallet_by_owner(conn, organization_id, change.customer_id, currency)
    if record.transaction_seq is not None:
        transaction = repo.get_transaction_by_seq(conn, record.transaction_seq)
        return WriteResult(wallet=wallet, transaction=transaction, replayed=True)
    code = ErrorCode(record.error_code)
    return WriteResult(
        # WALLET_NOT_FOUND replays as it was first answered, without a wallet, even when a
        # top-up has created the wallet since.
        wallet=None if code is ErrorCode.WALLET_NOT_FOUND else wallet,
        errors=(_refusal(code),),
        replayed=True,
    )


async def create_wallet(
    database: Database, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WriteResult:
    """Create an empty wallet, or return the one that exists."""
    if errors := check_owner(customer_id, currency):
        return WriteResult(errors=tuple(errors))
    code = normalize_currency(currency)
    assert code is not None  # validated above
    return await database.run_write(_create_wallet, organization_id, customer_id, code)


def _create_wallet(
    conn: Connection, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WriteResult:
    repo.insert_wallet_if_missing(conn, organization_id, customer_id, currency, repo.now_utc())
    return WriteResult(
        wallet=repo.get_wallet_by_owner(conn, organization_id, customer_id, currency)
    )
