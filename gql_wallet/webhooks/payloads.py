"""Event payloads, rendered by the GraphQL types themselves (a schema of their own whose root is
one event's data), so that a payload's fields are the API's fields, named and serialized as
the API names and serializes them."""

from __future__ import annotations

from typing import Any

import orjson
import strawberry
from strawberry.schema.config import StrawberryConfig

from gql_wallet.graphql.context import Context
from gql_wallet.graphql.types import (
    SCALARS,
    CustomerWallet,
    WalletHold,
    WalletTransaction,
)


@strawberry.type
class EventData:
    wallet: CustomerWallet
    transaction: WalletTransaction | None
    hold: WalletHold | None


@strawberry.type
class _Batch:
    events: list[EventData]


_SCHEMA = strawberry.Schema(
    query=_Batch,
    config=StrawberryConfig(scalar_map=SCALARS),
)
_WALLET = (
    "id createdAt modifiedAt customerId currency balance heldBalance availableBalance "
    "lowBalanceThreshold"
)
_DOCUMENT = f"""{{ events {{
  wallet {{ {_WALLET} }}
  transaction {{ id createdAt type amount balanceAfter description reference idempotencyKey
                 metadata reverses {{ id }} allocations {{ amount credit {{ id }} }} }}
  hold {{ id createdAt amount capturedAmount status expiresAt resolvedAt description reference
          idempotencyKey metadata }}
}} }}"""


async def render(context: Context, events: list[tuple[EventData, dict[str, Any]]]) -> list[str]:
    """The JSON bodies of events, each its envelope (id, type, createdAt, organizationId,
    sequence) with its `data`: one execution for them all, so that what their fields load is
    loaded together."""
    batch = _Batch(events=[data for data, _envelope in events])
    result = await _SCHEMA.execute(_DOCUMENT, root_value=batch, context_value=context)
    if result.errors or result.data is None:
        raise RuntimeError(f"rendering events' payloads failed: {result.errors}")
    return [
        orjson.dumps({**envelope, "data": data}).decode()
        for (_data, envelope), data in zip(events, result.data["events"], strict=True)
    ]
