"""The typed per-request context every resolver receives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from gql_wallet import repository as repo
from gql_wallet.auth import Principal
from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.errors import refuse
from gql_wallet.money import ARGUMENT, check_customer_id
from gql_wallet.repository import WalletRecord
from gql_wallet.settings import Settings


@dataclass
class Context:
    database: Database
    principal: Principal
    settings: Settings
    feed: LedgerFeed
    websocket: WebSocket | None = None  # set for operations over a WebSocket
    connection_params: dict[str, Any] | None = None  # the WebSocket's connection_init payload
    wallets_by_seq: DataLoader[int, WalletRecord] = field(init=False)

    def __post_init__(self) -> None:
        self.wallets_by_seq = DataLoader(load_fn=self._load_wallets)

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

    async def close_connection(self, code: int, reason: str) -> None:
        if self.websocket is not None:
            await self.websocket.close(code, reason)

    async def _load_wallets(self, seqs: Sequence[int]) -> list[WalletRecord]:
        async with self.database.read_connection() as conn:
            found = {w.seq: w for w in await repo.get_wallets_by_seq(conn, seqs)}
        return [found[seq] for seq in seqs]
