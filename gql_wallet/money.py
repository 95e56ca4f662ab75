"""Validation of amounts, currencies and the other inputs of a write. Pure functions, no I/O."""

from __future__ import annotations

import unicodedata

import pycountry

from gql_wallet.errors import ErrorCode, UserError

MAX_SAFE_INT = 2**53 - 1
"""Largest amount or balance: every JSON/JavaScript client reads integers up to here exactly."""

MAX_CUSTOMER_ID_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 500
MAX_REFERENCE_LENGTH = 255
MAX_IDEMPOTENCY_KEY_LENGTH = 255

# The active ISO 4217 codes, lowercase. XTS (testing) and XXX (no currency) are not money.
CURRENCIES: frozenset[str] = frozenset(
    c.alpha_3.lower() for c in pycountry.currencies if c.alpha_3 not in {"XTS", "XXX"}
)


def normalize_currency(currency: str) -> str | None:
    """The lowercase ISO 4217 code, or None when `currency` is not an accepted code."""
    code = currency.lower()
    return code if code in CURRENCIES else None


def is_unicode_text(value: str) -> bool:
    """False for text with lone surrogates (JSON's "\\ud800"): no database can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_customer_id(customer_id: str) -> bool:
    return (
        1 <= len(customer_id) <= MAX_CUSTOMER_ID_LENGTH
        and is_unicode_text(customer_id)
        and not any(unicodedata.category(ch) == "Cc" for ch in customer_id)
    )


def check_customer_id(customer_id: str) -> list[UserError]:
    if is_valid_customer_id(customer_id):
        return []
    return [
        UserError(
            ErrorCode.INVALID_CUSTOMER_ID,
            f"customerId must be 1-{MAX_CUSTOMER_ID_LENGTH} characters with no control characters.",
            ("input", "customerId"),
        )
    ]


def check_owner(customer_id: str, currency: str) -> list[UserError]:
    """Errors for the (customerId, currency) pair that names a wallet."""
    errors = check_customer_id(customer_id)
    if normalize_currency(currency) is None:
        errors.append(
            UserError(
                ErrorCode.INVALID_CURRENCY,
                f"{currency[:16]!r} is not an active ISO 4217 currency code.",
                ("input", "currency"),
            )
        )
    return errors


def check_amount(amount: int) -> list[UserError]:
    if 1 <= amount <= MAX_SAFE_INT:
        return []
    return [
        UserError(
            ErrorCode.INVALID_AMOUNT,
            f"amount must be a whole number of minor units from 1 to {MAX_SAFE_INT}.",
            ("input", "amount"),
        )
    ]


def check_text(
    value: str | None, field: str, max_length: int, *, required: bool
) -> list[UserError]:
    if value is None or (
        (value or not required) and len(value) <= max_length and is_unicode_text(value)
    ):
        return []
    return [
        UserError(
            ErrorCode.INVALID_INPUT,
            f"{field} must be {'1' if required else '0'}-{max_length} characters of Unicode text.",
            ("input", field),
        )
    ]
