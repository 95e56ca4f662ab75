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
    original; a wallet's held balance is what its open holds reserve, and never more than its
    balance; a block holds what open holds reserve from it, never more than it has; a hold
    reserves its amount, is resolved once, and a capture takes at most its hold. Reads one
    snapshot, so a live server can keep writing meanwhile."""
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
        exempt = [TransactionType.EXPIRATION.value, TransactionType.CAPTURE.value]
        for block_id, wallet_seq, entry_id in await repo.audit.spent_after_expiry(conn, exempt):
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
        _audit_holds(report, names, wallets, await repo.audit.held_by_wallet(conn))
        for block_id, wallet_seq, held, remaining, reserved in await repo.audit.block_reservations(
            conn
        ):
            if held != reserved or not 0 <= held <= remaining:
                report.problems.append(
                    f"{names[wallet_seq]}: block {block_id} has held {held} (remaining "
                    f"{remaining}) but open holds reserve {reserved} from it"
                )
        for entry_id, wallet_seq in await repo.audit.captures_without_hold(
            conn, TransactionType.CAPTURE.value
        ):
            report.problems.append(f"{names[wallet_seq]}: capture {entry_id} is no hold's")
        for row in await repo.audit.hold_states(conn):
            hold_id, wallet_seq, status, amount, captured, resolved_at, reserved, entry = row
            problem = _hold_problem(status, amount, captured, resolved_at, reserved, entry)
            if problem:
                report.problems.append(f"{names[wallet_seq]}: hold {hold_id} {problem}")
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


def _audit_holds(
    report: AuditReport,
    names: dict[int, str],
    wallets: list[repo.WalletRecord],
    held: dict[int, int],
) -> None:
    for wallet in wallets:
        if wallet.held_balance != held.get(wallet.seq, 0):
            report.problems.append(
                f"{names[wallet.seq]}: held balance {wallet.held_balance} != what its open holds "
                f"reserve {held.get(wallet.seq, 0)}"
            )
        if not 0 <= wallet.held_balance <= wallet.balance:
            report.problems.append(
                f"{names[wallet.seq]}: held balance {wallet.held_balance} outside 0..balance "
                f"{wallet.balance} (a negative available balance)"
            )


def _hold_problem(
    status: str,
    amount: int,
    captured: int,
    resolved_at: object,
    reserved: int,
    entry: int | None,
) -> str | None:
    """What is wrong with one hold, if anything: it reserved its amount (released on
    resolution, the reservations stay as its record); a capture took 1..amount in one CAPTURE
    entry; only a resolved hold has a resolution time."""
    if reserved != amount:
        return f"of {amount} reserved {reserved}"
    if status == "CAPTURED":
        if not 1 <= captured <= amount or entry != -captured:
            return f"of {amount} captured {captured} with an entry of {entry}"
    elif captured != 0 or entry is not None:
        return f"is {status} but captured {captured}"
    if (status == "OPEN") != (resolved_at is None):
        return f"is {status} with resolvedAt {resolved_at}"
    return None
