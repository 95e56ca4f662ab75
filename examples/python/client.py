"""Tops up a wallet and reads it back with the client ariadne-codegen generated (wallet_client/).

GQL_WALLET_URL=http://127.0.0.1:8000/graphql GQL_WALLET_API_KEY=gqlw_sk_... python client.py
"""

import asyncio
import os

from wallet_client import WalletClient


async def main() -> None:
    client = WalletClient(
        url=os.environ.get("GQL_WALLET_URL", "http://127.0.0.1:8000/graphql"),
        headers={"Authorization": f"Bearer {os.environ['GQL_WALLET_API_KEY']}"},
    )
    customer_id = "cus_py_example"
    top_up = await client.top_up(
        customer_id=customer_id,
        currency="usd",
        amount=1500,  # SafeInt: a Python int, exact up to 2^53-1
        idempotency_key="py-example-payment-1",  # a retry with this key tops up only once
    )
    if top_up.top_up_wallet.user_errors:
        raise SystemExit(f"top-up refused: {top_up.top_up_wallet.user_errors}")

    wallet = (await client.customer_wallet(customer_id=customer_id, currency="usd")).customer_wallet
    if wallet is None:
        raise SystemExit("the wallet should exist after its top-up")
    # DateTime arrives as an aware datetime.
    print(
        f"{wallet.customer_id} {wallet.currency} balance={wallet.balance} "
        f"modifiedAt={wallet.modified_at.isoformat()}"
    )


asyncio.run(main())
