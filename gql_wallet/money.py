"""Validation of amounts, currencies and the other inputs of a write. Pure functions, no I/O."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime

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
    """The one rule for every text input, read or written: False for text that a database cannot
    store. Lone surrogates (JSON's "\\ud800") fit none; NUL fits SQLite's text but not
    PostgreSQL's, so it is refused on both and both answer alike."""
    if "\x00" in value:
        return False
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


# Where a refusal points: an input object's field in writes, the argument itself in reads.
INPUT = ("input",)
ARGUMENT: tuple[str, ...] = ()


def check_customer_id(customer_id: str, at: tuple[str, ...] = INPUT) -> list[UserError]:
    if is_valid_customer_id(customer_id):
        return []
    return [
        UserError(
            ErrorCode.INVALID_CUSTOMER_ID,
            f"customerId must be 1-{MAX_CUSTOMER_ID_LENGTH} characters with no control characters.",
            (*at, "customerId"),
        )
    ]


def check_currency(currency: str, at: tuple[str, ...] = INPUT) -> list[UserError]:
    if normalize_currency(currency) is not None:
        return []
    return [
        UserError(
            ErrorCode.INVALID_CURRENCY,
            f"{currency[:16]!r} is not an active ISO 4217 currency code.",
            (*at, "currency"),
        )
    ]


def check_owner(customer_id: str, currency: str) -> list[UserError]:
    """Errors for the (customerId, currency) pair that names a wallet."""
    return [*check_customer_id(customer_id), *check_currency(currency)]


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
    value: str | None,
    field: str,
    max_length: int | None = None,
    *,
    required: bool = False,
    at: tuple[str, ...] = INPUT,
) -> list[UserError]:
    """INVALID_INPUT unless `value` is text (is_unicode_text) of the allowed length; None (an
    absent optional field) passes. `max_length` None: any length (a field bounded elsewhere)."""
    if value is None or (
        (value or not required)
        and (max_length is None or len(value) <= max_length)
        and is_unicode_text(value)
    ):
        return []
    length = "" if max_length is None else f"{'1' if required else '0'}-{max_length} characters of "
    return [
        UserError(
            ErrorCode.INVALID_INPUT,
            f"{field} must be {length}Unicode text without NUL characters.",
            (*at, field),
        )
    ]


def parse_instant(text: object) -> datetime | None:
    """The instant an ISO 8601 text with its UTC offset names, in UTC; None if it names none
    (not such a text, no offset, or outside the years 1-9999 once in UTC)."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
        return None if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def check_instant(value: object, name: str, at: tuple[str, ...] = ARGUMENT) -> list[UserError]:
    """INVALID_INPUT unless `value` (None: not given) is a time with its UTC offset; an
    unparsable DateTime arrives as text."""
    if value is None or isinstance(value, datetime):
        return []
    return [
        UserError(
            ErrorCode.INVALID_INPUT,
            f"{name} must be an ISO 8601 time with its UTC offset, e.g. 2026-03-31T23:59:59+00:00.",
            (*at, name),
        )
    ]


def check_period(start: object, end: object, at: tuple[str, ...] = ARGUMENT) -> list[UserError]:
    """INVALID_INPUT unless each bound given is a time (check_instant) and `from` is not after
    `to`."""
    errors = [*check_instant(start, "from", at), *check_instant(end, "to", at)]
    if not errors and isinstance(start, datetime) and isinstance(end, datetime) and start > end:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "from must not be after to.", (*at, "from"))
        )
    return errors


# Metadata on a write, as Stripe limits it: string keys to string values.
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
NO_METADATA = "{}"


def check_metadata(
    value: object, field: str = "metadata", at: tuple[str, ...] = INPUT
) -> list[UserError]:
    """INVALID_INPUT unless `value` (None: not given) is a JSON object of at most 50 keys of
    1-40 characters, each to a text value of at most 500 characters (both as check_text)."""
    problem = _metadata_problem(value)
    if problem is None:
        return []
    return [UserError(ErrorCode.INVALID_INPUT, f"{field} {problem}", (*at, field))]


def _metadata_problem(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "must be a JSON object of string keys to string values."
    if len(value) > MAX_METADATA_KEYS:
        return f"may have at most {MAX_METADATA_KEYS} keys, not {len(value)}."
    for key, item in value.items():
        shown = repr(key[:MAX_METADATA_KEY_LENGTH]) if isinstance(key, str) else "?"
        if not (
            isinstance(key, str)
            and 1 <= len(key) <= MAX_METADATA_KEY_LENGTH
            and is_unicode_text(key)
        ):
            return (
                f"keys must be 1-{MAX_METADATA_KEY_LENGTH} characters of Unicode text without "
                f"NUL characters: {shown} is not."
            )
        if not (
            isinstance(item, str)
            and len(item) <= MAX_METADATA_VALUE_LENGTH
            and is_unicode_text(item)
        ):
            return (
                f"values must be text of at most {MAX_METADATA_VALUE_LENGTH} characters without "
                f"NUL characters: the value of {shown} is not."
            )
    return None


def canonical_metadata(value: object) -> str:
    """Checked metadata (check_metadata) as stored: canonical JSON (keys sorted), "{}" for
    none. Equal text means equal metadata."""
    if not value:
        return NO_METADATA
    assert isinstance(value, dict)  # checked
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
