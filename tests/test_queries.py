"""Reads: customerWallets, customerWallet, wallet, wallets and transaction pagination."""

from __future__ import annotations

import pytest

from tests.conftest import Env

WALLET_FIELDS = "id customerId currency balance createdAt modifiedAt"


class TestLookups:
    async def test_customer_wallets_lists_every_currency_oldest_first(self, env: Env) -> None:
        await env.api.top_up("cus_1", 100, "k1", currency="eur")
        await env.api.top_up("cus_1", 200, "k2", currency="usd")
        await env.api.top_up("cus_2", 300, "k3", currency="usd")
        data = await env.api(f'{{ customerWallets(customerId: "cus_1") {{ {WALLET_FIELDS} }} }}')
        assert [(w["currency"], w["balance"]) for w in data["customerWallets"]] == [
            ("eur", 100),
            ("usd", 200),
        ]

    async def test_customer_wallets_of_an_unknown_customer_is_empty(self, env: Env) -> None:
        assert await env.api('{ customerWallets(customerId: "nobody") { id } }') == {
            "customerWallets": []
        }

    @pytest.mark.parametrize("currency", ["usd", "USD", "Usd"])
    async def test_customer_wallet_currency_is_case_insensitive(
        self, env: Env, currency: str
    ) -> None:
        created = await env.api.top_up("cus_1", 100, "k1")
        data = await env.api(
            'query($c: String!) { customerWallet(customerId: "cus_1", currency: $c) { id balance } }',
            {"c": currency},
        )
        assert data["customerWallet"] == {"id": created["wallet"]["id"], "balance": 100}

    @pytest.mark.parametrize("currency", ["eur", "JPY"])  # invalid codes: test_input_defects
    async def test_customer_wallet_is_null_when_missing(self, env: Env, currency: str) -> None:
        await env.api.top_up("cus_1", 100, "k1")
        data = await env.api(
            'query($c: String!) { customerWallet(customerId: "cus_1", currency: $c) { id } }',
            {"c": currency},
        )
        assert data == {"customerWallet": None}

    async def test_wallet_by_id(self, env: Env) -> None:
        created = (await env.api.top_up("cus_1", 100, "k1"))["wallet"]
        data = await env.api(f'{{ wallet(id: "{created["id"]}") {{ {WALLET_FIELDS} }} }}')
        assert data["wallet"] == created

    @pytest.mark.parametrize(
        "wallet_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", ""]
    )
    async def test_wallet_by_unknown_id_is_null(self, env: Env, wallet_id: str) -> None:
        assert await env.api(f'{{ wallet(id: "{wallet_id}") {{ id }} }}') == {"wallet": None}


class TestWalletsConnection:
    async def test_pages_through_every_wallet_oldest_first(self, env: Env) -> None:
        for i in range(7):
            await env.api.top_up(f"cus_{i}", 10 + i, f"k{i}")
        seen, after = [], None
        while True:
            data = await env.api(
                "query($after: String) { wallets(first: 3, after: $after) { "
                "edges { cursor node { customerId } } pageInfo { hasNextPage endCursor } } }",
                {"after": after},
            )
            page = data["wallets"]
            seen += [e["node"]["customerId"] for e in page["edges"]]
            assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert seen == [f"cus_{i}" for i in range(7)]

    async def test_filters_by_customer_and_currency(self, env: Env) -> None:
        await env.api.top_up("cus_1", 1, "k1", currency="usd")
        await env.api.top_up("cus_1", 2, "k2", currency="eur")
        await env.api.top_up("cus_2", 3, "k3", currency="eur")
        data = await env.api(
            '{ byCurrency: wallets(currency: "EUR") { edges { node { balance } } } '
            'byCustomer: wallets(customerId: "cus_1") { edges { node { balance } } } '
            'both: wallets(customerId: "cus_1", currency: "usd") { edges { node { balance } } } '
            'none: wallets(currency: "jpy") { edges { node { balance } } pageInfo { hasNextPage } } }'
        )
        balances = {k: [e["node"]["balance"] for e in v["edges"]] for k, v in data.items()}
        assert balances == {"byCurrency": [2, 3], "byCustomer": [1, 2], "both": [1], "none": []}

    async def test_default_page_size_is_20(self, env: Env) -> None:
        for i in range(21):
            await env.api.top_up(f"cus_{i}", 1, f"k{i}")
        data = await env.api("{ wallets { edges { cursor } pageInfo { hasNextPage } } }")
        assert len(data["wallets"]["edges"]) == 20 and data["wallets"]["pageInfo"]["hasNextPage"]

    @pytest.mark.parametrize("first", [0, -1, 101])
    async def test_page_size_out_of_range_is_a_request_error(self, env: Env, first: int) -> None:
        response = await env.api.post(f"{{ wallets(first: {first}) {{ edges {{ cursor }} }} }}")
        assert response.status_code == 200
        body = response.json()
        assert body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "between 1 and 100" in body["errors"][0]["message"]

    @pytest.mark.parametrize("cursor", ["garbage", "dHg6MQ==", "!!!", "dzpBQkM="])
    async def test_foreign_cursor_is_a_request_error(self, env: Env, cursor: str) -> None:
        response = await env.api.post(
            "query($a: String) { wallets(after: $a) { edges { cursor } } }", {"a": cursor}
        )
        body = response.json()
        assert (
            response.status_code == 200
            and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        )


class TestTransactions:
    QUERY = """query($id: ID!, $first: Int, $after: String) { wallet(id: $id) {
        balance transactions(first: $first, after: $after) {
          edges { cursor node { id type amount balanceAfter idempotencyKey wallet { id } } }
          pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } } }"""

    async def test_ledger_is_newest_first_and_chained(self, env: Env) -> None:
        wallet_id = (await env.api.top_up("cus_1", 2000, "k0"))["wallet"]["id"]
        for i in range(1, 6):
            await env.api.charge("cus_1", 100 * i, f"k{i}")
        data = await env.api(self.QUERY, {"id": wallet_id, "first": 100})
        nodes = [e["node"] for e in data["wallet"]["transactions"]["edges"]]
        assert [n["idempotencyKey"] for n in nodes] == ["k5", "k4", "k3", "k2", "k1", "k0"]
        assert {n["wallet"]["id"] for n in nodes} == {wallet_id}
        chain = list(reversed(nodes))
        running = 0
        for node in chain:
            running += node["amount"]
            assert node["balanceAfter"] == running
        assert (
            data["wallet"]["balance"] == running == sum(n["amount"] for n in nodes) == 2000 - 1500
        )

    async def test_pagination_stays_correct_while_entries_arrive(self, env: Env) -> None:
        wallet_id = (await env.api.top_up("cus_1", 1, "k0"))["wallet"]["id"]
        for i in range(1, 30):
            await env.api.top_up("cus_1", 1, f"k{i}")
        original = [f"k{i}" for i in range(29, -1, -1)]

        seen: list[str] = []
        after = None
        arrived = 0
        while True:
            data = await env.api(self.QUERY, {"id": wallet_id, "first": 7, "after": after})
            page = data["wallet"]["transactions"]
            seen += [e["node"]["idempotencyKey"] for e in page["edges"]]
            # New entries commit between every two pages; they are newer than the cursor.
            await env.api.top_up("cus_1", 1, f"new{arrived}")
            arrived += 1
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert seen == original
        assert not page["pageInfo"]["hasPreviousPage"]

    async def test_transactions_page_size_limits(self, env: Env) -> None:
        wallet_id = (await env.api.top_up("cus_1", 1, "k0"))["wallet"]["id"]
        response = await env.api.post(self.QUERY, {"id": wallet_id, "first": 101})
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        data = await env.api(self.QUERY, {"id": wallet_id, "first": 100})
        assert len(data["wallet"]["transactions"]["edges"]) == 1

    async def test_empty_wallet_has_an_empty_page(self, env: Env) -> None:
        data = await env.api(
            'mutation { createWallet(input: {customerId: "c", currency: "usd"}) { wallet { id } } }'
        )
        wallet_id = data["createWallet"]["wallet"]["id"]
        page = (await env.api(self.QUERY, {"id": wallet_id}))["wallet"]["transactions"]
        assert page == {
            "edges": [],
            "pageInfo": {
                "hasNextPage": False,
                "hasPreviousPage": False,
                "startCursor": None,
                "endCursor": None,
            },
        }


class TestTenantIsolation:
    async def test_another_organization_sees_nothing(self, env: Env) -> None:
        mine = (await env.api.top_up("cus_1", 500, "k1"))["wallet"]
        other = env.other
        assert await other(f'{{ wallet(id: "{mine["id"]}") {{ id }} }}') == {"wallet": None}
        assert await other('{ customerWallets(customerId: "cus_1") { id } }') == {
            "customerWallets": []
        }
        assert await other('{ customerWallet(customerId: "cus_1", currency: "usd") { id } }') == {
            "customerWallet": None
        }
        assert await other("{ wallets { edges { node { id } } } }") == {"wallets": {"edges": []}}

    async def test_another_organization_cannot_charge_or_touch_the_wallet(self, env: Env) -> None:
        await env.api.top_up("cus_1", 500, "k1")
        refused = await env.other.charge("cus_1", 100, "k2")
        assert [e["code"] for e in refused["userErrors"]] == ["WALLET_NOT_FOUND"]
        # A top-up by the other organization creates its own wallet, not a share of ours.
        theirs = await env.other.top_up("cus_1", 7, "k3")
        assert theirs["wallet"]["balance"] == 7
        mine = await env.api('{ customerWallet(customerId: "cus_1", currency: "usd") { balance } }')
        assert mine == {"customerWallet": {"balance": 500}}

    async def test_not_yours_answers_exactly_like_missing(self, env: Env) -> None:
        mine = (await env.api.top_up("cus_1", 500, "k1"))["wallet"]
        missing = "00000000-0000-4000-8000-000000000000"
        for query in (
            f'{{ wallet(id: "{mine["id"]}") {{ id }} }}',
            '{ customerWallet(customerId: "cus_1", currency: "usd") { id } }',
        ):
            theirs = await env.other.post(query)
            nothing = await env.other.post(
                query.replace(mine["id"], missing).replace("cus_1", "cus_x")
            )
            assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())
