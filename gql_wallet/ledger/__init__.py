"""The wallet domain. `service` decides (validation, idempotency, outcomes, messages); `store`
carries a decided balance change out atomically on each database and answers with codes."""

from gql_wallet.ledger.service import (
    BalanceChange,
    TransactionType,
    WriteResult,
    charge,
    create_wallet,
    top_up,
)

__all__ = ["BalanceChange", "TransactionType", "WriteResult", "charge", "create_wallet", "top_up"]
