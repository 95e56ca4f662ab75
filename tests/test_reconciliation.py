"""Reconciliation reads (issue 20), on both databases: balances at an instant, statements,
ledger filters, and finding an entry by its ID or by its write's idempotency key."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from tests.conftest import WITH_PGBOUNCER, Api, Env

BALANCE_AT = """query($id: ID!, $at: DateTime!) { wallet(id: $id) {
  balanceAt(at: $at) { at balance paidBalance promotionalBalance } } }"""
STATEMENT = """query($id: ID!, $from: DateTime!, $to: DateTime!) { wallet(id: $id) {
  statement(from: $from, to: $to) { from to openingBalance closingBalance entryCount
    opening { balance paidBalance promotionalBalance }
    closing { balance paidBalance promotionalBalance }
    totals { type amount count } } } }"""
PAGE = """query($id: ID!, $first: Int, $after: String, $from: DateTime, $to: DateTime,
  $types: [WalletTransactionType!]) { wallet(id: $id) {
  transactions(first: $first, after: $after, from: $from, to: $to, types: $types) {
    edges { cursor node { id type amount } } pageInfo { hasNextPage endCursor } } } }"""
GRANT = """mutation($input: GrantCreditsInput!) { grantCredits(input: $input) {
  transaction { id type amount balanceAfter createdAt } userErrors { code field message } } }"""
BY_ID = "query($id: ID!) { transaction(id: $id) { id type amount balanceAfter idempotencyKey } }"
BY_KEY = """query($key: String!) { transactionByIdempotencyKey(key: $key) {
  id type amount idempotencyKey } }"""


def _at(text: str, **delta: float) -> str:
    return (datetime.fromisoformat(text) + timedelta(**delta)).isoformat()


async def _history(env: Env) -> tuple[str, list[dict[str, Any]]]:
    """A wallet's ledger: top-up 1,000, grant 300, charge 500 (promotional credits burn first),
    top-up 200; each entry a few milliseconds after the last. Its ID and the entries."""
    entries = []
    for kind, amount, key in (("top_up", 1_000, "t1"), ("grant", 300, "g1"),
                              ("charge", 500, "c1"), ("top_up", 200, "t2")):  # fmt: skip
        if kind == "grant":
            payload = await _grant(env.api, amount, key)
        else:
            payload = await getattr(env.api, kind)("cus_1", amount, key)
        assert payload["userErrors"] == [], payload
        entries.append(payload["transaction"])
        await asyncio.sleep(0.01)
    [wallet] = (await env.api('{ customerWallets(customerId: "cus_1") { id } }'))["customerWallets"]
    return wallet["id"], entries


async def _grant(api: Api, amount: int, key: str) -> Any:
    variables = {"customerId": "cus_1", "currency": "usd", "amount": amount, "idempotencyKey": key}
    return (await api(GRANT, {"input": variables}))["grantCredits"]


async def _balance_at(api: Api, wallet_id: str, at: str) -> dict[str, Any]:
    return (await api(BALANCE_AT, {"id": wallet_id, "at": at}))["wallet"]["balanceAt"]  # type: ignore[no-any-return]


async def test_balance_at_each_instant_of_the_ledger(env: Env) -> None:
    wallet_id, entries = await _history(env)
    created = [e["createdAt"] for e in entries]
    before = await _balance_at(env.api, wallet_id, _at(created[0], milliseconds=-1))
    assert (before["balance"], before["paidBalance"], before["promotionalBalance"]) == (0, 0, 0)
    expected = [(1_000, 1_000, 0), (1_300, 1_000, 300), (800, 800, 0), (1_000, 1_000, 0)]
    for entry, (balance, paid, promotional) in zip(entries, expected, strict=True):
        found = await _balance_at(env.api, wallet_id, entry["createdAt"])
        assert (found["balance"], found["paidBalance"], found["promotionalBalance"]) == (
            balance, paid, promotional,
        )  # fmt: skip
        assert found["balance"] == entry["balanceAfter"]
        assert datetime.fromisoformat(found["at"]) == datetime.fromisoformat(entry["createdAt"])
    # Between two entries it is the earlier one's; long after, the last one's.
    between = await _balance_at(env.api, wallet_id, _at(created[2], milliseconds=-1))
    assert between["balance"] == 1_300
    later = await _balance_at(env.api, wallet_id, _at(created[3], days=400))
    assert later["balance"] == 1_000


@WITH_PGBOUNCER
async def test_a_statement_adds_up(env: Env) -> None:
    wallet_id, entries = await _history(env)
    created = [e["createdAt"] for e in entries]
    # The period after the first top-up up to the charge: the grant and the charge.
    found = (await env.api(STATEMENT, {"id": wallet_id, "from": created[0], "to": created[2]}))[
        "wallet"
    ]["statement"]
    assert (found["openingBalance"], found["closingBalance"]) == (1_000, 800)
    assert found["totals"] == [
        {"type": "CHARGE", "amount": -500, "count": 1},
        {"type": "GRANT", "amount": 300, "count": 1},
    ]
    assert found["entryCount"] == 2
    assert (
        found["openingBalance"] + sum(t["amount"] for t in found["totals"])
        == found["closingBalance"]
    )
    assert found["opening"] == await _statement_side(env, wallet_id, created[0])
    assert found["closing"] == await _statement_side(env, wallet_id, created[2])
    # A period before the wallet, and one with every entry.
    start = _at(created[0], days=-31)
    empty = (await env.api(STATEMENT, {"id": wallet_id, "from": start, "to": start}))["wallet"][
        "statement"
    ]
    assert (empty["openingBalance"], empty["closingBalance"], empty["totals"]) == (0, 0, [])
    whole = (
        await env.api(STATEMENT, {"id": wallet_id, "from": start, "to": _at(created[3], days=1)})
    )["wallet"]["statement"]
    assert whole["entryCount"] == 4 and whole["closingBalance"] == 1_000
    assert whole["closing"] == {"balance": 1_000, "paidBalance": 1_000, "promotionalBalance": 0}


async def _statement_side(env: Env, wallet_id: str, at: str) -> dict[str, Any]:
    found = await _balance_at(env.api, wallet_id, at)
    return {key: found[key] for key in ("balance", "paidBalance", "promotionalBalance")}


async def test_transactions_of_a_period_and_types_page_stably(env: Env) -> None:
    wallet_id, entries = await _history(env)
    created = [e["createdAt"] for e in entries]
    page = (await env.api(PAGE, {"id": wallet_id, "types": ["TOP_UP"]}))["wallet"]["transactions"]
    assert [e["node"]["amount"] for e in page["edges"]] == [200, 1_000]
    period = {"from": created[0], "to": created[2]}
    seen, after = [], None
    while True:
        page = (await env.api(PAGE, {"id": wallet_id, "first": 1, "after": after, **period}))[
            "wallet"
        ]["transactions"]
        seen += [e["node"]["type"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == ["CHARGE", "GRANT"]
    both = await env.api(PAGE, {"id": wallet_id, **period, "types": ["CHARGE", "TOP_UP"]})
    assert [e["node"]["type"] for e in both["wallet"]["transactions"]["edges"]] == ["CHARGE"]


async def test_bad_periods_are_refused_with_their_field(env: Env) -> None:
    wallet_id, entries = await _history(env)
    created = entries[1]["createdAt"]
    for query, variables, field in (
        (STATEMENT, {"from": created, "to": _at(created, seconds=-1)}, "from"),
        (STATEMENT, {"from": "yesterday", "to": created}, "from"),
        (STATEMENT, {"from": created, "to": "2026-13-01T00:00:00+00:00"}, "to"),
        (STATEMENT, {"from": "2026-03-01T00:00:00", "to": created}, "from"),  # no UTC offset
        (PAGE, {"from": created, "to": _at(created, seconds=-1)}, "from"),
        (BALANCE_AT, {"at": "soon"}, "at"),
    ):
        status, body = await env.api.answer(query, {"id": wallet_id, **variables})
        assert status == 200 and body["data"]["wallet"] is None, body
        [error] = body["errors"]
        assert error["extensions"] == {"code": "INVALID_INPUT", "field": [field]}, error


@WITH_PGBOUNCER
async def test_an_entry_by_id_and_by_idempotency_key(env: Env) -> None:
    _wallet_id, entries = await _history(env)
    charge = entries[2]
    found = (await env.api(BY_ID, {"id": charge["id"]}))["transaction"]
    assert found == {
        "id": charge["id"], "type": "CHARGE", "amount": -500, "balanceAfter": 800,
        "idempotencyKey": "c1",
    }  # fmt: skip
    by_key = (await env.api(BY_KEY, {"key": "c1"}))["transactionByIdempotencyKey"]
    assert by_key["id"] == charge["id"]
    # Unknown, malformed, or another organization's: none.
    assert (await env.api(BY_KEY, {"key": "never-sent"}))["transactionByIdempotencyKey"] is None
    assert (await env.api(BY_ID, {"id": "not-a-uuid"}))["transaction"] is None
    assert (await env.other(BY_ID, {"id": charge["id"]}))["transaction"] is None
    assert (await env.other(BY_KEY, {"key": "c1"}))["transactionByIdempotencyKey"] is None
    # A refused write leaves no entry behind its key.
    refused = await env.api.charge("cus_1", 10**9, "too-much")
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_FUNDS"]
    assert (await env.api(BY_KEY, {"key": "too-much"}))["transactionByIdempotencyKey"] is None
    # A customer session sees its own customer's entries only.
    own = await env.customer_session(env.api, "cus_1")
    assert (await own(BY_ID, {"id": charge["id"]}))["transaction"]["id"] == charge["id"]
    stranger = await env.customer_session(env.api, "cus_2")
    assert (await stranger(BY_ID, {"id": charge["id"]}))["transaction"] is None
    assert (await stranger(BY_KEY, {"key": "c1"}))["transactionByIdempotencyKey"] is None
    _status, body = await env.api.answer(BY_KEY, {"key": ""})
    assert body["errors"][0]["extensions"]["code"] == "INVALID_INPUT", body


async def test_instants_at_the_edges_of_time(env: Env) -> None:
    wallet_id, _entries = await _history(env)
    earliest, latest = "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"
    assert (await _balance_at(env.api, wallet_id, earliest))["balance"] == 0
    assert (await _balance_at(env.api, wallet_id, latest))["balance"] == 1_000
    found = (await env.api(STATEMENT, {"id": wallet_id, "from": earliest, "to": latest}))["wallet"][
        "statement"
    ]
    assert (found["openingBalance"], found["closingBalance"], found["entryCount"]) == (0, 1_000, 4)
    # Instants that exist only with their offset, not in UTC: refused, not a server error.
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        status, body = await env.api.answer(BALANCE_AT, {"id": wallet_id, "at": at})
        assert status == 200 and body["errors"][0]["extensions"]["code"] == "INVALID_INPUT", body
