"""Credit blocks: their categories and the burn-down order, defined here once.

The order (contract, part 2): priority ascending, then the soonest expiry (never-expiring last),
then PROMOTIONAL before PAID, then oldest first. The first three are one sortable text per
block, `burn_key`, computed when the block is made; the stores sort a wallet's blocks by
`(burn_key, seq)`, and `seq` is the age.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 100, 50


class CreditCategory(enum.Enum):
    PAID = "PAID"  # topUpWallet
    PROMOTIONAL = "PROMOTIONAL"  # grantCredits


# Within a priority and an expiry, PROMOTIONAL goes first.
_CATEGORY_RANK = {CreditCategory.PROMOTIONAL: "0", CreditCategory.PAID: "1"}
# Sorts after every timestamp the key can hold: never-expiring blocks come last.
_NEVER = "9999-99-99T99:99:99.999999"


def burn_key(priority: int, expires_at: datetime | None, category: CreditCategory) -> str:
    """The block's place in the burn-down order, as text that sorts the same way in both
    databases (fixed widths, ASCII)."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority {priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    expiry = (
        _NEVER
        if expires_at is None
        else expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    )
    return f"{priority:03d}|{expiry}|{_CATEGORY_RANK[category]}"
