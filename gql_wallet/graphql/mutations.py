"""Mutation: one per business action. Expected refusals are userErrors on the payload."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from gql_wallet import auth, ledger, metrics
from gql_wallet.db import Database
from gql_wallet.errors import ErrorCode, UserError
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import FORBIDDEN
from gql_wallet.graphql.types import (
    CustomerSession,
    CustomerWallet,
    Metadata,
    SafeInt,
    WalletHold,
    WalletTransaction,
    WalletUserError,
    error_code,
)
from gql_wallet.logs import current_request
from gql_wallet.money import check_customer_id, check_text

_CUSTOMER_ID = (
    "The organization's own ID for the customer: 1-128 characters, no control characters."
)
_CURRENCY = "ISO 4217 code in any case (usd, USD); stored lowercase."
_AMOUNT = "Amount in the currency's minor unit (cents for usd), 1 to 2^53-1."
_KEY = (
    "Your unique ID for this write (1-255 characters), scoped to your organization and shared by "
    "every write (top-ups, grants, charges, refunds, reversals, holds, captures, voids). A retry with the same key and input replays the first outcome and "
    "writes nothing; the same key with another input is refused (IDEMPOTENCY_KEY_REUSED)."
)
_DESCRIPTION = "Free text shown in the ledger, up to 500 characters."
_REFERENCE = "Your reference (an invoice or payment ID), up to 255 characters."
_METADATA = (
    "Your own data, stored with the entry and returned on WalletTransaction.metadata: string "
    "keys (at most 50, 1-40 characters) to string values (at most 500 characters)."
)


@strawberry.input(description="Fields shared by TopUpWalletInput and ChargeWalletInput.")
class BalanceChangeInput:
    """The fields a top-up and a charge share (the contract gives both the same shape); not
    itself part of the schema, only its two subclasses are."""

    customer_id: str = strawberry.field(description=_CUSTOMER_ID)
    currency: str = strawberry.field(description=_CURRENCY)
    amount: SafeInt = strawberry.field(description=_AMOUNT)
    idempotency_key: str = strawberry.field(description=_KEY)
    description: str | None = strawberry.field(default=None, description=_DESCRIPTION)
    reference: str | None = strawberry.field(default=None, description=_REFERENCE)
    metadata: Metadata | None = strawberry.field(default=None, description=_METADATA)


_EXPIRES_AT = (
    "When the credits expire (ISO 8601 with offset, in the future); omitted: never. From then "
    "on what is left of them is spent by nothing and counted in no balance, and an EXPIRATION "
    "entry records it."
)
_PRIORITY = "0 to 100, lower is spent first (default 50): the first key of the burn-down order."


@strawberry.input(description="Add funds to a customer's wallet, e.g. after a payment succeeded.")
class TopUpWalletInput(BalanceChangeInput):
    expires_at: datetime | None = strawberry.field(default=None, description=_EXPIRES_AT)
    priority: int | None = strawberry.field(default=None, description=_PRIORITY)


@strawberry.input(
    description="Grant PROMOTIONAL credits to a customer (free credits, a promotion)."
)
class GrantCreditsInput(BalanceChangeInput):
    expires_at: datetime | None = strawberry.field(default=None, description=_EXPIRES_AT)
    priority: int | None = strawberry.field(default=None, description=_PRIORITY)


_UNDO_KEY = _KEY
_TRANSACTION_ID = "The ID of the transaction to undo."


@strawberry.input(description="Give back part or all of a charge.")
class RefundChargeInput:
    transaction_id: strawberry.ID = strawberry.field(description=_TRANSACTION_ID + " A CHARGE.")
    amount: SafeInt | None = strawberry.field(
        default=None, description="How much, 1 to what is left to refund; omitted: all of it."
    )
    idempotency_key: str = strawberry.field(description=_UNDO_KEY)
    description: str | None = strawberry.field(default=None, description=_DESCRIPTION)
    metadata: Metadata | None = strawberry.field(default=None, description=_METADATA)


@strawberry.input(
    description="Take back part or all of a top-up or grant: its payment was refunded or "
    "charged back, or a promotion is withdrawn."
)
class ReverseTopUpInput:
    transaction_id: strawberry.ID = strawberry.field(
        description=_TRANSACTION_ID + " A TOP_UP or GRANT."
    )
    amount: SafeInt | None = strawberry.field(
        default=None,
        description="How much, 1 to what is left of the block it created; omitted: all of it.",
    )
    idempotency_key: str = strawberry.field(description=_UNDO_KEY)
    description: str | None = strawberry.field(default=None, description=_DESCRIPTION)
    metadata: Metadata | None = strawberry.field(default=None, description=_METADATA)


@strawberry.input(
    description="Reserve funds for usage whose price is known only afterwards: capture the "
    "actual cost later, or void it."
)
class CreateHoldInput:
    customer_id: str = strawberry.field(description=_CUSTOMER_ID)
    currency: str = strawberry.field(description=_CURRENCY)
    amount: SafeInt = strawberry.field(
        description=_AMOUNT + " Reserved from the available balance in burn-down order."
    )
    idempotency_key: str = strawberry.field(description=_KEY)
    expires_in_seconds: int | None = strawberry.field(
        default=None,
        description="How long the hold lasts: 1 to 604800 (7 days); default 3600. From then on "
        "it is EXPIRED and its funds are free again.",
    )
    description: str | None = strawberry.field(default=None, description=_DESCRIPTION)
    reference: str | None = strawberry.field(default=None, description=_REFERENCE)
    metadata: Metadata | None = strawberry.field(
        default=None,
        description="Your own data, stored with the hold (WalletHold.metadata) and given to its "
        "CAPTURE entry unless captureHold is given its own: string keys (at most 50, 1-40 "
        "characters) to string values (at most 500 characters).",
    )


_HOLD_ID = "The ID of the hold."


@strawberry.input(description="Pay for the usage a hold reserved for; the rest is released.")
class CaptureHoldInput:
    hold_id: strawberry.ID = strawberry.field(description=_HOLD_ID)
    amount: SafeInt | None = strawberry.field(
        default=None,
        description="The actual cost, 1 to the hold's amount; omitted: the whole hold.",
    )
    idempotency_key: str = strawberry.field(description=_KEY)
    description: str | None = strawberry.field(default=None, description=_DESCRIPTION)
    metadata: Metadata | None = strawberry.field(
        default=None,
        description="Your own data for the CAPTURE entry; omitted or empty: the hold's. "
        "Limits as for createHold.",
    )


@strawberry.input(description="Release a hold without paying anything.")
class VoidHoldInput:
    hold_id: strawberry.ID = strawberry.field(description=_HOLD_ID)
    idempotency_key: str = strawberry.field(description=_KEY)


@strawberry.input(description="Pay for a customer's usage from their wallet's balance.")
class ChargeWalletInput(BalanceChangeInput):
    pass


@strawberry.input(description="Create an empty wallet for a customer in one currency.")
class CreateWalletInput:
    customer_id: str = strawberry.field(description=_CUSTOMER_ID)
    currency: str = strawberry.field(description=_CURRENCY)


@strawberry.type(description="Fields shared by the payloads of balance-changing writes.")
class WritePayload:
    """The payload every balance-changing write answers with (the same shape for all); not
    itself part of the schema, only its subclasses are."""

    wallet: CustomerWallet | None = strawberry.field(
        description="The wallet as it is now; null when the input was invalid, or when it named "
        "no wallet or transaction of yours (WALLET_NOT_FOUND, TRANSACTION_NOT_FOUND; a "
        "WALLET_NOT_FOUND replays so)."
    )
    transaction: WalletTransaction | None = strawberry.field(
        description="The ledger entry this write made (the same one on every replay of its key)."
    )
    user_errors: list[WalletUserError] = strawberry.field(
        description="Why the write was refused; empty on success."
    )


@strawberry.type(description="The result of topUpWallet.")
class TopUpWalletPayload(WritePayload):
    pass


@strawberry.type(description="The result of grantCredits.")
class GrantCreditsPayload(WritePayload):
    pass


@strawberry.type(description="The result of chargeWallet.")
class ChargeWalletPayload(WritePayload):
    pass


@strawberry.type(description="The result of refundCharge.")
class RefundChargePayload(WritePayload):
    pass


@strawberry.type(description="The result of reverseTopUp.")
class ReverseTopUpPayload(WritePayload):
    pass


_Payload = TypeVar("_Payload", bound=WritePayload)


_HOLD = (
    "The hold as it is now (on a refusal about a hold: the hold refused); null when the input "
    "was invalid or named no hold or wallet of yours."
)


@strawberry.type(description="Fields shared by the payloads of hold writes that make no entry.")
class HoldPayload:
    """The payload of createHold and voidHold (the same shape); not itself part of the
    schema, only its subclasses are."""

    hold: WalletHold | None = strawberry.field(description=_HOLD)
    wallet: CustomerWallet | None = strawberry.field(
        description="The wallet as it is now; null when the input was invalid or named no "
        "wallet or hold of yours (WALLET_NOT_FOUND, HOLD_NOT_FOUND)."
    )
    user_errors: list[WalletUserError] = strawberry.field(
        description="Why the write was refused; empty on success."
    )


@strawberry.type(description="The result of createHold.")
class CreateHoldPayload(HoldPayload):
    pass


@strawberry.type(description="The result of voidHold.")
class VoidHoldPayload(HoldPayload):
    pass


@strawberry.type(description="The result of captureHold.")
class CaptureHoldPayload(WritePayload):
    hold: WalletHold | None = strawberry.field(description=_HOLD)


@strawberry.type(description="The result of createWallet.")
class CreateWalletPayload:
    wallet: CustomerWallet | None = strawberry.field(
        description="The new wallet, or the one that already existed."
    )
    user_errors: list[WalletUserError] = strawberry.field(
        description="Why the wallet was not created; empty on success."
    )


def require_write(info: Info[Context, None]) -> None:
    """Changes need an organization API key with the wallets:write scope: every mutation
    starts here. (A call, not a permission class: Strawberry's field extension around each
    mutation cost more than the check.)"""
    if not info.context.principal.can(auth.SCOPE_WRITE):
        raise GraphQLError(
            "This token may not change anything: mutations need an organization API key with "
            "the wallets:write scope.",
            extensions={"code": FORBIDDEN},
        )


@strawberry.input(description="Start a read-only session for one customer's frontend.")
class CreateCustomerSessionInput:
    customer_id: str = strawberry.field(description=_CUSTOMER_ID)
    expires_in_seconds: int | None = strawberry.field(
        default=None,
        description="Lifetime in seconds: 60 up to 86400 (24 hours); default 3600 (1 hour).",
    )


@strawberry.input(description="End a customer session before it expires.")
class RevokeCustomerSessionInput:
    id: strawberry.ID = strawberry.field(description="The session's ID.")


@strawberry.type(description="The result of createCustomerSession.")
class CreateCustomerSessionPayload:
    customer_session: CustomerSession | None = strawberry.field(
        description="The new session; null when the input was invalid."
    )
    token: str | None = strawberry.field(
        description="The session's bearer token (gqlw_cs_...), shown only here. Hand it to the "
        "customer's frontend; it reads only this customer's wallets and changes nothing."
    )
    user_errors: list[WalletUserError] = strawberry.field(
        description="Why no session was created; empty on success."
    )


@strawberry.type(description="The result of revokeCustomerSession.")
class RevokeCustomerSessionPayload:
    customer_session: CustomerSession | None = strawberry.field(
        description="The revoked session; null when there is none with this ID."
    )
    user_errors: list[WalletUserError] = strawberry.field(
        description="Why nothing was revoked; empty on success."
    )


def user_errors(errors: tuple[UserError, ...]) -> list[WalletUserError]:
    if errors:
        current_request().outcome = "user_error"
    for error in errors:
        metrics.USER_ERRORS.labels(error.code.value).inc()
    return [
        WalletUserError(
            code=error_code(e.code),
            field=list(e.field) if e.field else None,
            message=e.message,
        )
        for e in errors
    ]


def balance_change(data: BalanceChangeInput) -> ledger.BalanceChange:
    return ledger.BalanceChange(
        customer_id=data.customer_id,
        currency=data.currency,
        amount=data.amount,
        idempotency_key=data.idempotency_key,
        description=data.description,
        reference=data.reference,
        expires_at=getattr(data, "expires_at", None),
        priority=getattr(data, "priority", None),
        metadata=data.metadata,
    )


def undo(data: RefundChargeInput | ReverseTopUpInput) -> ledger.Undo:
    return ledger.Undo(
        transaction_id=str(data.transaction_id),
        idempotency_key=data.idempotency_key,
        amount=data.amount,
        description=data.description,
        metadata=data.metadata,
    )


def write_parts(
    context: Context, result: ledger.WriteResult
) -> tuple[CustomerWallet | None, WalletTransaction | None, list[WalletUserError]]:
    """A write's payload parts, after its metrics and its wake-up of this process's subscribers."""
    if result.transaction is not None and not result.replayed:
        metrics.LEDGER_WRITES.labels(result.transaction.type).inc()
    if result.wallet is not None and not result.errors and (result.transaction or result.hold):
        # Subscribers in this process hear of the change at once (others through the database).
        context.feed.wake(
            result.wallet.organization_id, result.wallet.customer_id, result.wallet.seq
        )
    return (
        CustomerWallet.from_record(result.wallet) if result.wallet else None,
        WalletTransaction.from_record(result.transaction) if result.transaction else None,
        user_errors(result.errors),
    )


def _hold(result: ledger.WriteResult) -> WalletHold | None:
    return None if result.hold is None else WalletHold.from_record(result.hold)


async def _balance_write(
    info: Info[Context, None],
    write: Callable[[Database, uuid.UUID, Any], Awaitable[ledger.WriteResult]],
    argument: Any,
    payload: type[_Payload],
) -> _Payload:
    """A balance-changing mutation: the write scope, the ledger service's write, its payload."""
    require_write(info)
    result = await write(info.context.database, info.context.principal.organization_id, argument)
    wallet, transaction, errors = write_parts(info.context, result)
    return payload(wallet=wallet, transaction=transaction, user_errors=errors)


@strawberry.type(
    description="Change wallets and sessions. Needs an organization API key with wallets:write; "
    "every balance change needs an idempotencyKey."
)
class Mutation:
    @strawberry.mutation(
        description="Create a short-lived, read-only token for one customer's frontend. Needs "
        "an organization API key with wallets:write.",
    )
    async def create_customer_session(
        self,
        info: Info[Context, None],
        input: Annotated[
            CreateCustomerSessionInput, strawberry.argument(description="The session to start.")
        ],
    ) -> CreateCustomerSessionPayload:
        require_write(info)
        settings = info.context.settings
        seconds = input.expires_in_seconds
        if seconds is None:
            seconds = settings.customer_session_default_seconds
        errors = check_customer_id(input.customer_id)
        if not 60 <= seconds <= settings.customer_session_max_seconds:
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT,
                    f"expiresInSeconds must be 60 to {settings.customer_session_max_seconds}.",
                    ("input", "expiresInSeconds"),
                )
            )
        if errors:
            return CreateCustomerSessionPayload(
                customer_session=None, token=None, user_errors=user_errors(tuple(errors))
            )
        token, record = await auth.create_customer_session(
            info.context.database,
            settings.token_secret_bytes,
            info.context.principal,
            input.customer_id,
            timedelta(seconds=seconds),
        )
        return CreateCustomerSessionPayload(
            customer_session=CustomerSession.from_record(record), token=token, user_errors=[]
        )

    @strawberry.mutation(
        description="Revoke a customer session: its token is refused (UNAUTHENTICATED) at once.",
    )
    async def revoke_customer_session(
        self,
        info: Info[Context, None],
        input: Annotated[
            RevokeCustomerSessionInput, strawberry.argument(description="The session to end.")
        ],
    ) -> RevokeCustomerSessionPayload:
        require_write(info)
        if errors := check_text(str(input.id), "id"):
            return RevokeCustomerSessionPayload(
                customer_session=None, user_errors=user_errors(tuple(errors))
            )
        record = None
        try:
            session_id = uuid.UUID(str(input.id))
        except ValueError:
            session_id = None
        if session_id is not None:
            record = await auth.revoke_customer_session(
                info.context.database, info.context.principal, session_id
            )
        if record is None:
            error = UserError(
                ErrorCode.CUSTOMER_SESSION_NOT_FOUND,
                "No customer session of your organization has this ID.",
                ("input", "id"),
            )
            return RevokeCustomerSessionPayload(
                customer_session=None, user_errors=user_errors((error,))
            )
        return RevokeCustomerSessionPayload(
            customer_session=CustomerSession.from_record(record), user_errors=[]
        )

    @strawberry.mutation(
        description="Create a customer's wallet in a currency; returns the existing one if present.",
    )
    async def create_wallet(
        self,
        info: Info[Context, None],
        input: Annotated[CreateWalletInput, strawberry.argument(description="The wallet's owner.")],
    ) -> CreateWalletPayload:
        require_write(info)
        result = await ledger.create_wallet(
            info.context.database,
            info.context.principal.organization_id,
            input.customer_id,
            input.currency,
        )
        wallet, _, errors = write_parts(info.context, result)
        return CreateWalletPayload(wallet=wallet, user_errors=errors)

    @strawberry.mutation(
        description="Add funds to a wallet; creates the wallet on its first top-up. Idempotent.",
    )
    async def top_up_wallet(
        self,
        info: Info[Context, None],
        input: Annotated[TopUpWalletInput, strawberry.argument(description="The top-up.")],
    ) -> TopUpWalletPayload:
        return await _balance_write(info, ledger.top_up, balance_change(input), TopUpWalletPayload)

    @strawberry.mutation(
        description="Grant PROMOTIONAL credits: a GRANT entry and its credit block, with an "
        "optional expiry and priority; creates the wallet if needed. Idempotent.",
    )
    async def grant_credits(
        self,
        info: Info[Context, None],
        input: Annotated[GrantCreditsInput, strawberry.argument(description="The grant.")],
    ) -> GrantCreditsPayload:
        return await _balance_write(info, ledger.grant, balance_change(input), GrantCreditsPayload)

    @strawberry.mutation(
        description="Refund part or all of a charge: a REFUND entry that gives the credits back "
        "to the blocks the charge spent, the last one first (credits given back to a block that "
        "has expired since expire at once). Idempotent.",
    )
    async def refund_charge(
        self,
        info: Info[Context, None],
        input: Annotated[RefundChargeInput, strawberry.argument(description="The refund.")],
    ) -> RefundChargePayload:
        return await _balance_write(info, ledger.refund, undo(input), RefundChargePayload)

    @strawberry.mutation(
        description="Reverse part or all of a top-up or grant: a REVERSAL entry that takes "
        "credits back from the block it created, never from another. Idempotent.",
    )
    async def reverse_top_up(
        self,
        info: Info[Context, None],
        input: Annotated[ReverseTopUpInput, strawberry.argument(description="The reversal.")],
    ) -> ReverseTopUpPayload:
        return await _balance_write(info, ledger.reverse, undo(input), ReverseTopUpPayload)

    @strawberry.mutation(
        description="Reserve funds from a wallet's available balance until captured, voided or "
        "expired; refused whole if the available balance does not cover it "
        "(INSUFFICIENT_FUNDS). Idempotent.",
    )
    async def create_hold(
        self,
        info: Info[Context, None],
        input: Annotated[CreateHoldInput, strawberry.argument(description="The hold.")],
    ) -> CreateHoldPayload:
        require_write(info)
        result = await ledger.create_hold(
            info.context.database,
            info.context.principal.organization_id,
            ledger.NewHold(
                customer_id=input.customer_id,
                currency=input.currency,
                amount=input.amount,
                idempotency_key=input.idempotency_key,
                expires_in_seconds=input.expires_in_seconds,
                description=input.description,
                reference=input.reference,
                metadata=input.metadata,
            ),
        )
        wallet, _, errors = write_parts(info.context, result)
        return CreateHoldPayload(hold=_hold(result), wallet=wallet, user_errors=errors)

    @strawberry.mutation(
        description="Capture an open hold: a CAPTURE entry of the actual cost (default: the "
        "whole hold) from the blocks it reserved; the rest is released. A hold is resolved "
        "once. Idempotent: if the answer is lost, retry with the same key.",
    )
    async def capture_hold(
        self,
        info: Info[Context, None],
        input: Annotated[CaptureHoldInput, strawberry.argument(description="The capture.")],
    ) -> CaptureHoldPayload:
        require_write(info)
        result = await ledger.capture_hold(
            info.context.database,
            info.context.principal.organization_id,
            ledger.HoldResolution(
                hold_id=str(input.hold_id),
                idempotency_key=input.idempotency_key,
                amount=input.amount,
                description=input.description,
                metadata=input.metadata,
            ),
        )
        wallet, transaction, errors = write_parts(info.context, result)
        return CaptureHoldPayload(
            hold=_hold(result), wallet=wallet, transaction=transaction, user_errors=errors
        )

    @strawberry.mutation(
        description="Void an open hold: all of it is released, no ledger entry. A hold is "
        "resolved once. Idempotent.",
    )
    async def void_hold(
        self,
        info: Info[Context, None],
        input: Annotated[VoidHoldInput, strawberry.argument(description="The void.")],
    ) -> VoidHoldPayload:
        require_write(info)
        result = await ledger.void_hold(
            info.context.database,
            info.context.principal.organization_id,
            ledger.HoldResolution(
                hold_id=str(input.hold_id), idempotency_key=input.idempotency_key
            ),
        )
        wallet, _, errors = write_parts(info.context, result)
        return VoidHoldPayload(hold=_hold(result), wallet=wallet, user_errors=errors)

    @strawberry.mutation(
        description="Pay for usage from a wallet's available balance (never what open holds "
        "reserve); refused whole if it does not cover it (INSUFFICIENT_FUNDS). Idempotent.",
    )
    async def charge_wallet(
        self,
        info: Info[Context, None],
        input: Annotated[ChargeWalletInput, strawberry.argument(description="The charge.")],
    ) -> ChargeWalletPayload:
        return await _balance_write(info, ledger.charge, balance_change(input), ChargeWalletPayload)
