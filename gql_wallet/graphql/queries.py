"""Query: read the caller's wallets. Another organization's wallet (or, for a customer session,
another customer's) looks exactly like none."""

from __future__ import annotations

import uuid
from typing import Annotated

import strawberry
from strawberry.types import Info

from gql_wallet import repository as repo
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import refuse
from gql_wallet.graphql.types import (
    DEFAULT_PAGE_SIZE,
    CustomerWallet,
    CustomerWalletConnection,
    CustomerWalletEdge,
    FirstArgument,
    WalletHold,
    WalletTransaction,
    decode_cursor,
    encode_cursor,
    page_info,
    page_size,
)
from gql_wallet.money import (
    ARGUMENT,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    check_currency,
    check_text,
    normalize_currency,
)
from gql_wallet.repository import TransactionRecord

CustomerIdArg = Annotated[
    str, strawberry.argument(description="The organization's own ID for the customer.")
]


def currency_argument(currency: str) -> str:
    """The lowercase code of a read's currency argument; an invalid one is refused, as in writes."""
    refuse(check_currency(currency, ARGUMENT))
    code = normalize_currency(currency)
    assert code is not None  # checked above
    return code


@strawberry.type(description="Read wallets and their ledgers.")
class Query:
    @strawberry.field(
        description="Every wallet of a customer, one per currency, oldest first. "
        "Empty when the customer has none."
    )
    async def customer_wallets(
        self, info: Info[Context, None], customer_id: CustomerIdArg
    ) -> list[CustomerWallet]:
        visible, customer = info.context.customer_scope(customer_id)
        if not visible:
            return []
        assert customer is not None  # a customer was named, so the scope names one
        database = info.context.database
        records = await info.context.fresh_wallets(
            await repo.list_customer_wallets(
                database, info.context.principal.organization_id, customer
            ),
        )
        return [CustomerWallet.from_record(r) for r in records]

    @strawberry.field(description="A customer's wallet in one currency; null if there is none.")
    async def customer_wallet(
        self,
        info: Info[Context, None],
        customer_id: CustomerIdArg,
        currency: Annotated[
            str, strawberry.argument(description="ISO 4217 code, in any case (usd, USD).")
        ],
    ) -> CustomerWallet | None:
        visible, _ = info.context.customer_scope(customer_id)
        code = currency_argument(currency)
        if not visible:
            return None
        database = info.context.database
        record = await info.context.fresh_wallet(
            await repo.find_wallet_by_owner(
                database, info.context.principal.organization_id, customer_id, code
            ),
        )
        return CustomerWallet.from_record(record) if record else None

    @strawberry.field(description="A wallet by its ID; null if there is none or it is not yours.")
    async def wallet(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The wallet's ID.")],
    ) -> CustomerWallet | None:
        wallet_id = _id(id)
        if wallet_id is None:
            return None
        _, customer = info.context.customer_scope(None)
        async with info.context.database.read_connection() as conn:
            record = await repo.get_wallet_by_id(
                conn, info.context.principal.organization_id, wallet_id, customer_id=customer
            )
        record = await info.context.fresh_wallet(record)
        return CustomerWallet.from_record(record) if record else None

    @strawberry.field(
        description="A hold by its ID; null if there is none or it is not yours (a customer "
        "session sees only its customer's holds)."
    )
    async def hold(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The hold's ID.")],
    ) -> WalletHold | None:
        hold_id = _id(id)
        if hold_id is None:
            return None
        async with info.context.database.read_connection() as conn:
            found = await repo.holds.holds_by_id(
                conn, info.context.principal.organization_id, [hold_id]
            )
        if not found or not await _yours(info, found[0].wallet_seq):
            return None
        return WalletHold.from_record(found[0])

    @strawberry.field(
        description="A ledger entry by its ID; null if there is none or it is not yours (a "
        "customer session sees only its customer's entries)."
    )
    async def transaction(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The entry's ID.")],
    ) -> WalletTransaction | None:
        entry_id = _id(id)
        if entry_id is None:
            return None
        async with info.context.database.read_connection() as conn:
            found = await repo.statements.transaction_by_id(
                conn, info.context.principal.organization_id, entry_id
            )
        return await _visible(info, found)

    @strawberry.field(
        description="The ledger entry that the write with this idempotency key made: how a "
        "backend finds the outcome of a write whose answer it lost. Null if no entry has that "
        "key (the write was refused, never arrived, or made a hold), or it is not yours."
    )
    async def transaction_by_idempotency_key(
        self,
        info: Info[Context, None],
        key: Annotated[
            str, strawberry.argument(description="The idempotency key the write was sent with.")
        ],
    ) -> WalletTransaction | None:
        refuse(check_text(key, "key", MAX_IDEMPOTENCY_KEY_LENGTH, required=True, at=ARGUMENT))
        async with info.context.database.read_connection() as conn:
            found = await repo.statements.transaction_by_key(
                conn, info.context.principal.organization_id, key
            )
        return await _visible(info, found)

    @strawberry.field(description="The organization's wallets, oldest first, cursor-paginated.")
    async def wallets(
        self,
        info: Info[Context, None],
        first: FirstArgument = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None, strawberry.argument(description="Return wallets after this cursor.")
        ] = None,
        customer_id: Annotated[
            str | None, strawberry.argument(description="Only this customer's wallets.")
        ] = None,
        currency: Annotated[
            str | None, strawberry.argument(description="Only wallets in this currency (any case).")
        ] = None,
    ) -> CustomerWalletConnection:
        size = page_size(first)
        after_seq = decode_cursor("w", after)
        visible, customer = info.context.customer_scope(customer_id)
        code = None if currency is None else currency_argument(currency)
        if not visible:
            return CustomerWalletConnection(edges=[], page_info=page_info([], False))
        database = info.context.database
        records = await repo.page_of_wallets(
            database,
            info.context.principal.organization_id,
            customer_id=customer,
            currency=code,
            after_seq=after_seq,
            limit=size + 1,
        )
        records = await info.context.fresh_wallets(records)
        edges = [
            CustomerWalletEdge(cursor=encode_cursor("w", r.seq), node=CustomerWallet.from_record(r))
            for r in records[:size]
        ]
        return CustomerWalletConnection(
            edges=edges, page_info=page_info([e.cursor for e in edges], len(records) > size)
        )


def _id(id: strawberry.ID) -> uuid.UUID | None:
    """An ID argument as a UUID; None when it is not one (nothing has that ID). Text that no
    input may hold is refused, as in writes."""
    refuse(check_text(str(id), "id", at=ARGUMENT))
    try:
        return uuid.UUID(str(id))
    except ValueError:
        return None


async def _yours(info: Info[Context, None], wallet_seq: int) -> bool:
    """Whether the caller may see what belongs to this wallet of its organization: a customer
    session sees its own customer's only."""
    _, customer = info.context.customer_scope(None)
    if customer is None:
        return True
    wallet = await info.context.wallets_by_seq.load(wallet_seq)
    return wallet.customer_id == customer


async def _visible(
    info: Info[Context, None], found: TransactionRecord | None
) -> WalletTransaction | None:
    if found is None or not await _yours(info, found.wallet_seq):
        return None
    return WalletTransaction.from_record(found)
