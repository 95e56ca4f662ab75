"""Per-token rate limits (the `limits` library: sliding-window counters).

Counters live in memory per process by default; point GQL_WALLET_RATE_LIMIT_STORAGE_URI at a
shared store (redis://...) to give each token one budget across all processes.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from gql_wallet.auth import Principal
from gql_wallet.settings import Settings


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        uri = settings.rate_limit_storage_uri
        storage = storage_from_string(uri if uri.startswith("async+") else f"async+{uri}")
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.api_key = parse(settings.rate_limit_api_key) if settings.rate_limit_api_key else None
        self.session = (
            parse(settings.rate_limit_customer_session)
            if settings.rate_limit_customer_session
            else None
        )

    def limit_for(self, principal: Principal) -> RateLimitItem | None:
        return self.session if principal.customer_id is not None else self.api_key

    async def retry_after(self, principal: Principal) -> int | None:
        """None if the request may go ahead; else the seconds to wait before retrying."""
        item = self.limit_for(principal)
        if item is None or await self.strategy.hit(item, str(principal.token_id)):
            return None
        stats = await self.strategy.get_window_stats(item, str(principal.token_id))
        return max(1, math.ceil(stats.reset_time - time.time()))
