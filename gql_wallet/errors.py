"""Domain errors with stable codes; each code maps 1:1 to the GraphQL enum WalletErrorCode."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.Enum):
    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_CURRENCY = "INVALID_CURRENCY"
    INVALID_CUSTOMER_ID = "INVALID_CUSTOMER_ID"
    INVALID_INPUT = "INVALID_INPUT"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
    WALLET_NOT_FOUND = "WALLET_NOT_FOUND"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    CUSTOMER_SESSION_NOT_FOUND = "CUSTOMER_SESSION_NOT_FOUND"
    INVALID_EXPIRY = "INVALID_EXPIRY"
    TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
    TRANSACTION_NOT_REFUNDABLE = "TRANSACTION_NOT_REFUNDABLE"
    REFUND_EXCEEDS_CHARGE = "REFUND_EXCEEDS_CHARGE"
    REVERSAL_EXCEEDS_REMAINING = "REVERSAL_EXCEEDS_REMAINING"


@dataclass(frozen=True)
class UserError:
    """An expected refusal, reported to the caller in the payload's userErrors."""

    code: ErrorCode
    message: str
    field: tuple[str, ...] | None = None
