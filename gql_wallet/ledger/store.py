"""The ledger store: one interface, one implementation per database, for "claim the key,
apply, record" as one atomic step.

The service (ledger/service.py) decides everything a balance change means: the delta, the
range the balance must stay in, whether a missing wallet is created, and which code each
refusal records. A store only carries that out in one transaction and answers with what
happened (`BalanceChangeOutcome`: applied, refused with the code it recorded, or taken when an
earlier write holds the key). It holds no rule and no message of its own.

- PostgreSQL: one call of the function in migrations/sql/ (its newest version), sent in a group
  commit with the other writes waiting in the process (repository.apply_balance_change).
- SQLite: the same statements in the same order, in the process's writer thread, inside one
  BEGIN IMMEDIATE transaction (its group commit).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.repository import BalanceChangeOutcome

__all__ = ["BalanceChangeCall", "BalanceChangeOutcome", "apply_balance_change"]


@dataclass(frozen=True)
class BalanceChangeCall:
    """A balance change as the service decided it."""

    organization_id: uuid.UUID
    idempotency_key: str
    request: str  # the canonical input, compared on a replay
    customer_id: str
    currency: str
    type: str
    delta: int
    floor: int  # the balance after the change must be within floor..ceiling
    ceiling: int
    description: str | None
    reference: str | None
    create_missing: bool  # create the wallet if there is none (then apply)
    missing_code: str  # recorded when there is no wallet (and none is created)
    refused_code: str  # recorded when the change would leave floor..ceiling
    now: datetime


async def apply_balance_change(database: Database, call: BalanceChangeCall) -> BalanceChangeOutcome:
    if database.dialect.name == "postgresql":
        return await repo.apply_balance_change(database, vars(call))
    return await database.run_write(_sqlite_balance_change, call)


def _sqlite_balance_change(conn: Connection, call: BalanceChangeCall) -> BalanceChangeOutcome:
    """The function's statements one by one, in the transaction the writer thread commits."""
    if not repo.claim_idempotency_key(
        conn, call.organization_id, call.idempotency_key, call.request, call.now
    ):
        return BalanceChangeOutcome("taken", None, None, None)
    wallet = _change_balance(conn, call)
    if wallet is None and call.create_missing:
        repo.insert_wallet_if_missing(
            conn, call.organization_id, call.customer_id, call.currency, call.now
        )
        wallet = _change_balance(conn, call)
    if wallet is None:
        current = repo.get_wallet_by_owner(
            conn, call.organization_id, call.customer_id, call.currency
        )
        code = call.missing_code if current is None else call.refused_code
        repo.record_outcome(conn, call.organization_id, call.idempotency_key, error_code=code)
        return BalanceChangeOutcome("refused", code, current, None)
    transaction = repo.insert_transaction(
        conn,
        organization_id=call.organization_id,
        wallet_seq=wallet.seq,
        type_=call.type,
        amount=call.delta,
        balance_after=wallet.balance,
        description=call.description,
        reference=call.reference,
        idempotency_key=call.idempotency_key,
        now=call.now,
    )
    repo.record_outcome(
        conn, call.organization_id, call.idempotency_key, transaction_seq=transaction.seq
    )
    return BalanceChangeOutcome("applied", None, wallet, transaction)


def _change_balance(conn: Connection, call: BalanceChangeCall) -> repo.WalletRecord | None:
    return repo.change_balance(
        conn,
        call.organization_id,
        call.customer_id,
        call.currency,
        call.delta,
        call.floor,
        call.ceiling,
        call.now,
    )
