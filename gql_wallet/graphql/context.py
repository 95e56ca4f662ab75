"""The typed per-request context every resolver receives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from gql_wallet import ledger
from gql_wallet import repository as repo
from gql_wallet.auth import Principal
from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.errors import refuse
from gql_wallet.money import ARGUMENT, check_customer_id
from gql_wallet.repository import (
    AllocationRecord,
    CreditBlockRecord,
    TransactionRecord,
    WalletRecord,
)
from gql_wallet.settings import Settings


@dataclass
class Context:
    database: Database
    principal: Principal
    settings: Settings
    feed: LedgerFeed
    websocket: WebSocket | None = None  # set for operations over a WebSocket
    connection_params: dict[str, Any] | None = None  # the WebSocket's connection_init payload

    # The loaders are made on first use: most requests use none of them, and every request
    # makes a Context.
    @cached_property
    def wallets_by_seq(self) -> DataLoader[int, WalletRecord]:
        return DataLoader(load_fn=self._load_wallets)

    @cached_property
    def transactions_by_seq(self) -> DataLoader[int, TransactionRecord]:
        return DataLoader(load_fn=self._load_transactions)

    @cached_property
    def credits_by_seq(self) -> DataLoader[int, CreditBlockRecord]:
        return DataLoader(load_fn=self._load_credits)

    @cached_property
    def allocations_by_entry(self) -> DataLoader[int, list[AllocationRecord]]:
        return DataLoader(load_fn=self._load_allocations)

    @cached_property
    def undone_by_entry(self) -> DataLoader[int, int]:
        return DataLoader(load_fn=self._load_undone)

    @cached_property
    def category_balances(self) -> DataLoader[int, dict[str, int]]:
        return DataLoader(load_fn=self._load_category_balances)

    @cached_property
    def low_balance_thresholds(self) -> DataLoader[int, int | None]:
        return DataLoader(load_fn=self._load_thresholds)

    def customer_scope(self, requested: str | None) -> tuple[bool, str | None]:
        """(visible, customer filter) for a read that may name a customer.

        A customer session sees only its own customer: naming another one is answered exactly
        like a customer with no wallets. A customerId that no wallet can have is refused
        (INVALID_CUSTOMER_ID), as in writes.
        """
        if requested is not None:
            refuse(check_customer_id(requested, ARGUMENT))
        own = self.principal.customer_id
        if own is None:
            return True, requested
        return requested is None or requested == own, own

    async def fresh_wallets(self, records: list[WalletRecord]) -> list[WalletRecord]:
        """The wallets as a read may show them (their due expiries written first); this
        process's subscribers hear of any expiry written (other processes' through the
        database on PostgreSQL)."""
        fresh = await ledger.fresh_wallets(self.database, records)
        if fresh is records:
            return records
        for before, after in zip(records, fresh, strict=True):
            if after.modified_at != before.modified_at:  # an expiry of credits or holds
                self.feed.wake(after.organization_id, after.customer_id, after.seq)
        return fresh

    async def fresh_wallet(self, record: WalletRecord | None) -> WalletRecord | None:
        return record if record is None else (await self.fresh_wallets([record]))[0]

    async def close_connection(self, code: int, reason: str) -> None:
        if self.websocket is not None:
            await self.websocket.close(code, reason)

    async def _load_wallets(self, seqs: Sequence[int]) -> list[WalletRecord]:
        async with self.database.read_connection() as conn:
            records = await repo.get_wallets_by_seq(conn, seqs)
        found = {w.seq: w for w in await self.fresh_wallets(records)}
        return [found[seq] for seq in seqs]

    async def _load_transactions(self, seqs: Sequence[int]) -> list[TransactionRecord]:
        async with self.database.read_connection() as conn:
            found = {t.seq: t for t in await repo.credits.transactions_by_seq(conn, seqs)}
        return [found[seq] for seq in seqs]

    async def _load_credits(self, seqs: Sequence[int]) -> list[CreditBlockRecord]:
        async with self.database.read_connection() as conn:
            found = {b.seq: b for b in await repo.credits.blocks_by_seq(conn, seqs)}
        return [found[seq] for seq in seqs]

    async def _load_allocations(self, entry_seqs: Sequence[int]) -> list[list[AllocationRecord]]:
        async with self.database.read_connection() as conn:
            rows = await repo.credits.allocations_of(conn, entry_seqs)
        found: dict[int, list[AllocationRecord]] = {}
        for row in rows:
            found.setdefault(row.entry_seq, []).append(row)
        return [found.get(seq, []) for seq in entry_seqs]

    async def _load_undone(self, entry_seqs: Sequence[int]) -> list[int]:
        async with self.database.read_connection() as conn:
            found = await repo.credits.undone_amounts(conn, entry_seqs)
        return [found.get(seq, 0) for seq in entry_seqs]

    async def _load_category_balances(self, wallet_seqs: Sequence[int]) -> list[dict[str, int]]:
        async with self.database.read_connection() as conn:
            rows = await repo.credits.category_balances(conn, wallet_seqs)
        found: dict[int, dict[str, int]] = {}
        for wallet_seq, category, total in rows:
            found.setdefault(wallet_seq, {})[category] = total
        return [found.get(seq, {}) for seq in wallet_seqs]

    async def _load_thresholds(self, wallet_seqs: Sequence[int]) -> list[int | None]:
        async with self.database.read_connection() as conn:
            found = await repo.webhooks.thresholds(conn, wallet_seqs)
        return [found.get(seq) for seq in wallet_seqs]
