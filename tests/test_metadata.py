"""Metadata on every write (issue 20), on both databases: stored with the entry or hold,
returned as given, part of the idempotency comparison, refused whole when bad, matched by
`transactions(metadata:)`, and carried by exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gql_wallet import repository as repo
from gql_wallet.ledger import exports
from gql_wallet.repository.records import idempotency_keys, transactions, wallet_holds
from tests.conftest import WITH_PGBOUNCER, Env
from tests.test_credits import charge, codes, grant, refund, reverse, top_up, write

ENTRY = "id type amount metadata"
TOP_UP = f"""mutation($input: TopUpWalletInput!) {{ topUpWallet(input: $input) {{
  transaction {{ {ENTRY} }} userErrors {{ code field message }} }} }}"""
HOLD = "id metadata capture { id type metadata }"
CREATE = f"""mutation($input: CreateHoldInput!) {{ createHold(input: $input) {{
  hold {{ {HOLD} }} userErrors {{ code field message }} }} }}"""
CAPTURE = f"""mutation($input: CaptureHoldInput!) {{ captureHold(input: $input) {{
  hold {{ {HOLD} }} transaction {{ {ENTRY} }} userErrors {{ code field message }} }} }}"""
BY_ID = f"query($id: ID!) {{ transaction(id: $id) {{ {ENTRY} }} }}"
FILTERED = """query($c: String!, $m: Metadata, $types: [WalletTransactionType!], $after: String) {
  customerWallet(customerId: $c, currency: "usd") {
    transactions(first: 2, metadata: $m, types: $types, after: $after) {
      edges { node { id type amount metadata } } pageInfo { hasNextPage endCursor } } } }"""

USAGE = {"usage_record": "ur_123", "meter": "gpu-seconds"}


@WITH_PGBOUNCER
async def test_every_write_stores_its_metadata(env: Env) -> None:
    """A top-up, grant, charge, refund and reversal each keep the metadata they were given,
    in the write's answer and in every later read."""
    paid = await top_up(env.api, 1_000, "t", metadata={"payment": "pi_1"})
    free = await grant(env.api, 100, "g", metadata={"campaign": "winter"})
    spent = await charge(env.api, 300, "c", metadata=USAGE)
    back = await refund(env.api, spent["transaction"]["id"], "r", amount=50,
                        metadata={"ticket": "SUP-9"})  # fmt: skip
    # (The charge burned the grant first: what is left to reverse is the top-up's.)
    taken = await reverse(env.api, paid["transaction"]["id"], "v", amount=100,
                          metadata={"reason": "chargeback"})  # fmt: skip
    written = [paid, free, spent, back, taken]
    assert all(w["userErrors"] == [] for w in written), written
    expected = [{"payment": "pi_1"}, {"campaign": "winter"}, USAGE, {"ticket": "SUP-9"},
                {"reason": "chargeback"}]  # fmt: skip
    for payload, metadata in zip(written, expected, strict=True):
        entry_id = payload["transaction"]["id"]
        found = (await env.api(BY_ID, {"id": entry_id}))["transaction"]
        assert found["metadata"] == metadata
    # Without metadata, an entry has {} (not null: a client reads it without a check).
    plain = await top_up(env.api, 5, "plain")
    assert (await env.api(BY_ID, {"id": plain["transaction"]["id"]}))["transaction"][
        "metadata"
    ] == {}


@WITH_PGBOUNCER
async def test_a_capture_keeps_its_own_metadata_or_takes_its_holds(env: Env) -> None:
    await top_up(env.api, 1_000, "t")
    holds = []
    for key in ("h1", "h2", "h3"):
        made = await write(env.api, CREATE, "createHold", customerId="cus_1", currency="usd",
                           amount=100, idempotencyKey=key, metadata={"job": key})  # fmt: skip
        assert made["userErrors"] == [] and made["hold"]["metadata"] == {"job": key}
        holds.append(made["hold"]["id"])
    own = await write(env.api, CAPTURE, "captureHold", holdId=holds[0], idempotencyKey="c1",
                      metadata={"usage_record": "ur_9"})  # fmt: skip
    inherited = await write(env.api, CAPTURE, "captureHold", holdId=holds[1], idempotencyKey="c2")
    empty = await write(env.api, CAPTURE, "captureHold", holdId=holds[2], idempotencyKey="c3",
                        metadata={})  # fmt: skip
    assert own["transaction"]["metadata"] == {"usage_record": "ur_9"}
    assert own["hold"]["metadata"] == {"job": "h1"}  # the hold keeps its own
    assert inherited["transaction"]["metadata"] == {"job": "h2"}
    assert empty["transaction"]["metadata"] == {"job": "h3"}
    assert inherited["hold"]["capture"]["metadata"] == {"job": "h2"}


async def test_metadata_is_part_of_the_idempotency_comparison(env: Env) -> None:
    first = await top_up(env.api, 100, "k", metadata={"a": "1", "b": "2"})
    # The same object, keys in another order: the same request, replayed.
    again = await top_up(env.api, 100, "k", metadata={"b": "2", "a": "1"})
    assert again["transaction"]["id"] == first["transaction"]["id"]
    for other in ({"a": "1", "b": "3"}, {"a": "1"}, None):
        extra = {} if other is None else {"metadata": other}
        reused = await top_up(env.api, 100, "k", **extra)
        assert codes(reused) == ["IDEMPOTENCY_KEY_REUSED"], other
    # No metadata and {} are the same request (a key used before metadata existed replays).
    plain = await charge(env.api, 10, "p")
    assert (await charge(env.api, 10, "p", metadata={}))["transaction"]["id"] == plain[
        "transaction"
    ]["id"]
    assert codes(await charge(env.api, 10, "p", metadata={"x": "y"})) == ["IDEMPOTENCY_KEY_REUSED"]


def _keys(n: int) -> dict[str, str]:
    return {f"k{i:02d}": "v" for i in range(n)}


BAD = [
    pytest.param([["a", "b"]], id="a list"),
    pytest.param("a=b", id="a string"),
    pytest.param(7, id="a number"),
    pytest.param(_keys(51), id="51 keys"),
    pytest.param({"k" * 41: "v"}, id="a key of 41 characters"),
    pytest.param({"": "v"}, id="an empty key"),
    pytest.param({"k": "v" * 501}, id="a value of 501 characters"),
    pytest.param({"k": 1}, id="a number value"),
    pytest.param({"k": True}, id="a boolean value"),
    pytest.param({"k": None}, id="a null value"),
    pytest.param({"k": {"nested": "v"}}, id="an object value"),
    pytest.param({"k": ["v"]}, id="a list value"),
    pytest.param({"k": "a\x00b"}, id="NUL in a value"),
    pytest.param({"a\x00": "v"}, id="NUL in a key"),
]


async def _written(env: Env) -> tuple[int, int, int]:
    async with env.database.read_transaction() as conn:
        return tuple(  # type: ignore[return-value]
            [
                (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                for t in (transactions, wallet_holds, idempotency_keys)
            ]
        )


@pytest.mark.parametrize("metadata", BAD)
async def test_bad_metadata_is_refused_and_writes_nothing(env: Env, metadata: Any) -> None:
    await top_up(env.api, 1_000, "seed")
    charged = await charge(env.api, 10, "seed-charge")
    before = await _written(env)
    refusals = [
        await top_up(env.api, 100, "t", metadata=metadata),
        await grant(env.api, 100, "g", metadata=metadata),
        await charge(env.api, 100, "c", metadata=metadata),
        await refund(env.api, charged["transaction"]["id"], "r", metadata=metadata),
        await write(env.api, CREATE, "createHold", customerId="cus_1", currency="usd",
                    amount=10, idempotencyKey="h", metadata=metadata),
    ]  # fmt: skip
    for payload in refusals:
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [
            ("INVALID_INPUT", ["input", "metadata"])
        ], payload
        assert "metadata" in payload["userErrors"][0]["message"]
    assert await _written(env) == before
    # The keys were not claimed: with good metadata the same keys write.
    assert (await top_up(env.api, 100, "t", metadata={"ok": "yes"}))["userErrors"] == []


async def test_bad_metadata_as_a_literal_too(env: Env) -> None:
    """Metadata written into the document (not a variable) is checked the same way."""
    document = """mutation { chargeWallet(input: {customerId: "cus_1", currency: "usd",
      amount: 1, idempotencyKey: "lit", metadata: {count: 3}}) { userErrors { code field } } }"""
    data = await env.api(document)
    assert data["chargeWallet"]["userErrors"] == [
        {"code": "INVALID_INPUT", "field": ["input", "metadata"]}
    ]
    good = """mutation { topUpWallet(input: {customerId: "cus_1", currency: "usd", amount: 1,
      idempotencyKey: "lit2", metadata: {order: "o_1", x: "y"}}) {
      transaction { metadata } } }"""
    assert (await env.api(good))["topUpWallet"]["transaction"]["metadata"] == {
        "order": "o_1",
        "x": "y",
    }


async def test_the_limits_themselves_are_accepted_exactly(env: Env) -> None:
    metadata = {f"{i:02d}" + "k" * 38: "é" * 500 for i in range(50)}
    metadata['quote"and\\slash'] = "ok"
    metadata.pop(next(iter(metadata)))  # 50 keys, one of them with JSON's special characters
    made = await top_up(env.api, 1, "limits", metadata=metadata)
    assert made["userErrors"] == []
    found = (await env.api(BY_ID, {"id": made["transaction"]["id"]}))["transaction"]
    assert found["metadata"] == metadata


@WITH_PGBOUNCER
async def test_transactions_filter_by_metadata(env: Env) -> None:
    await top_up(env.api, 10_000, "t", metadata={"order": "o_1"})
    ids = {}
    for n, meter in enumerate(["gpu", "cpu", "gpu", "gpu", 'gp"u']):
        done = await charge(env.api, 10 + n, f"c{n}", metadata={"meter": meter, "n": str(n)})
        ids[n] = done["transaction"]["id"]
    await refund(env.api, ids[0], "r0", amount=1, metadata={"meter": "gpu"})

    async def pages(**variables: Any) -> list[str]:
        found, after = [], None
        while True:
            data = await env.api(FILTERED, {"c": "cus_1", "after": after, **variables})
            connection = data["customerWallet"]["transactions"]
            found += [e["node"]["id"] for e in connection["edges"]]
            if not connection["pageInfo"]["hasNextPage"]:
                return found
            after = connection["pageInfo"]["endCursor"]

    # Keyset pages of the matches, newest first, stable across pages.
    gpu = await pages(m={"meter": "gpu"})
    assert len(gpu) == 4 and gpu[1:] == [ids[3], ids[2], ids[0]]
    assert await pages(m={"meter": "gpu"}, types=["CHARGE"]) == [ids[3], ids[2], ids[0]]
    assert await pages(m={"meter": "gpu", "n": "2"}) == [ids[2]]
    assert await pages(m={"meter": 'gp"u'}) == [ids[4]]
    assert await pages(m={"meter": "tpu"}) == []
    assert len(await pages(m={})) == 7  # no condition
    status, body = await env.api.answer(FILTERED, {"c": "cus_1", "m": {"meter": 1}})
    assert status == 200 and body["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_exports_carry_metadata(env: Env) -> None:
    """As JSON text in a CSV's cell, as an object in NDJSON. (Webhook payloads: see
    test_webhooks.py, test_deliveries_are_signed_per_standard_webhooks.)"""
    await top_up(env.api, 100, "t", metadata={"payment": "pi_1", "note": 'a, "b"'})
    await charge(env.api, 10, "c")
    start, end = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
    async with env.database.read_connection() as conn:
        organization = await repo.statements.organization_named(conn, "org-a")
    assert organization is not None
    texts = {}
    for fmt in ("csv", "ndjson"):
        async with exports.Export(env.database, organization, start, end, fmt) as job:
            texts[fmt] = "".join([chunk async for chunk in job.chunks()])
    rows = list(csv.DictReader(io.StringIO(texts["csv"])))
    assert [json.loads(row["metadata"]) for row in rows] == [
        {"payment": "pi_1", "note": 'a, "b"'},
        {},
    ]
    lines = [json.loads(line) for line in texts["ndjson"].splitlines()]
    assert [line["metadata"] for line in lines] == [{"payment": "pi_1", "note": 'a, "b"'}, {}]
