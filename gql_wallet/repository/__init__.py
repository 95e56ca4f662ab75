"""All SQL of gql_wallet. Callers pass a connection from the `db.Database` (one transaction per write).

Balances change only inside a write's one transaction, under the wallet's row lock (PostgreSQL:
the ledger functions of migrations/sql/; SQLite: the writer thread, which holds the database's
write lock), so concurrent writers can neither lose an update nor take a balance or a credit
block below zero, on any dialect.

The statements of a top-up or charge and of its replay are plain functions of a synchronous
`Connection`: SQLite runs a whole write in its writer thread (Database.run_write), and async callers
run them with `await conn.run_sync(fn, ...)`, which costs what `await conn.execute(...)` costs
(SQLAlchemy's async layer is that same greenlet hop around the synchronous call).

One module per domain; this package re-exports what the services use.
"""

from gql_wallet.repository import audit, credits, holds, statements, webhooks
from gql_wallet.repository.audit import all_wallets, ledger_of
from gql_wallet.repository.balance_change import (
    BalanceChangeOutcome,
    apply_balance_change,
    apply_create_hold,
    apply_resolve_hold,
    apply_undo,
    expire_wallets,
    lock_order,
    send_balance_change,
    send_balance_changes,
)
from gql_wallet.repository.credits import due_wallets
from gql_wallet.repository.driver import DriverRead, DriverWrite
from gql_wallet.repository.entries import (
    get_transaction_by_seq,
    insert_transaction,
    list_transactions,
)
from gql_wallet.repository.feed import (
    FEED_GATE_LOCK,
    FEED_LISTENING_LOCK,
    LEDGER_CHANNEL,
    entries_after,
    last_entries,
)
from gql_wallet.repository.idempotency import (
    claim_idempotency_key,
    get_idempotency_record,
    record_outcome,
)
from gql_wallet.repository.keys import (
    ApiKeyRecord,
    CustomerSessionRecord,
    count_api_keys,
    find_api_key,
    get_or_create_organization,
    insert_api_key,
    list_api_keys,
    revoke_api_key,
)
from gql_wallet.repository.records import (
    AllocationRecord,
    CreditBlockRecord,
    HoldRecord,
    IdempotencyRecord,
    TransactionRecord,
    WalletRecord,
    api_keys,
    credit_allocations,
    credit_blocks,
    customer_sessions,
    idempotency_keys,
    now_utc,
    organizations,
    transactions,
    utc,
    wallets,
)
from gql_wallet.repository.sessions import (
    find_customer_session,
    insert_customer_session,
    revoke_customer_session,
)
from gql_wallet.repository.wallet_queries import (
    find_wallet_by_owner,
    get_wallet_by_id,
    get_wallet_by_owner,
    get_wallets_by_seq,
    insert_wallet_if_missing,
    list_customer_wallets,
    list_wallets,
    page_of_wallets,
)

__all__ = [
    "FEED_GATE_LOCK",
    "FEED_LISTENING_LOCK",
    "LEDGER_CHANNEL",
    "AllocationRecord",
    "ApiKeyRecord",
    "BalanceChangeOutcome",
    "CreditBlockRecord",
    "CustomerSessionRecord",
    "DriverRead",
    "DriverWrite",
    "HoldRecord",
    "IdempotencyRecord",
    "TransactionRecord",
    "WalletRecord",
    "all_wallets",
    "api_keys",
    "apply_balance_change",
    "apply_create_hold",
    "apply_resolve_hold",
    "apply_undo",
    "audit",
    "claim_idempotency_key",
    "count_api_keys",
    "credit_allocations",
    "credit_blocks",
    "credits",
    "customer_sessions",
    "due_wallets",
    "entries_after",
    "expire_wallets",
    "find_api_key",
    "find_customer_session",
    "find_wallet_by_owner",
    "get_idempotency_record",
    "get_or_create_organization",
    "get_transaction_by_seq",
    "get_wallet_by_id",
    "get_wallet_by_owner",
    "get_wallets_by_seq",
    "holds",
    "idempotency_keys",
    "insert_api_key",
    "insert_customer_session",
    "insert_transaction",
    "insert_wallet_if_missing",
    "last_entries",
    "ledger_of",
    "list_api_keys",
    "list_customer_wallets",
    "list_transactions",
    "list_wallets",
    "lock_order",
    "now_utc",
    "organizations",
    "page_of_wallets",
    "record_outcome",
    "revoke_api_key",
    "revoke_customer_session",
    "send_balance_change",
    "send_balance_changes",
    "statements",
    "transactions",
    "utc",
    "wallets",
    "webhooks",
]
