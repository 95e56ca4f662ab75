"""The events webhooks send, and which changes make them: decided here, once, for both
databases (the triggers of migrations/sql/gql_wallet_webhooks.* only record the changes)."""

from __future__ import annotations

TRANSACTION_CREATED = "wallet.transaction.created"
BALANCE_LOW = "wallet.balance.low"
BALANCE_DEPLETED = "wallet.balance.depleted"
BALANCE_RECOVERED = "wallet.balance.recovered"
HOLD_EXPIRED = "wallet.hold.expired"
CREDIT_EXPIRED = "wallet.credit.expired"

EVENT_TYPES = (
    TRANSACTION_CREATED,
    BALANCE_LOW,
    BALANCE_DEPLETED,
    BALANCE_RECOVERED,
    HOLD_EXPIRED,
    CREDIT_EXPIRED,
)

OK, LOW, DEPLETED = "OK", "LOW", "DEPLETED"


def balance_state(available: int, threshold: int | None) -> str:
    """DEPLETED at 0; LOW below the threshold (if the wallet has one); else OK."""
    if available <= 0:
        return DEPLETED
    if threshold is not None and available < threshold:
        return LOW
    return OK


def balance_events(announced: str | None, available: int, threshold: int | None) -> list[str]:
    """The balance events of one change of a wallet's available balance (or threshold), given
    what was last announced of it (None: nothing yet, taken as OK): one per crossing, none while
    it stays on one side. Falling from OK to 0 crosses the threshold too (low, then depleted);
    rising from 0 to still below the threshold is no event; back at or above the threshold (or
    above 0, without one) after either is recovered."""
    before = OK if announced is None else announced
    after = balance_state(available, threshold)
    if before == after:
        return []
    if after == OK:
        return [BALANCE_RECOVERED]
    found = []
    if before == OK and threshold is not None:
        found.append(BALANCE_LOW)
    if after == DEPLETED:
        found.append(BALANCE_DEPLETED)
    return found


def entry_events(entry_type: str) -> list[str]:
    """Every ledger entry is announced; an EXPIRATION entry is also a credit's expiry."""
    if entry_type == "EXPIRATION":
        return [TRANSACTION_CREATED, CREDIT_EXPIRED]
    return [TRANSACTION_CREATED]
