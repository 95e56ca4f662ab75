"""The wallet domain. `service` decides (validation, idempotency, outcomes, messages, the
burn-down order with `credits`); `store` carries a decided write out atomically on each database
and answers with codes."""

from gql_wallet.ledger.service import (
    REFUNDABLE,
    REVERSIBLE,
    BalanceChange,
    InvalidDateTime,
    TransactionType,
    Undo,
    WriteResult,
    charge,
    create_wallet,
    fresh_wallet,
    fresh_wallets,
    grant,
    refund,
    reverse,
    sweep_expiries,
    top_up,
)

__all__ = [
    "REFUNDABLE",
    "REVERSIBLE",
    "BalanceChange",
    "InvalidDateTime",
    "TransactionType",
    "Undo",
    "WriteResult",
    "charge",
    "create_wallet",
    "fresh_wallet",
    "fresh_wallets",
    "grant",
    "refund",
    "reverse",
    "sweep_expiries",
    "top_up",
]
