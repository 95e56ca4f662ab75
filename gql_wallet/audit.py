"""The ledger audit behind `gql-wallet verify`."""

from __future__ import annotations

from dataclasses import dataclass, field

from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.ledger import TransactionType


@dataclass
class AuditReport:
    wallets: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)


async def audit(database: Database) -> AuditReport:
    """Check every wallet: balance == sum of its entries, an unbroken balanceAfter chain, never
    a negative balance, and balance == what its credit blocks hold; every block: remaining ==
    amount + sum of its allocations, never negative, never spent at or after its expiry; every
    entry's allocations add up to it; refunds and reversals never undo more than their
    original. Reads one snapshot, so a live server can keep writing meanwhile."""
    report = AuditReport()
    async with database.read_transaction() as conn:
        wallets = await repo.all_wallets(conn)
        names = {
            w.seq: f"wallet {w.id} (customer {w.customer_id!r}, {w.currency})" for w in wallets
        }
        credits = await repo.audit.credits_by_wallet(conn)
        for wallet in wallets:
            if wallet.balance != credits.get(wallet.seq, 0):
                report.problems.append(
                    f"{names[wallet.seq]}: balance {wallet.balance} != what its credit blocks "
                    f"hold {credits.get(wallet.seq, 0)}"
                )
        for block_id, wallet_seq, amount, remaining, allocated in await repo.audit.block_totals(
            conn
        ):
            if remaining != amount + allocated:
                report.problems.append(
                    f"{names[wallet_seq]}: block {block_id} has remaining {remaining} != amount "
                    f"{amount} + allocations {allocated}"
                )
            if remaining < 0:
                report.problems.append(f"{names[wallet_seq]}: block {block_id} is below 0")
        for block_id, wallet_seq, entry_id in await repo.audit.spent_after_expiry(
            conn, TransactionType.EXPIRATION.value
        ):
            report.problems.append(
                f"{names[wallet_seq]}: block {block_id} spent by entry {entry_id} after it expired"
            )
        for entry_id, wallet_seq, amount, allocated in await repo.audit.unbalanced_allocations(
            conn
        ):
            report.problems.append(
                f"{names[wallet_seq]}: entry {entry_id} of {amount} has allocations of {allocated}"
            )
        for entry_id, wallet_seq, amount, undone in await repo.audit.undone_totals(conn):
            if abs(undone) > abs(amount) or (undone > 0) == (amount > 0):
                report.problems.append(
                    f"{names[wallet_seq]}: entry {entry_id} of {amount} is undone by {undone}"
                )
        for wallet in wallets:
            report.wallets += 1
            running = 0
            name = names[wallet.seq]
            for position, (amount, balance_after) in enumerate(
                await repo.ledger_of(conn, wallet.seq)
            ):
                report.transactions += 1
                running += amount
                if balance_after != running:
                    report.problems.append(
                        f"{name}: entry {position} has balanceAfter {balance_after}, "
                        f"expected {running}"
                    )
                if balance_after < 0:
                    report.problems.append(f"{name}: entry {position} takes the balance below 0")
            if wallet.balance != running:
                report.problems.append(
                    f"{name}: balance {wallet.balance} != sum of entries {running}"
                )
            if wallet.balance < 0:
                report.problems.append(f"{name}: negative balance {wallet.balance}")
    return report
