"""Subscription: live wallet balances over graphql-transport-ws."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from strawberry.types import Info

from gql_wallet import repository as repo
from gql_wallet.feed import SlowConsumer, WalletChange
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.fanout import GroupKey, current_delivery
from gql_wallet.graphql.queries import currency_argument
from gql_wallet.graphql.types import CustomerWallet, WalletTransaction

SLOW_CONSUMER_CLOSE_CODE = 4008


@strawberry.type(description="A wallet's state after a committed change, or its current state.")
class WalletUpdate:
    wallet: CustomerWallet = strawberry.field(
        description="The wallet as it was right after `transaction` (balance, modifiedAt)."
    )
    transaction: WalletTransaction | None = strawberry.field(
        description="The ledger entry that changed the wallet; null in the first events, "
        "which give the current state of each wallet when the subscription starts, and when "
        "only its holds changed (created, captured or voided, expired: see heldBalance)."
    )


@strawberry.type(description="Live updates over WebSocket (graphql-transport-ws at /graphql).")
class Subscription:
    @strawberry.subscription(
        description="A customer's wallets, live: first the current state of each wallet (one "
        "event per currency, transaction null), then every committed change in ledger order, "
        "holds' changes included. "
        "Organization keys may watch their customers; a customer session token only its own "
        "customer (any other customerId behaves like a customer with no wallets)."
    )
    async def wallet_updated(
        self,
        info: Info[Context, None],
        customer_id: Annotated[
            str, strawberry.argument(description="The organization's own ID for the customer.")
        ],
        currency: Annotated[
            str | None,
            strawberry.argument(description="Only this currency (any case); default: all."),
        ] = None,
    ) -> AsyncGenerator[WalletUpdate, None]:
        # Arguments are checked before the stream exists: a refused one ends the subscription
        # with graphql-transport-ws's `error` message, as a validation error does.
        visible, _ = info.context.customer_scope(customer_id)
        code = None if currency is None else currency_argument(currency)
        return wallet_updates(info.context, customer_id, code, visible)


async def wallet_updates(
    context: Context, customer_id: str, code: str | None, visible: bool
) -> AsyncGenerator[WalletUpdate, None]:
    if not visible:
        # Exactly like a customer that has no wallets and never gets one.
        await asyncio.Event().wait()
    principal = context.principal
    # Feed events are executed once per group of identical subscriptions and arrive here
    # already encoded; only the current state at the start is executed for this one.
    delivery = current_delivery.get()
    key = GroupKey.of(delivery, principal, customer_id, code)
    async with delivery.shared.join(key, principal, delivery.variables, wallet_update) as events:
        for _attempt in range(3):
            async with context.database.read_transaction() as conn:
                wallets = await repo.list_wallets(
                    conn, principal.organization_id, customer_id=customer_id, currency=code
                )
                events.seen = await repo.last_entries(conn, principal.organization_id, customer_id)
            if not any(wallet.expiry_due for wallet in wallets):
                break
            # Expiries come first; then the snapshot again, with its cursors.
            await context.fresh_wallets(wallets)
        for wallet in wallets:
            yield WalletUpdate(wallet=CustomerWallet.from_record(wallet), transaction=None)
        while True:
            try:
                payload = await events.next()
            except SlowConsumer:
                await context.close_connection(
                    SLOW_CONSUMER_CLOSE_CODE,
                    f"Slow consumer: fell more than {context.settings.subscription_queue_size}"
                    " events behind; reconnect to get the current state.",
                )
                return
            await delivery.send_payload(payload)


def wallet_update(change: WalletChange) -> WalletUpdate:
    return WalletUpdate(
        wallet=CustomerWallet.from_record(change.wallet),
        transaction=None
        if change.transaction is None
        else WalletTransaction.from_record(change.transaction),
    )
