"""The expiry sweeper: writes due credit expiries even when nobody reads or writes the wallet.

Expiry does not depend on it: every read and write of a wallet writes its due expiries first
(by the database's clock). The sweeper only makes them visible sooner, in the ledger and to
subscribers: every process runs one, every `GQL_WALLET_EXPIRY_SWEEP_SECONDS` (and once at
start, so that a restart catches up at once), and processes never write one expiry twice (each
wallet is written under its row lock; on PostgreSQL a wallet another process holds is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed
from gql_wallet.ledger.service import sweep_expiries
from gql_wallet.logs import logger


class ExpirySweeper:
    def __init__(self, database: Database, feed: LedgerFeed, interval_seconds: float) -> None:
        self.database = database
        self.feed = feed
        self.interval = interval_seconds
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                written = await sweep_expiries(self.database)
                for wallet in written:  # this process's subscribers (others: the database's)
                    self.feed.wake(wallet.organization_id, wallet.customer_id, wallet.seq)
                if written:
                    logger.info("expiry sweep: wrote the due expiries of %d wallets", len(written))
            except Exception:
                logger.exception("expiry sweep failed; trying again at the next one")
            # Jitter, so that the processes of a deployment do not all sweep at once.
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.0))  # noqa: S311

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
