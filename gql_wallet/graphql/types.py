"""GraphQL object types, scalars and connections. Every type, field and value is described."""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from datetime import UTC, datetime
from typing import Annotated, Any, NewType, cast

import orjson
import strawberry
from graphql import GraphQLError, IntValueNode, ValueNode, value_from_ast_untyped
from strawberry.types import Info

from gql_wallet import repository as repo
from gql_wallet.errors import ErrorCode
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import RequestError, refuse
from gql_wallet.ledger import REFUNDABLE, REVERSIBLE, InvalidDateTime
from gql_wallet.money import (
    ARGUMENT,
    MAX_SAFE_INT,
    canonical_metadata,
    check_instant,
    check_metadata,
    check_period,
    parse_instant,
)
from gql_wallet.repository import (
    AllocationRecord,
    CreditBlockRecord,
    CustomerSessionRecord,
    HoldRecord,
    TransactionRecord,
    WalletRecord,
)

SafeInt = NewType("SafeInt", int)

# Longer integer literals are far outside any amount; refusing them early bounds the work.
_MAX_LITERAL_DIGITS = 30


def serialize_safe_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SAFE_INT:
        raise GraphQLError(f"SafeInt cannot represent {value!r}.")
    return value


def _parse_safe_int(value: Any) -> int:
    # Integers beyond 2^53-1 get through here so that the operation can refuse them with a
    # typed userError (INVALID_AMOUNT); floats, strings and booleans are never money.
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphQLError(f"SafeInt must be an integer JSON number, not {type(value).__name__}.")
    return value


def _parse_safe_int_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> int:
    if not isinstance(node, IntValueNode):
        raise GraphQLError("SafeInt must be an integer literal.")
    if len(node.value.lstrip("-")) > _MAX_LITERAL_DIGITS:
        raise GraphQLError("SafeInt literal is far outside the range ±9007199254740991.")
    return int(node.value)


SAFE_INT_SCALAR = strawberry.scalar(
    name="SafeInt",
    description=(
        "An integer in -(2^53-1)..2^53-1 (±9007199254740991), serialized as a JSON number: "
        "the range every JSON and JavaScript client reads exactly. Money amounts are SafeInts "
        "in the currency's minor unit (cents for usd); never floats."
    ),
    serialize=serialize_safe_int,
    parse_value=_parse_safe_int,
    parse_literal=_parse_safe_int_literal,
)


def serialize_datetime(value: Any) -> str:
    if type(value) is datetime and value.tzinfo is UTC:  # every value the records hold
        return value.isoformat()
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise GraphQLError(f"DateTime cannot represent {value!r}.")
    return value.astimezone(UTC).isoformat()


def _parse_datetime(value: Any) -> datetime | InvalidDateTime:
    """An input that does not parse is handed on as `InvalidDateTime`: the operation that takes
    it refuses it with its own typed code (e.g. INVALID_EXPIRY), writing nothing."""
    parsed = parse_instant(value)
    return InvalidDateTime(str(value)[:64]) if parsed is None else parsed


DATETIME_SCALAR = strawberry.scalar(
    name="DateTime",
    description="A point in time: ISO 8601 text with its UTC offset, "
    "e.g. 2026-11-26T04:28:47.123456+00:00. Always given in UTC.",
    serialize=serialize_datetime,
    parse_value=_parse_datetime,
)

Metadata = NewType("Metadata", object)


@functools.lru_cache(maxsize=4096)
def _metadata_object(stored: str) -> dict[str, str]:
    # Shared, read-only: the response's serializer only reads it.
    return cast(dict[str, str], orjson.loads(stored))


def _serialize_metadata(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # as stored: canonical JSON
        return _metadata_object(value)
    raise GraphQLError(f"Metadata cannot represent {type(value).__name__}.")


def _parse_metadata(value: Any) -> object:
    # Any JSON value gets through, so that the operation refuses a wrong one with a typed
    # userError (INVALID_INPUT on its field) instead of a request error.
    return value


def _parse_metadata_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> object:
    return value_from_ast_untyped(node, variables)


METADATA_SCALAR = strawberry.scalar(
    name="Metadata",
    description=(
        "Your own data on a write: a JSON object of string keys to string values, at most 50 "
        "keys of 1-40 characters, values of at most 500 characters (Stripe's limits). Stored "
        "with the entry (or hold) as given, and part of the idempotency comparison."
    ),
    serialize=_serialize_metadata,
    parse_value=_parse_metadata,
    parse_literal=_parse_metadata_literal,
)

# The Python types of the custom scalars, for every schema that renders these types.
SCALARS: dict[object, Any] = {
    SafeInt: SAFE_INT_SCALAR,
    datetime: DATETIME_SCALAR,
    Metadata: METADATA_SCALAR,
}

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


# The `first` argument of every connection.
FirstArgument = Annotated[
    int | None, strawberry.argument(description="Page size, 1 to 100 (default 20).")
]


def page_size(first: int | None) -> int:
    size = DEFAULT_PAGE_SIZE if first is None else first
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise RequestError(f"first must be between 1 and {MAX_PAGE_SIZE}.")
    return size


def encode_cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode()


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        prefix, _, seq = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition(":")
        if prefix == kind and seq.isdigit() and len(seq) < 20:
            return int(seq)
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise RequestError("after is not a cursor of this connection.")


@strawberry.enum(
    description="Why a write was refused. Stable codes: switch on these, not on messages."
)
class WalletErrorCode(enum.Enum):
    INVALID_AMOUNT = strawberry.enum_value(
        "INVALID_AMOUNT", description="amount is not a whole number from 1 to 2^53-1."
    )
    INVALID_CURRENCY = strawberry.enum_value(
        "INVALID_CURRENCY",
        description="currency is not an active ISO 4217 code (xts and xxx are refused).",
    )
    INVALID_CUSTOMER_ID = strawberry.enum_value(
        "INVALID_CUSTOMER_ID",
        description="customerId is empty, longer than 128 characters or has control characters.",
    )
    INVALID_INPUT = strawberry.enum_value(
        "INVALID_INPUT",
        description="A text field is too long (description > 500, reference > 255), the "
        "idempotencyKey is empty or longer than 255, or a text input holds NUL or a lone "
        "surrogate; `field` names it.",
    )
    INSUFFICIENT_FUNDS = strawberry.enum_value(
        "INSUFFICIENT_FUNDS",
        description="The balance does not cover the charge. Final for its key.",
    )
    BALANCE_LIMIT_EXCEEDED = strawberry.enum_value(
        "BALANCE_LIMIT_EXCEEDED",
        description="The top-up would take the balance past 2^53-1. Final for its key.",
    )
    WALLET_NOT_FOUND = strawberry.enum_value(
        "WALLET_NOT_FOUND",
        description="A charge to a wallet that does not exist. Final for its key.",
    )
    IDEMPOTENCY_KEY_REUSED = strawberry.enum_value(
        "IDEMPOTENCY_KEY_REUSED",
        description="The idempotencyKey was used before with a different input. Nothing written.",
    )
    CUSTOMER_SESSION_NOT_FOUND = strawberry.enum_value(
        "CUSTOMER_SESSION_NOT_FOUND",
        description="No customer session of your organization has this ID.",
    )
    INVALID_EXPIRY = strawberry.enum_value(
        "INVALID_EXPIRY",
        description="expiresAt is not an ISO 8601 time with its offset, or not in the future. "
        "Nothing written.",
    )
    TRANSACTION_NOT_FOUND = strawberry.enum_value(
        "TRANSACTION_NOT_FOUND",
        description="Your organization has no transaction with this ID. Nothing written.",
    )
    TRANSACTION_NOT_REFUNDABLE = strawberry.enum_value(
        "TRANSACTION_NOT_REFUNDABLE",
        description="refundCharge takes a CHARGE, reverseTopUp a TOP_UP or GRANT. Nothing written.",
    )
    REFUND_EXCEEDS_CHARGE = strawberry.enum_value(
        "REFUND_EXCEEDS_CHARGE",
        description="The refunds of a charge would exceed it. Final for its key.",
    )
    REVERSAL_EXCEEDS_REMAINING = strawberry.enum_value(
        "REVERSAL_EXCEEDS_REMAINING",
        description="More than is left of the block the top-up or grant created, less what "
        "open holds reserve from it (or more than the entry itself). Final for its key.",
    )
    HOLD_NOT_FOUND = strawberry.enum_value(
        "HOLD_NOT_FOUND",
        description="Your organization has no hold with this ID. Nothing written.",
    )
    HOLD_ALREADY_CAPTURED = strawberry.enum_value(
        "HOLD_ALREADY_CAPTURED",
        description="The hold was captured already (a hold is resolved once). Final for its key.",
    )
    HOLD_ALREADY_VOIDED = strawberry.enum_value(
        "HOLD_ALREADY_VOIDED",
        description="The hold was voided already (a hold is resolved once). Final for its key.",
    )
    HOLD_EXPIRED = strawberry.enum_value(
        "HOLD_EXPIRED",
        description="The hold's expiresAt has passed: its funds are free again. Final for its key.",
    )
    CAPTURE_EXCEEDS_HOLD = strawberry.enum_value(
        "CAPTURE_EXCEEDS_HOLD",
        description="The capture's amount is more than the hold's. Final for its key.",
    )
    WEBHOOK_URL_NOT_ALLOWED = strawberry.enum_value(
        "WEBHOOK_URL_NOT_ALLOWED",
        description="The endpoint URL is not https, or its host is or resolves to a private, "
        "loopback, link-local or other non-public address. Nothing written.",
    )
    WEBHOOK_ENDPOINT_NOT_FOUND = strawberry.enum_value(
        "WEBHOOK_ENDPOINT_NOT_FOUND",
        description="Your organization has no webhook endpoint with this ID. Nothing written.",
    )
    WEBHOOK_DELIVERY_NOT_FOUND = strawberry.enum_value(
        "WEBHOOK_DELIVERY_NOT_FOUND",
        description="Your organization has no webhook delivery with this ID. Nothing written.",
    )


def error_code(code: ErrorCode) -> WalletErrorCode:
    return WalletErrorCode[code.name]


@strawberry.enum(description="What kind of ledger entry a transaction is.")
class WalletTransactionType(enum.Enum):
    TOP_UP = strawberry.enum_value("TOP_UP", description="Funds added; amount is positive.")
    CHARGE = strawberry.enum_value(
        "CHARGE", description="Usage paid from the balance; amount is negative."
    )
    GRANT = strawberry.enum_value(
        "GRANT", description="PROMOTIONAL credits granted (grantCredits); amount is positive."
    )
    REFUND = strawberry.enum_value(
        "REFUND", description="Part or all of a charge given back; amount is positive."
    )
    REVERSAL = strawberry.enum_value(
        "REVERSAL",
        description="Part or all of a top-up or grant taken back; amount is negative.",
    )
    EXPIRATION = strawberry.enum_value(
        "EXPIRATION",
        description="What was left of a credit block when it expired, written by the server; "
        "amount is negative.",
    )
    CAPTURE = strawberry.enum_value(
        "CAPTURE",
        description="Usage paid from a hold's reservation (captureHold); amount is negative.",
    )


@strawberry.enum(description="Where a hold stands.")
class HoldStatus(enum.Enum):
    OPEN = strawberry.enum_value(
        "OPEN", description="Reserving its amount until it is captured, voided or expires."
    )
    CAPTURED = strawberry.enum_value(
        "CAPTURED", description="Captured (all or part); the rest was released."
    )
    VOIDED = strawberry.enum_value("VOIDED", description="Voided: all of it was released.")
    EXPIRED = strawberry.enum_value(
        "EXPIRED", description="Its expiresAt passed while it was open: all of it was released."
    )


@strawberry.enum(description="What kind of credits a block holds.")
class CreditCategory(enum.Enum):
    PAID = strawberry.enum_value("PAID", description="Paid for: created by topUpWallet.")
    PROMOTIONAL = strawberry.enum_value(
        "PROMOTIONAL", description="Granted: created by grantCredits."
    )


@strawberry.enum(description="Where a credit block stands.")
class CreditStatus(enum.Enum):
    ACTIVE = strawberry.enum_value("ACTIVE", description="Has credits left to spend.")
    DEPLETED = strawberry.enum_value(
        "DEPLETED", description="Nothing left (spent or reversed); not expired."
    )
    EXPIRED = strawberry.enum_value(
        "EXPIRED", description="Its expiresAt has passed: nothing in it can be spent."
    )


@strawberry.type(description="Relay page information of a connection.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="Whether more items follow this page.")
    has_previous_page: bool = strawberry.field(
        description="Always false: these connections paginate forward only (first/after)."
    )
    start_cursor: str | None = strawberry.field(
        description="Cursor of the first item of this page; null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="Cursor of the last item of this page: pass it as `after` for the next page."
    )


def page_info(cursors: list[str], has_next_page: bool) -> PageInfo:
    return PageInfo(
        has_next_page=has_next_page,
        has_previous_page=False,
        start_cursor=cursors[0] if cursors else None,
        end_cursor=cursors[-1] if cursors else None,
    )


@strawberry.type(
    description="A wallet: a customer's prepaid balance with an organization, in one currency. "
    "The customer tops it up; the organization pays the customer's usage from it. "
    "Every change is an entry in its append-only ledger (`transactions`)."
)
class CustomerWallet:
    id: strawberry.ID = strawberry.field(description="The ID of the wallet (a UUID).")
    created_at: datetime = strawberry.field(
        description="Creation timestamp of the wallet, ISO 8601 with UTC offset."
    )
    modified_at: datetime = strawberry.field(
        description="Last modification of the wallet: the time of its last committed transaction."
    )
    customer_id: str = strawberry.field(
        description="The organization's own ID for the customer that owns the wallet."
    )
    balance: SafeInt = strawberry.field(
        description="The current balance in the currency's minor unit (cents for usd). "
        "Never negative; always the sum of the ledger's amounts."
    )
    currency: str = strawberry.field(description="ISO 4217 currency code, lowercase (usd).")
    held_balance: SafeInt = strawberry.field(
        description="What the wallet's open holds reserve (the sum of OPEN holds' amounts that "
        "have not expired). Part of balance, but not available to charges."
    )
    seq: strawberry.Private[int]

    @classmethod
    def from_record(cls, record: WalletRecord) -> CustomerWallet:
        """The record itself: this type's fields are the record's attributes, read as they are
        (one object per row, not two; tests/test_execution.py checks that each field has its
        attribute)."""
        return cast(CustomerWallet, record)

    @strawberry.field(
        description="balance - heldBalance: what charges and new holds may take. Never negative."
    )
    def available_balance(self, root: strawberry.Parent[WalletRecord]) -> SafeInt:
        return SafeInt(root.balance - root.held_balance)

    @strawberry.field(description="The wallet's holds, newest first.")
    async def holds(
        self,
        info: Info[Context, None],
        first: FirstArgument = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None,
            strawberry.argument(description="Return holds after (older than) this cursor."),
        ] = None,
        status: Annotated[
            HoldStatus | None,
            strawberry.argument(description="Only holds with this status."),
        ] = None,
    ) -> WalletHoldConnection:
        size = page_size(first)
        before_seq = decode_cursor("hold", after)
        async with info.context.database.read_connection() as conn:
            rows = await repo.holds.list_holds(
                conn,
                self.seq,
                before_seq=before_seq,
                status=None if status is None else status.name,
                limit=size + 1,
            )
        edges = [
            WalletHoldEdge(cursor=encode_cursor("hold", row.seq), node=WalletHold.from_record(row))
            for row in rows[:size]
        ]
        return WalletHoldConnection(
            edges=edges, page_info=page_info([e.cursor for e in edges], len(rows) > size)
        )

    @strawberry.field(
        description="The part of balance in PROMOTIONAL credits (grants), not expired."
    )
    async def promotional_balance(self, info: Info[Context, None]) -> SafeInt:
        totals = await info.context.category_balances.load(self.seq)
        return SafeInt(totals.get("PROMOTIONAL", 0))

    @strawberry.field(description="The part of balance in PAID credits (top-ups), not expired.")
    async def paid_balance(self, info: Info[Context, None]) -> SafeInt:
        totals = await info.context.category_balances.load(self.seq)
        return SafeInt(totals.get("PAID", 0))

    @strawberry.field(
        description="Webhooks send wallet.balance.low when availableBalance falls below it, and "
        "wallet.balance.recovered when it is back at or above it (setLowBalanceThreshold). "
        "Null: only wallet.balance.depleted (at 0) and its recovery are sent."
    )
    async def low_balance_threshold(self, info: Info[Context, None]) -> SafeInt | None:
        threshold = await info.context.low_balance_thresholds.load(self.seq)
        return None if threshold is None else SafeInt(threshold)

    @strawberry.field(
        description="The wallet's credit blocks in burn-down order: the order charges spend "
        "them in (priority, then soonest expiry with never-expiring last, then PROMOTIONAL "
        "before PAID, then oldest)."
    )
    async def credits(
        self,
        info: Info[Context, None],
        first: FirstArgument = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None,
            strawberry.argument(description="Return blocks after this cursor."),
        ] = None,
        status: Annotated[
            CreditStatus | None,
            strawberry.argument(description="Only blocks with this status."),
        ] = None,
    ) -> WalletCreditConnection:
        size = page_size(first)
        position = _decode_credit_cursor(after)
        async with info.context.database.read_connection() as conn:
            rows = await repo.credits.list_credits(
                conn,
                self.seq,
                after=position,
                status=None if status is None else status.name,
                limit=size + 1,
            )
        edges = [
            WalletCreditEdge(cursor=_credit_cursor(row), node=WalletCredit.from_record(row))
            for row in rows[:size]
        ]
        return WalletCreditConnection(
            edges=edges, page_info=page_info([e.cursor for e in edges], len(rows) > size)
        )

    @strawberry.field(
        description="The wallet's ledger, newest entry first; optionally only the entries of a "
        "period (from < createdAt <= to, as in statement), of some types, and whose metadata "
        "has given keys and values."
    )
    async def transactions(
        self,
        info: Info[Context, None],
        first: FirstArgument = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None,
            strawberry.argument(description="Return entries after (older than) this cursor."),
        ] = None,
        from_: Annotated[
            datetime | None,
            strawberry.argument(name="from", description="Only entries created after this."),
        ] = None,
        to: Annotated[
            datetime | None,
            strawberry.argument(description="Only entries created at or before this."),
        ] = None,
        types: Annotated[
            list[WalletTransactionType] | None,
            strawberry.argument(description="Only entries of these types."),
        ] = None,
        metadata: Annotated[
            Metadata | None,
            strawberry.argument(
                description="Only entries whose metadata has every one of these keys, each "
                'with this value: {"usage_record": "ur_123"}.'
            ),
        ] = None,
    ) -> WalletTransactionConnection:
        size = page_size(first)
        before_seq = decode_cursor("tx", after)
        refuse(check_period(from_, to))
        refuse(check_metadata(metadata, at=ARGUMENT))
        if from_ is None and to is None and types is None and metadata is None:
            rows = await repo.list_transactions(
                info.context.database, self.seq, before_seq=before_seq, limit=size + 1
            )
        else:
            query = repo.statements.period_page(
                self.seq,
                before_seq,
                size + 1,
                from_,
                to,
                None if types is None else [t.name for t in types],
                None if metadata is None else canonical_metadata(metadata),
            )
            async with info.context.database.read_connection() as conn:
                rows = [TransactionRecord.from_row(row) for row in await conn.execute(query)]
        edges = [
            WalletTransactionEdge(
                cursor=encode_cursor("tx", row.seq), node=WalletTransaction.from_record(row)
            )
            for row in rows[:size]
        ]
        return WalletTransactionConnection(
            edges=edges, page_info=page_info([e.cursor for e in edges], len(rows) > size)
        )

    @strawberry.field(
        description="The wallet's balance at an instant, from its ledger: every entry created "
        "at or before `at` counted, none after (0 before the wallet's first entry)."
    )
    async def balance_at(
        self,
        info: Info[Context, None],
        at: Annotated[datetime, strawberry.argument(description="The instant.")],
    ) -> WalletBalanceAt:
        refuse(check_instant(at, "at"))
        async with info.context.database.read_transaction() as conn:
            found = await repo.statements.balance_at(conn, self.seq, at)
        return _balance_at(at, found)

    @strawberry.field(
        description="The wallet's statement for a period: its balance at `from` and at `to`, "
        "and the entries created after `from` and at or before `to`, totalled by type. "
        "openingBalance + the totals' sum == closingBalance."
    )
    async def statement(
        self,
        info: Info[Context, None],
        from_: Annotated[
            datetime, strawberry.argument(name="from", description="The period's start.")
        ],
        to: Annotated[datetime, strawberry.argument(description="The period's end.")],
    ) -> WalletStatement:
        refuse(check_period(from_, to))
        async with info.context.database.read_transaction() as conn:
            opening, totals, closing = await repo.statements.statement(conn, self.seq, from_, to)
        return WalletStatement(
            from_=from_,
            to=to,
            opening=_balance_at(from_, opening),
            closing=_balance_at(to, closing),
            opening_balance=SafeInt(opening.balance),
            closing_balance=SafeInt(closing.balance),
            totals=[
                WalletStatementTotal(
                    type=cast(WalletTransactionType, t.type),
                    amount=SafeInt(t.total),
                    count=t.entries,
                )
                for t in totals
            ],
            entry_count=sum(t.entries for t in totals),
        )


@strawberry.type(description="A wallet's balance at an instant, from its ledger.")
class WalletBalanceAt:
    at: datetime = strawberry.field(description="The instant.")
    balance: SafeInt = strawberry.field(
        description="The sum of the amounts of every entry created at or before `at`."
    )
    paid_balance: SafeInt = strawberry.field(
        description="The part of balance in PAID credits (top-ups) at that instant."
    )
    promotional_balance: SafeInt = strawberry.field(
        description="The part of balance in PROMOTIONAL credits (grants) at that instant."
    )


def _balance_at(at: datetime, found: repo.statements.BalanceAt) -> WalletBalanceAt:
    return WalletBalanceAt(
        at=at,
        balance=SafeInt(found.balance),
        paid_balance=SafeInt(found.paid),
        promotional_balance=SafeInt(found.promotional),
    )


@strawberry.type(description="The entries of one type in a statement's period.")
class WalletStatementTotal:
    type: WalletTransactionType = strawberry.field(description="The entries' type.")
    amount: SafeInt = strawberry.field(description="The sum of their amounts (signed).")
    count: int = strawberry.field(description="How many there are.")


@strawberry.type(
    description="A wallet's statement: the entries created after `from` and at or before "
    "`to`. openingBalance + the sum of totals' amounts == closingBalance."
)
class WalletStatement:
    from_: datetime = strawberry.field(name="from", description="The period's start.")
    to: datetime = strawberry.field(description="The period's end.")
    opening_balance: SafeInt = strawberry.field(description="balanceAt(from).balance.")
    closing_balance: SafeInt = strawberry.field(description="balanceAt(to).balance.")
    opening: WalletBalanceAt = strawberry.field(
        description="balanceAt(from), with its paid and promotional parts."
    )
    closing: WalletBalanceAt = strawberry.field(
        description="balanceAt(to), with its paid and promotional parts."
    )
    totals: list[WalletStatementTotal] = strawberry.field(
        description="One per entry type present in the period, by type name."
    )
    entry_count: int = strawberry.field(description="How many entries the period holds.")


@strawberry.type(
    description="One entry of a wallet's append-only ledger. Entries are never updated or "
    "deleted; in ledger order, balanceAfter[i] == balanceAfter[i-1] + amount[i]."
)
class WalletTransaction:
    id: strawberry.ID = strawberry.field(description="The ID of the transaction (a UUID).")
    created_at: datetime = strawberry.field(
        description="When the transaction was committed, ISO 8601 with UTC offset."
    )
    type: WalletTransactionType = strawberry.field(description="What kind of entry this is.")
    amount: SafeInt = strawberry.field(
        description="Signed amount in minor units: positive for a top-up, negative for a charge."
    )
    balance_after: SafeInt = strawberry.field(
        description="The wallet's balance right after this entry."
    )
    description: str | None = strawberry.field(description="Free text given with the write.")
    reference: str | None = strawberry.field(
        description="The caller's reference given with the write (an invoice or payment ID)."
    )
    idempotency_key: str = strawberry.field(
        description="The idempotency key of the write that created this entry (an EXPIRATION's "
        "is gql-wallet:expiration: and the entry's ID)."
    )
    metadata: Metadata = strawberry.field(
        description="The metadata given with the write ({} if none; a CAPTURE given none has "
        "its hold's)."
    )
    seq: strawberry.Private[int]
    wallet_seq: strawberry.Private[int]
    reverses_seq: strawberry.Private[int | None]

    @classmethod
    def from_record(cls, record: TransactionRecord) -> WalletTransaction:
        """The record itself, as for `CustomerWallet.from_record`."""
        return cast(WalletTransaction, record)

    @strawberry.field(description="The wallet this entry belongs to.")
    async def wallet(self, info: Info[Context, None]) -> CustomerWallet:
        return CustomerWallet.from_record(await info.context.wallets_by_seq.load(self.wallet_seq))

    @strawberry.field(
        description="How much of each credit block this entry spent (negative) or restored "
        "(positive), in the order it touched them; the amounts sum to `amount`. Empty for a "
        "TOP_UP or GRANT (its block is the one whose `source` it is) and for entries older "
        "than credit blocks."
    )
    async def allocations(self, info: Info[Context, None]) -> list[CreditAllocation]:
        rows = await info.context.allocations_by_entry.load(self.seq)
        return [CreditAllocation.from_record(row) for row in rows]

    @strawberry.field(description="For a REFUND or REVERSAL: the entry it undoes; else null.")
    async def reverses(self, info: Info[Context, None]) -> WalletTransaction | None:
        if self.reverses_seq is None:
            return None
        return WalletTransaction.from_record(
            await info.context.transactions_by_seq.load(self.reverses_seq)
        )

    @strawberry.field(
        description="How much of this CHARGE or CAPTURE its refunds have given back; else 0."
    )
    async def refunded_amount(
        self, info: Info[Context, None], root: strawberry.Parent[TransactionRecord]
    ) -> SafeInt:
        if root.type not in REFUNDABLE:
            return SafeInt(0)
        return SafeInt(await info.context.undone_by_entry.load(root.seq))

    @strawberry.field(
        description="How much of this TOP_UP or GRANT its reversals have taken back; else 0."
    )
    async def reversed_amount(
        self, info: Info[Context, None], root: strawberry.Parent[TransactionRecord]
    ) -> SafeInt:
        if root.type not in REVERSIBLE:
            return SafeInt(0)
        return SafeInt(-(await info.context.undone_by_entry.load(root.seq)))


@strawberry.type(
    description="A credit block: what one TOP_UP or GRANT added, what is left of it, and how "
    "it may be spent."
)
class WalletCredit:
    id: strawberry.ID = strawberry.field(description="The ID of the block (a UUID).")
    created_at: datetime = strawberry.field(description="When the block was created.")
    category: CreditCategory = strawberry.field(
        description="PAID (topUpWallet) or PROMOTIONAL (grantCredits)."
    )
    priority: int = strawberry.field(description="0 to 100; lower is spent first.")
    expires_at: datetime | None = strawberry.field(
        description="From this instant on nothing in the block can be spent; null: never."
    )
    amount: SafeInt = strawberry.field(description="What the block added.")
    seq: strawberry.Private[int]
    source_seq: strawberry.Private[int]
    expired: strawberry.Private[bool]

    @classmethod
    def from_record(cls, record: CreditBlockRecord) -> WalletCredit:
        """The record itself, as for `CustomerWallet.from_record`."""
        return cast(WalletCredit, record)

    @strawberry.field(description="The TOP_UP or GRANT entry that created the block.")
    async def source(self, info: Info[Context, None]) -> WalletTransaction:
        return WalletTransaction.from_record(
            await info.context.transactions_by_seq.load(self.source_seq)
        )

    @strawberry.field(
        description="Not yet spent, reversed or expired, what open holds reserve included "
        "(of an expired block: only that, until the holds are resolved)."
    )
    def remaining(self, root: strawberry.Parent[CreditBlockRecord]) -> SafeInt:
        return SafeInt(min(root.remaining, root.held) if root.expired else root.remaining)

    @strawberry.field(description="remaining minus what open holds reserve from this block.")
    def available_remaining(self, root: strawberry.Parent[CreditBlockRecord]) -> SafeInt:
        return SafeInt(0 if root.expired else root.remaining - root.held)

    @strawberry.field(description="ACTIVE, DEPLETED (nothing left) or EXPIRED.")
    def status(self, root: strawberry.Parent[CreditBlockRecord]) -> CreditStatus:
        if root.expired:
            return CreditStatus.EXPIRED
        return CreditStatus.ACTIVE if root.remaining > 0 else CreditStatus.DEPLETED


@strawberry.type(
    description="Funds reserved for usage whose price is known only afterwards: captured "
    "(all or part), voided, or expired by its expiresAt."
)
class WalletHold:
    id: strawberry.ID = strawberry.field(description="The ID of the hold (a UUID).")
    created_at: datetime = strawberry.field(description="When the hold was created.")
    amount: SafeInt = strawberry.field(description="What the hold reserves (or reserved).")
    captured_amount: SafeInt = strawberry.field(description="What its capture took; 0 until then.")
    expires_at: datetime = strawberry.field(
        description="An OPEN hold past this instant is EXPIRED, and its funds are free again."
    )
    description: str | None = strawberry.field(description="Free text given with createHold.")
    reference: str | None = strawberry.field(
        description="The caller's reference given with createHold (its CAPTURE entry has it too)."
    )
    idempotency_key: str = strawberry.field(
        description="The idempotency key of the createHold that made it."
    )
    metadata: Metadata = strawberry.field(
        description="The metadata given with createHold ({} if none)."
    )
    seq: strawberry.Private[int]
    wallet_seq: strawberry.Private[int]
    capture_seq: strawberry.Private[int | None]

    @classmethod
    def from_record(cls, record: HoldRecord) -> WalletHold:
        """The record itself, as for `CustomerWallet.from_record`."""
        return cast(WalletHold, record)

    @strawberry.field(description="OPEN, CAPTURED, VOIDED or EXPIRED (by the database's clock).")
    def status(self, root: strawberry.Parent[HoldRecord]) -> HoldStatus:
        return HoldStatus.EXPIRED if root.expired else HoldStatus[root.status]

    @strawberry.field(
        description="When it was captured, voided or expired (its expiresAt); null while OPEN."
    )
    def resolved_at(self, root: strawberry.Parent[HoldRecord]) -> datetime | None:
        return root.expires_at if root.expired else root.resolved_at

    @strawberry.field(description="The wallet the hold reserves from.")
    async def wallet(self, info: Info[Context, None]) -> CustomerWallet:
        return CustomerWallet.from_record(await info.context.wallets_by_seq.load(self.wallet_seq))

    @strawberry.field(description="The CAPTURE entry, once captured; else null.")
    async def capture(self, info: Info[Context, None]) -> WalletTransaction | None:
        if self.capture_seq is None:
            return None
        return WalletTransaction.from_record(
            await info.context.transactions_by_seq.load(self.capture_seq)
        )


@strawberry.type(description="A hold and its cursor.")
class WalletHoldEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this hold.")
    node: WalletHold = strawberry.field(description="The hold.")


@strawberry.type(description="A page of a wallet's holds, newest first.")
class WalletHoldConnection:
    edges: list[WalletHoldEdge] = strawberry.field(description="The holds of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page sits in the list.")


@strawberry.type(description="How much of one credit block an entry spent or restored.")
class CreditAllocation:
    amount: SafeInt = strawberry.field(
        description="Signed like the entry: negative when spent from the block, positive when "
        "restored to it."
    )
    block_seq: strawberry.Private[int]

    @classmethod
    def from_record(cls, record: AllocationRecord) -> CreditAllocation:
        return cast(CreditAllocation, record)

    @strawberry.field(description="The credit block.")
    async def credit(self, info: Info[Context, None]) -> WalletCredit:
        return WalletCredit.from_record(await info.context.credits_by_seq.load(self.block_seq))


@strawberry.type(description="A credit block and its cursor.")
class WalletCreditEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this block.")
    node: WalletCredit = strawberry.field(description="The credit block.")


@strawberry.type(description="A page of a wallet's credit blocks, in burn-down order.")
class WalletCreditConnection:
    edges: list[WalletCreditEdge] = strawberry.field(description="The blocks of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page sits in the list.")


def _credit_cursor(record: CreditBlockRecord) -> str:
    return base64.urlsafe_b64encode(f"cr:{record.burn_key}:{record.seq}".encode()).decode()


def _decode_credit_cursor(cursor: str | None) -> tuple[str, int] | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
        prefix, _, rest = text.partition(":")
        key, _, seq = rest.rpartition(":")
        if prefix == "cr" and key and seq.isdigit() and len(seq) < 20 and len(key) <= 64:
            return key, int(seq)
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise RequestError("after is not a cursor of this connection.")


@strawberry.type(description="A wallet transaction and its cursor.")
class WalletTransactionEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this entry.")
    node: WalletTransaction = strawberry.field(description="The ledger entry.")


@strawberry.type(description="A page of a wallet's ledger, newest first.")
class WalletTransactionConnection:
    edges: list[WalletTransactionEdge] = strawberry.field(description="The entries of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page sits in the ledger.")


@strawberry.type(description="A wallet and its cursor.")
class CustomerWalletEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this wallet.")
    node: CustomerWallet = strawberry.field(description="The wallet.")


@strawberry.type(description="A page of wallets, oldest first.")
class CustomerWalletConnection:
    edges: list[CustomerWalletEdge] = strawberry.field(description="The wallets of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page sits in the list.")


@strawberry.type(
    description="A short-lived, read-only session for one customer, made by an organization "
    "for its customer-facing frontend. Its token reads only that customer's wallets."
)
class CustomerSession:
    id: strawberry.ID = strawberry.field(description="The ID of the session (a UUID).")
    customer_id: str = strawberry.field(description="The customer the session is limited to.")
    created_at: datetime = strawberry.field(description="When the session was created.")
    expires_at: datetime = strawberry.field(
        description="When the token stops working (UNAUTHENTICATED from then on)."
    )
    revoked_at: datetime | None = strawberry.field(
        description="When the session was revoked; null while it has not been."
    )

    @classmethod
    def from_record(cls, record: CustomerSessionRecord) -> CustomerSession:
        return cls(
            id=strawberry.ID(str(record.id)),
            customer_id=record.customer_id,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
        )


@strawberry.type(description="Why a write was refused: an expected outcome, not a server fault.")
class WalletUserError:
    code: WalletErrorCode = strawberry.field(description="Stable machine-readable reason.")
    field: list[str] | None = strawberry.field(
        description='Path to the input field at fault, e.g. ["input", "amount"]; '
        "null when no single field is."
    )
    message: str = strawberry.field(description="Human-readable explanation, in English.")
