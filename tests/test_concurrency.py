"""Races through the real HTTP server (`gql-wallet serve --workers 2`) on a real SQLite file."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import CHARGE, TOP_UP, LiveServer, cli


async def post(client: httpx.AsyncClient, key: str, query: str, variables: dict) -> dict:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def write(customer: str, amount: int, key: str) -> dict:
    return {
        "input": {
            "customerId": customer,
            "currency": "usd",
            "amount": amount,
            "idempotencyKey": key,
        }
    }


async def test_fifty_concurrent_charges_leave_exactly_the_right_balance(
    live_server: LiveServer,
) -> None:
    key = live_server.new_key("acme")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        await post(client, key, TOP_UP, write("cus_1", 10_000, "seed"))
        results = await asyncio.gather(
            *[post(client, key, CHARGE, write("cus_1", 300, f"charge-{i}")) for i in range(50)]
        )
        payloads = [r["chargeWallet"] for r in results]
        succeeded = [p for p in payloads if not p["userErrors"]]
        refused = [p for p in payloads if p["userErrors"]]

        # 10,000 covers 33 charges of 300 exactly; the other 17 are refused, whatever the order.
        assert len(succeeded) == 33 and len(refused) == 17
        assert {p["userErrors"][0]["code"] for p in refused} == {"INSUFFICIENT_FUNDS"}
        assert all(p["wallet"]["balance"] >= 0 for p in payloads)
        after = sorted(p["transaction"]["balanceAfter"] for p in succeeded)
        assert after == [10_000 - 300 * n for n in range(33, 0, -1)]

        data = await post(
            client, key, '{ customerWallet(customerId: "cus_1", currency: "usd") { balance } }', {}
        )
        assert data["customerWallet"]["balance"] == 10_000 - 33 * 300 == 100
    assert "0 problems" in cli(live_server.database_url, "verify").stdout


async def test_concurrent_duplicates_of_one_key_apply_once(live_server: LiveServer) -> None:
    key = live_server.new_key("acme")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        results = await asyncio.gather(
            *[post(client, key, TOP_UP, write("cus_1", 700, "same-key")) for _ in range(20)]
        )
        payloads = [r["topUpWallet"] for r in results]
        assert {p["transaction"]["id"] for p in payloads} == {payloads[0]["transaction"]["id"]}
        assert all(p["userErrors"] == [] for p in payloads)
        data = await post(
            client,
            key,
            '{ customerWallet(customerId: "cus_1", currency: "usd") { balance transactions { edges { cursor } } } }',
            {},
        )
        assert data["customerWallet"]["balance"] == 700
        assert len(data["customerWallet"]["transactions"]["edges"]) == 1


async def test_concurrent_first_top_ups_create_one_wallet(live_server: LiveServer) -> None:
    key = live_server.new_key("acme")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        await asyncio.gather(
            *[post(client, key, TOP_UP, write("cus_new", 5, f"k{i}")) for i in range(30)]
        )
        data = await post(client, key, '{ customerWallets(customerId: "cus_new") { balance } }', {})
        assert data["customerWallets"] == [{"balance": 150}]
