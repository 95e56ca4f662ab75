"""The ledger service: top_up, grant, charge, refund, reverse, the holds (create_hold,
capture_hold, void_hold), create_wallet, and the expiry of credits and holds before a read.
Every rule of a write is decided here.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from gql_wallet import repository as repo
from gql_wallet.db import Database, DriverConnection, OnDemandConnection, checked_out
from gql_wallet.errors import ErrorCode, UserError
from gql_wallet.ledger import store
from gql_wallet.ledger.credits import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    CreditCategory,
    burn_key,
)
from gql_wallet.money import (
    MAX_DESCRIPTION_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    MAX_SAFE_INT,
    canonical_metadata,
    check_amount,
    check_metadata,
    check_owner,
    check_text,
    normalize_currency,
)
from gql_wallet.repository import HoldRecord, TransactionRecord, WalletRecord


class TransactionType(enum.Enum):
    TOP_UP = "TOP_UP"
    CHARGE = "CHARGE"
    GRANT = "GRANT"
    REFUND = "REFUND"
    REVERSAL = "REVERSAL"
    EXPIRATION = "EXPIRATION"
    CAPTURE = "CAPTURE"


# Idempotency keys of this prefix name the entries the ledger writes on its own (an EXPIRATION's
# key is this prefix, "expiration:" and the entry's ID); a caller may not use them.
RESERVED_KEY_PREFIX = "gql-wallet:"
EXPIRATION = store.Expiration(
    type=TransactionType.EXPIRATION.value, key_prefix=f"{RESERVED_KEY_PREFIX}expiration:"
)


class InvalidDateTime(str):
    """A DateTime input that did not parse (the GraphQL scalar hands it on as it was sent), so
    that the operation refuses it with its own code instead of a request error."""


@dataclass(frozen=True)
class BalanceChange:
    """The input of a top-up, a grant or a charge, as the caller sent it."""

    customer_id: str
    currency: str
    amount: int
    idempotency_key: str
    description: str | None = None
    reference: str | None = None
    # A top-up's or grant's block: when it expires (None: never) and its priority.
    expires_at: datetime | InvalidDateTime | None = None
    priority: int | None = None
    metadata: object = None  # string keys to string values, as sent (checked here)


@dataclass(frozen=True)
class Undo:
    """The input of a refund or a reversal: the entry to undo, and how much (None: all that
    is left)."""

    transaction_id: str
    idempotency_key: str
    amount: int | None = None
    description: str | None = None
    metadata: object = None


@dataclass(frozen=True)
class NewHold:
    """The input of createHold, as the caller sent it (`expires_in_seconds` None: the default)."""

    customer_id: str
    currency: str
    amount: int
    idempotency_key: str
    expires_in_seconds: int | None = None
    description: str | None = None
    reference: str | None = None
    metadata: object = None


@dataclass(frozen=True)
class HoldResolution:
    """The input of captureHold (`amount` None: the whole hold; `metadata` None: the hold's)
    or voidHold."""

    hold_id: str
    idempotency_key: str
    amount: int | None = None
    description: str | None = None
    metadata: object = None


@dataclass(frozen=True)
class WriteResult:
    wallet: WalletRecord | None = None
    transaction: TransactionRecord | None = None
    errors: tuple[UserError, ...] = ()
    replayed: bool = False  # the first outcome of this idempotency key, returned again
    hold: HoldRecord | None = None  # a hold write's hold


# The refusals decided against the ledger: their messages and the field each points at. A
# store records only the code; the first answer and every replay take the rest from here.
_REFUSALS: dict[ErrorCode, tuple[str, tuple[str, ...]]] = {
    ErrorCode.WALLET_NOT_FOUND: (
        "This customer has no wallet in this currency.",
        ("input", "customerId"),
    ),
    ErrorCode.INSUFFICIENT_FUNDS: (
        "The available balance (the balance minus what open holds reserve) does not cover "
        "this amount.",
        ("input", "amount"),
    ),
    ErrorCode.BALANCE_LIMIT_EXCEEDED: (
        f"This write would take the balance past {MAX_SAFE_INT}.",
        ("input", "amount"),
    ),
    ErrorCode.TRANSACTION_NOT_FOUND: (
        "Your organization has no transaction with this ID.",
        ("input", "transactionId"),
    ),
    ErrorCode.TRANSACTION_NOT_REFUNDABLE: (
        "refundCharge undoes a CHARGE or CAPTURE, reverseTopUp a TOP_UP or GRANT; "
        "this transaction is neither.",
        ("input", "transactionId"),
    ),
    ErrorCode.REFUND_EXCEEDS_CHARGE: (
        "The refunds of a charge cannot exceed it: this is more than is left to refund.",
        ("input", "amount"),
    ),
    ErrorCode.REVERSAL_EXCEEDS_REMAINING: (
        "This is more than is left of the credits this top-up or grant added, less what open "
        "holds reserve from them.",
        ("input", "amount"),
    ),
    ErrorCode.HOLD_NOT_FOUND: (
        "Your organization has no hold with this ID.",
        ("input", "holdId"),
    ),
    ErrorCode.HOLD_ALREADY_CAPTURED: (
        "This hold has been captured already: a hold is resolved once.",
        ("input", "holdId"),
    ),
    ErrorCode.HOLD_ALREADY_VOIDED: (
        "This hold has been voided already: a hold is resolved once.",
        ("input", "holdId"),
    ),
    ErrorCode.HOLD_EXPIRED: (
        "This hold has expired: its funds are free again.",
        ("input", "holdId"),
    ),
    ErrorCode.CAPTURE_EXCEEDS_HOLD: (
        "A capture cannot exceed its hold's amount.",
        ("input", "amount"),
    ),
}
# What a change that would leave the balance range means, by kind; a charge to no wallet is
# WALLET_NOT_FOUND, while a top-up or grant creates its wallet.
_OUT_OF_RANGE = {
    TransactionType.TOP_UP: ErrorCode.BALANCE_LIMIT_EXCEEDED,
    TransactionType.GRANT: ErrorCode.BALANCE_LIMIT_EXCEEDED,
    TransactionType.CHARGE: ErrorCode.INSUFFICIENT_FUNDS,
}
# The credits each kind adds: a block of its category. A charge spends blocks instead.
_CREDITS = {
    TransactionType.TOP_UP: CreditCategory.PAID,
    TransactionType.GRANT: CreditCategory.PROMOTIONAL,
}
# What each undo may undo: a refund gives back what a charge or capture spent, a reversal takes
# back what a top-up or grant added.
_UNDOABLE = {
    TransactionType.REFUND: (TransactionType.CHARGE.value, TransactionType.CAPTURE.value),
    TransactionType.REVERSAL: (TransactionType.TOP_UP.value, TransactionType.GRANT.value),
}
REFUNDABLE = _UNDOABLE[TransactionType.REFUND]
REVERSIBLE = _UNDOABLE[TransactionType.REVERSAL]
_UNDO_EXCEEDS = {
    TransactionType.REFUND: ErrorCode.REFUND_EXCEEDS_CHARGE,
    TransactionType.REVERSAL: ErrorCode.REVERSAL_EXCEEDS_REMAINING,
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
        *_check_key(change.idempotency_key),
        *check_text(change.description, "description", MAX_DESCRIPTION_LENGTH, required=False),
        *check_text(change.reference, "reference", MAX_REFERENCE_LENGTH, required=False),
        *_check_expiry(change.expires_at),
        *_check_priority(change.priority),
        *check_metadata(change.metadata),
    ]


def _check_key(key: str) -> list[UserError]:
    errors = check_text(key, "idempotencyKey", MAX_IDEMPOTENCY_KEY_LENGTH, required=True)
    if not errors and key.startswith(RESERVED_KEY_PREFIX):
        errors.append(
            UserError(
                ErrorCode.INVALID_INPUT,
                f"Idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved for "
                "the entries the ledger writes itself.",
                ("input", "idempotencyKey"),
            )
        )
    return errors


def _check_expiry(expires_at: datetime | InvalidDateTime | None) -> list[UserError]:
    if expires_at is None:
        return []
    if isinstance(expires_at, InvalidDateTime):
        message = "expiresAt must be an ISO 8601 date and time with its UTC offset."
    elif expires_at <= repo.now_utc():
        message = "expiresAt must be in the future."
    else:
        return []
    return [UserError(ErrorCode.INVALID_EXPIRY, message, ("input", "expiresAt"))]


def _check_priority(priority: int | None) -> list[UserError]:
    if priority is None or MIN_PRIORITY <= priority <= MAX_PRIORITY:
        return []
    return [
        UserError(
            ErrorCode.INVALID_INPUT,
            f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY} (lower is spent first).",
            ("input", "priority"),
        )
    ]


def _target(
    target_id: str,
    field: str,
    not_found: ErrorCode,
    amount: int | None,
    key: str,
    description: str | None,
    metadata: object,
) -> uuid.UUID | WriteResult:
    """The ID of the entry or hold a write acts on, or its refusal: the input's checks, and
    `not_found` for an ID that is no UUID (nothing has it)."""
    errors = [
        *check_text(target_id, field, 100, required=True),
        *([] if amount is None else check_amount(amount)),
        *_check_key(key),
        *check_text(description, "description", MAX_DESCRIPTION_LENGTH, required=False),
        *check_metadata(metadata),
    ]
    if errors:
        return WriteResult(errors=tuple(errors))
    try:
        return uuid.UUID(target_id)
    except ValueError:
        return WriteResult(errors=(_refusal(not_found),))


def _canonical(fields: dict[str, object], metadata: object = None) -> str:
    """The normalised input as canonical JSON: equal text means the same request. Metadata
    (checked) only when there is some, so that a key first used before metadata existed still
    replays."""
    if metadata:
        fields = {**fields, "metadata": metadata}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _canonical_request(kind: TransactionType, change: BalanceChange, currency: str) -> str:
    fields: dict[str, object] = {
        "type": kind.value,
        "customerId": change.customer_id,
        "currency": currency,
        "amount": change.amount,
        "description": change.description,
        "reference": change.reference,
    }
    # Only when not the default, so that a key first used before blocks existed still replays.
    if change.expires_at is not None:
        assert isinstance(change.expires_at, datetime)  # validated
        fields["expiresAt"] = change.expires_at.astimezone(UTC).isoformat()
    if change.priority not in (None, DEFAULT_PRIORITY):
        fields["priority"] = change.priority
    return _canonical(fields, change.metadata)


async def top_up(
    database: Database,
    organization_id: uuid.UUID,
    change: BalanceChange,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Add funds; the wallet is created by its first top-up. `conn`: the request's connection
    (a `db.DriverConnection`), for a replay on PostgreSQL instead of taking another."""
    return await _write(database, organization_id, TransactionType.TOP_UP, change, conn)


async def grant(
    database: Database,
    organization_id: uuid.UUID,
    change: BalanceChange,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Add PROMOTIONAL credits (a GRANT entry and its block); the wallet is created if needed."""
    return await _write(database, organization_id, TransactionType.GRANT, change, conn)


async def charge(
    database: Database,
    organization_id: uuid.UUID,
    change: BalanceChange,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Pay for usage from the balance, from the blocks in burn-down order; refused whole when
    the balance does not cover it."""
    return await _write(database, organization_id, TransactionType.CHARGE, change, conn)


async def _write(
    database: Database,
    organization_id: uuid.UUID,
    kind: TransactionType,
    change: BalanceChange,
    conn: DriverConnection | None,
) -> WriteResult:
    if kind is TransactionType.CHARGE:  # a charge makes no block
        change = replace(change, expires_at=None, priority=None)
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
            metadata=canonical_metadata(change.metadata),
            create_missing=kind in _CREDITS,
            missing_code=ErrorCode.WALLET_NOT_FOUND.value,
            refused_code=_OUT_OF_RANGE[kind].value,
            block=_new_block(kind, change),
            expiration=EXPIRATION,
        ),
    )
    if done.outcome == "taken":
        # An earlier write holds the key and has committed (the claim waited for it, or ran
        # after it in the same group): replay its outcome.
        owner = (change.customer_id, currency)
        return await _replay_committed(
            database, conn, organization_id, change.idempotency_key, request, owner
        )
    return _answer(done)


def _answer(done: store.BalanceChangeOutcome) -> WriteResult:
    if done.outcome == "refused":
        assert done.refusal_code is not None
        return WriteResult(
            wallet=done.wallet, errors=(_refusal(ErrorCode(done.refusal_code)),), hold=done.hold
        )
    return WriteResult(wallet=done.wallet, transaction=done.transaction, hold=done.hold)


def _delta(kind: TransactionType, change: BalanceChange) -> int:
    return change.amount if kind in _CREDITS else -change.amount


def _new_block(kind: TransactionType, change: BalanceChange) -> store.NewBlock | None:
    category = _CREDITS.get(kind)
    if category is None:
        return None
    priority = DEFAULT_PRIORITY if change.priority is None else change.priority
    expires_at = change.expires_at
    assert not isinstance(expires_at, InvalidDateTime)  # validated
    return store.NewBlock(
        category=category.value,
        priority=priority,
        expires_at=expires_at,
        burn_key=burn_key(priority, expires_at, category),
    )


async def refund(
    database: Database, organization_id: uuid.UUID, undo: Undo, conn: DriverConnection | None = None
) -> WriteResult:
    """A REFUND of (part of) a charge: its credits back to the blocks it spent, the last first."""
    return await _undo(database, organization_id, TransactionType.REFUND, undo, conn)


async def reverse(
    database: Database, organization_id: uuid.UUID, undo: Undo, conn: DriverConnection | None = None
) -> WriteResult:
    """A REVERSAL of (part of) a top-up or grant, from the block it created only."""
    return await _undo(database, organization_id, TransactionType.REVERSAL, undo, conn)


async def _undo(
    database: Database,
    organization_id: uuid.UUID,
    kind: TransactionType,
    undo: Undo,
    conn: DriverConnection | None,
) -> WriteResult:
    original_id = _target(
        undo.transaction_id, "transactionId", ErrorCode.TRANSACTION_NOT_FOUND, undo.amount,
        undo.idempotency_key, undo.description, undo.metadata,
    )  # fmt: skip
    if isinstance(original_id, WriteResult):
        return original_id
    request = _canonical(
        {
            "type": kind.value,
            "transactionId": str(original_id),
            "amount": undo.amount,
            "description": undo.description,
        },
        undo.metadata,
    )
    done = await store.apply_undo(
        database,
        store.UndoCall(
            organization_id=organization_id,
            idempotency_key=undo.idempotency_key,
            request=request,
            type=kind.value,
            restore=kind is TransactionType.REFUND,
            original_id=original_id,
            amount=undo.amount,
            undoable_types=_UNDOABLE[kind],
            ceiling=BALANCE_CEILING,
            description=undo.description,
            metadata=canonical_metadata(undo.metadata),
            not_found_code=ErrorCode.TRANSACTION_NOT_FOUND.value,
            wrong_type_code=ErrorCode.TRANSACTION_NOT_REFUNDABLE.value,
            exceeds_code=_UNDO_EXCEEDS[kind].value,
            limit_code=ErrorCode.BALANCE_LIMIT_EXCEEDED.value,
            expiration=EXPIRATION,
        ),
    )
    if done.outcome == "taken":
        return await _replay_committed(
            database, conn, organization_id, undo.idempotency_key, request, original_id
        )
    return _answer(done)


# How long a hold lasts: 1 second to 7 days, 1 hour unless told.
HOLD_MIN_SECONDS, HOLD_MAX_SECONDS, HOLD_DEFAULT_SECONDS = 1, 7 * 24 * 3600, 3600


async def create_hold(
    database: Database,
    organization_id: uuid.UUID,
    new: NewHold,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Reserve `amount` of the wallet's available balance until the hold is captured, voided
    or expires; refused whole when the available balance does not cover it."""
    seconds = HOLD_DEFAULT_SECONDS if new.expires_in_seconds is None else new.expires_in_seconds
    errors = [
        *check_owner(new.customer_id, new.currency),
        *check_amount(new.amount),
        *_check_key(new.idempotency_key),
        *check_text(new.description, "description", MAX_DESCRIPTION_LENGTH, required=False),
        *check_text(new.reference, "reference", MAX_REFERENCE_LENGTH, required=False),
        *check_metadata(new.metadata),
    ]
    if not HOLD_MIN_SECONDS <= seconds <= HOLD_MAX_SECONDS:
        errors.append(
            UserError(
                ErrorCode.INVALID_INPUT,
                f"expiresInSeconds must be from {HOLD_MIN_SECONDS} to {HOLD_MAX_SECONDS} (7 days).",
                ("input", "expiresInSeconds"),
            )
        )
    if errors:
        return WriteResult(errors=tuple(errors))
    currency = normalize_currency(new.currency)
    assert currency is not None  # validated above
    request = _canonical(
        {
            "type": "HOLD",
            "customerId": new.customer_id,
            "currency": currency,
            "amount": new.amount,
            "expiresInSeconds": seconds,
            "description": new.description,
            "reference": new.reference,
        },
        new.metadata,
    )
    done = await store.apply_create_hold(
        database,
        store.CreateHoldCall(
            organization_id=organization_id,
            idempotency_key=new.idempotency_key,
            request=request,
            customer_id=new.customer_id,
            currency=currency,
            amount=new.amount,
            seconds=seconds,
            description=new.description,
            reference=new.reference,
            metadata=canonical_metadata(new.metadata),
            missing_code=ErrorCode.WALLET_NOT_FOUND.value,
            refused_code=ErrorCode.INSUFFICIENT_FUNDS.value,
            expiration=EXPIRATION,
        ),
    )
    if done.outcome == "taken":
        owner = (new.customer_id, currency)
        return await _replay_committed(
            database, conn, organization_id, new.idempotency_key, request, owner
        )
    return _answer(done)


async def capture_hold(
    database: Database,
    organization_id: uuid.UUID,
    resolution: HoldResolution,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """A CAPTURE entry of `amount` (default: the whole hold) from the blocks the hold reserved;
    the rest is released."""
    return await _resolve_hold(database, organization_id, resolution, True, conn)


async def void_hold(
    database: Database,
    organization_id: uuid.UUID,
    resolution: HoldResolution,
    conn: DriverConnection | None = None,
) -> WriteResult:
    """Release the whole hold; no ledger entry."""
    return await _resolve_hold(database, organization_id, resolution, False, conn)


async def _resolve_hold(
    database: Database,
    organization_id: uuid.UUID,
    resolution: HoldResolution,
    capture: bool,
    conn: DriverConnection | None,
) -> WriteResult:
    hold_id = _target(
        resolution.hold_id, "holdId", ErrorCode.HOLD_NOT_FOUND, resolution.amount,
        resolution.idempotency_key, resolution.description, resolution.metadata,
    )  # fmt: skip
    if isinstance(hold_id, WriteResult):
        return hold_id
    fields: dict[str, object] = {"type": "CAPTURE" if capture else "VOID", "holdId": str(hold_id)}
    # A capture given no metadata (or {}) takes its hold's.
    metadata = resolution.metadata if capture and resolution.metadata else None
    if capture:
        fields.update(amount=resolution.amount, description=resolution.description)
    request = _canonical(fields, metadata)
    done = await store.apply_resolve_hold(
        database,
        store.ResolveHoldCall(
            organization_id=organization_id,
            idempotency_key=resolution.idempotency_key,
            request=request,
            hold_id=hold_id,
            capture=capture,
            amount=resolution.amount if capture else None,
            description=resolution.description if capture else None,
            metadata=None if metadata is None else canonical_metadata(metadata),
            capture_type=TransactionType.CAPTURE.value,
            not_found_code=ErrorCode.HOLD_NOT_FOUND.value,
            captured_code=ErrorCode.HOLD_ALREADY_CAPTURED.value,
            voided_code=ErrorCode.HOLD_ALREADY_VOIDED.value,
            expired_code=ErrorCode.HOLD_EXPIRED.value,
            exceeds_code=ErrorCode.CAPTURE_EXCEEDS_HOLD.value,
            expiration=EXPIRATION,
        ),
    )
    if done.outcome == "taken":
        return await _replay_committed(
            database, conn, organization_id, resolution.idempotency_key, request, _HoldOf(hold_id)
        )
    return _answer(done)


@dataclass(frozen=True)
class _HoldOf:
    """The replay target of a capture or void: the hold's wallet."""

    hold_id: uuid.UUID


async def fresh_wallets(database: Database, records: list[WalletRecord]) -> list[WalletRecord]:
    """The wallets as a read may show them: any with an expiry due (by the database's clock, at
    the read) has it written first, and is shown as it is after. `records` itself when none
    is due."""
    # Locked in the order a group commit locks wallets in (by owner), so that the two cannot
    # deadlock on PostgreSQL.
    due = [record for record in records if record.expiry_due]
    if not due:
        return records
    due.sort(key=_owner_order)
    seqs = [record.seq for record in due]
    after = {w.seq: w for w in await store.expire_wallets(database, seqs, EXPIRATION)}
    return [after.get(record.seq, record) for record in records]


def _owner_order(record: WalletRecord) -> tuple[str, str, str]:
    return repo.lock_order(record.organization_id, record.customer_id, record.currency)


async def fresh_wallet(database: Database, record: WalletRecord | None) -> WalletRecord | None:
    return record if record is None else (await fresh_wallets(database, [record]))[0]


async def sweep_expiries(database: Database, batch: int = 500) -> list[WalletRecord]:
    """Write the due expiries of every wallet (the sweeper); the wallets written, as they are
    after. Safe in every process at once: a wallet another transaction holds is skipped (it is
    being written), and one written already has nothing due."""
    written: list[WalletRecord] = []
    while True:
        async with database.read_connection() as conn:
            due = await repo.due_wallets(conn, batch)
        if not due:
            return written
        done = await store.expire_wallets(database, due, EXPIRATION, skip_locked=True)
        written += done
        if len(due) < batch or not done:
            return written


async def _replay_committed(
    database: Database,
    conn: DriverConnection | None,
    organization_id: uuid.UUID,
    key: str,
    request: str,
    target: tuple[str, str] | uuid.UUID | _HoldOf,
) -> WriteResult:
    """The replay's reads, in one transaction: on SQLite on the writer thread's connection, so
    that no write of a request takes a pooled connection; on PostgreSQL on the request's.
    `target`: the (customer, currency) of a balance change or new hold, the original entry of
    an undo, the hold of a capture or void."""
    if database.dialect.name == "sqlite":
        result = await database.run_write(_replay, organization_id, key, request, target)
    else:
        async with OnDemandConnection(database) as fallback:
            own = await checked_out(conn or fallback)
            async with own.begin():
                result = await own.run_sync(_replay, organization_id, key, request, target)
    if result.wallet is None:
        return result
    return replace(result, wallet=await fresh_wallet(database, result.wallet))


def _replay(
    conn: Connection,
    organization_id: uuid.UUID,
    key: str,
    request: str,
    target: tuple[str, str] | uuid.UUID | _HoldOf,
) -> WriteResult:
    record = repo.get_idempotency_record(conn, organization_id, key)
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
    if isinstance(target, _HoldOf):
        found = repo.holds.hold_by_id(conn, organization_id, target.hold_id)
        assert found is not None  # a capture or void records its key only for a hold it found
        wallet = repo.credits.wallet_by_seq(conn, found.wallet_seq)
    elif isinstance(target, uuid.UUID):
        original = repo.credits.transaction_by_id(conn, organization_id, target)
        assert original is not None  # an undo records its key only for an entry it found
        wallet = repo.credits.wallet_by_seq(conn, original.wallet_seq)
    else:
        wallet = repo.get_wallet_by_owner(conn, organization_id, *target)
    hold = None if record.hold_seq is None else repo.holds.hold_by_seq(conn, record.hold_seq)
    if record.error_code is None:
        transaction = None
        if record.transaction_seq is not None:
            transaction = repo.get_transaction_by_seq(conn, record.transaction_seq)
        return WriteResult(wallet=wallet, transaction=transaction, replayed=True, hold=hold)
    code = ErrorCode(record.error_code)
    return WriteResult(
        # WALLET_NOT_FOUND replays as it was first answered, without a wallet, even when a
        # top-up has created the wallet since.
        wallet=None if code is ErrorCode.WALLET_NOT_FOUND else wallet,
        errors=(_refusal(code),),
        replayed=True,
        hold=hold,
    )


async def create_wallet(
    database: Database, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WriteResult:
    """Create an empty wallet, or return the one that exists."""
    if errors := check_owner(customer_id, currency):
        return WriteResult(errors=tuple(errors))
    code = normalize_currency(currency)
    assert code is not None  # validated above
    result = await database.run_write(_create_wallet, organization_id, customer_id, code)
    return replace(result, wallet=await fresh_wallet(database, result.wallet))


def _create_wallet(
    conn: Connection, organization_id: uuid.UUID, customer_id: str, currency: str
) -> WriteResult:
    repo.insert_wallet_if_missing(conn, organization_id, customer_id, currency, repo.now_utc())
    return WriteResult(
        wallet=repo.get_wallet_by_owner(conn, organization_id, customer_id, currency)
    )
