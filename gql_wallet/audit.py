"""The ledger audit behind `gql-wallet verify`."""

from __future__ import annotations

from dataclasses import dataclass, field

from gql_wallet import repository as repo
from gql_wallet.db import Database


@dataclass
class AuditReport:
    wallets: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)


async def audit(database: Database) -> AuditReport:
    """Check every wallet: balance == sum of its entries, an unbroken balanceAfter chain, and
    never a negative balance. Reads one snapshot, so a live server can keep writing meanwhile."""
    report = AuditReport()
    async with database.read_transaction() as conn:
        for wallet in await repo.all_wallets(conn):
            report.wallets += 1
            running = 0
            name = f"wallet {wallet.id} (customer {wallet.customer_id!r}, {wallet.currency})"
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
