"""Webhooks (CONTRACT part 2, "Webhooks"), against a real HTTP receiver on loopback, on both
databases: endpoints, signatures, the events each change makes, retries, isolation between
endpoints, refusals of private addresses. Races across processes and kill -9 are in
tests/test_webhooks_races.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from gql_wallet.repository.webhooks import deliveries, events, outbox
from gql_wallet.settings import Settings
from gql_wallet.webhooks import worker as worker_module
from gql_wallet.webhooks.events import EVENT_TYPES
from gql_wallet.webhooks.guard import AddressNotAllowed, guarded_client
from tests.conftest import WITH_PGBOUNCER, Env, app_env, changed
from tests.test_credits import later
from tests.test_holds import create as create_hold
from tests.webhook_receiver import Receiver

FAST = {
    "webhooks_allow_loopback_http": True,
    "webhook_retry_delays": "0.2,0.2,0.2",
    "webhook_timeout_seconds": 1,
    "webhook_poll_seconds": 0.05,
    "expiry_sweep_seconds": 0.2,
}
ALL = list(EVENT_TYPES)
ENDPOINT = "id url events description createdAt modifiedAt"
CREATE = f"""mutation($i: CreateWebhookEndpointInput!) {{ createWebhookEndpoint(input: $i) {{
  endpoint {{ {ENDPOINT} }} secret userErrors {{ code field message }} }} }}"""
UPDATE = f"""mutation($i: UpdateWebhookEndpointInput!) {{ updateWebhookEndpoint(input: $i) {{
  endpoint {{ {ENDPOINT} }} secret userErrors {{ code field message }} }} }}"""
ROTATE = f"""mutation($i: WebhookEndpointIdInput!) {{ rotateWebhookSecret(input: $i) {{
  endpoint {{ {ENDPOINT} }} secret userErrors {{ code field message }} }} }}"""
DELETE = f"""mutation($i: WebhookEndpointIdInput!) {{ deleteWebhookEndpoint(input: $i) {{
  endpoint {{ {ENDPOINT} }} secret userErrors {{ code field message }} }} }}"""
LIST = f"{{ webhookEndpoints {{ {ENDPOINT} }} }}"
THRESHOLD = """mutation($i: SetLowBalanceThresholdInput!) { setLowBalanceThreshold(input: $i) {
  wallet { balance availableBalance lowBalanceThreshold } userErrors { code field message } } }"""
DELIVERIES = """query($e: ID!, $status: WebhookDeliveryStatus, $after: String) {
  webhookDeliveries(endpointId: $e, first: 100, status: $status, after: $after) {
    edges { cursor node { id eventId eventType payload status attemptCount nextAttemptAt
      lastStatusCode lastError completedAt
      attempts { number startedAt statusCode error durationMs } } }
    pageInfo { hasNextPage endCursor } } }"""
REDELIVER = """mutation($i: RedeliverWebhookInput!) { redeliverWebhook(input: $i) {
  delivery { id status } userErrors { code field message } } }"""


@pytest.fixture
async def hooks(settings: Settings) -> AsyncIterator[tuple[Env, Receiver]]:
    async with Receiver() as receiver, app_env(changed(settings, FAST)) as env:
        yield env, receiver


async def endpoint(
    env: Env, receiver: Receiver, path: str, event_types: list[str] = ALL
) -> dict[str, Any]:
    made = (await env.api(CREATE, {"i": {"url": receiver.url(path), "events": event_types}}))[
        "createWebhookEndpoint"
    ]
    assert made["userErrors"] == [], made
    return {"id": made["endpoint"]["id"], "secret": made["secret"]}


def received(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    """The events `path` accepted, once each, in `sequence` order."""
    seen: dict[str, dict[str, Any]] = {}
    for request in receiver.answered(path):
        seen.setdefault(request.headers["webhook-id"], json.loads(request.body))
    return sorted(seen.values(), key=lambda body: body["sequence"])


async def settled(env: Env, seconds: float = 20) -> None:
    """Until the outbox is empty and no delivery is PENDING."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with env.database.read_connection() as conn:
            waiting = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
            pending = (
                await conn.execute(
                    select(func.count())
                    .select_from(deliveries)
                    .where(deliveries.c.status == "PENDING")
                )
            ).scalar_one()
        if waiting == 0 and pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("webhooks did not settle")


async def finished(env: Env, endpoint_id: str, seconds: float = 20) -> dict[str, Any]:
    """The endpoint's one delivery once it is SUCCEEDED or FAILED (its outcome recorded)."""
    deadline = time.monotonic() + seconds
    while True:
        page = (await env.api(DELIVERIES, {"e": endpoint_id}))["webhookDeliveries"]
        [node] = [edge["node"] for edge in page["edges"]]
        if node["status"] != "PENDING" or time.monotonic() > deadline:
            return node  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)


def types(bodies: list[dict[str, Any]]) -> list[str]:
    return [body["type"] for body in bodies]


class TestEndpoints:
    async def test_create_list_update_rotate_delete(self, hooks: tuple[Env, Receiver]) -> None:
        env, receiver = hooks
        made = (
            await env.api(
                CREATE,
                {"i": {"url": receiver.url("/ok"), "events": ALL[:2], "description": "billing"}},
            )
        )["createWebhookEndpoint"]
        assert made["userErrors"] == [] and made["secret"].startswith("whsec_")
        endpoint_id = made["endpoint"]["id"]
        assert made["endpoint"]["events"] == ALL[:2]
        listed = (await env.api(LIST))["webhookEndpoints"]
        assert [e["id"] for e in listed] == [endpoint_id]
        assert (await env.other(LIST))["webhookEndpoints"] == []  # another organization's
        changed_ = (await env.api(UPDATE, {"i": {"id": endpoint_id, "events": [ALL[0]]}}))[
            "updateWebhookEndpoint"
        ]
        assert changed_["endpoint"]["events"] == [ALL[0]] and changed_["secret"] is None
        assert changed_["endpoint"]["description"] == "billing"
        rotated = (await env.api(ROTATE, {"i": {"id": endpoint_id}}))["rotateWebhookSecret"]
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != made["secret"]
        foreign = (await env.other(DELETE, {"i": {"id": endpoint_id}}))["deleteWebhookEndpoint"]
        assert [e["code"] for e in foreign["userErrors"]] == ["WEBHOOK_ENDPOINT_NOT_FOUND"]
        deleted = (await env.api(DELETE, {"i": {"id": endpoint_id}}))["deleteWebhookEndpoint"]
        assert deleted["endpoint"]["id"] == endpoint_id
        assert (await env.api(LIST))["webhookEndpoints"] == []
        again = (await env.api(DELETE, {"i": {"id": "not-a-uuid"}}))["deleteWebhookEndpoint"]
        assert [e["code"] for e in again["userErrors"]] == ["WEBHOOK_ENDPOINT_NOT_FOUND"]

    async def test_bad_input_is_refused_and_writes_nothing(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        cases = [
            ({"url": receiver.url("/ok"), "events": []}, "INVALID_INPUT", "events"),
            ({"url": receiver.url("/ok"), "events": ["wallet.nope"]}, "INVALID_INPUT", "events"),
            ({"url": "not a url", "events": ALL}, "WEBHOOK_URL_NOT_ALLOWED", "url"),
            ({"url": "ftp://127.0.0.1/x", "events": ALL}, "WEBHOOK_URL_NOT_ALLOWED", "url"),
            ({"url": "x" * 2001, "events": ALL}, "INVALID_INPUT", "url"),
            ({"url": receiver.url("/ok"), "events": ALL, "description": "d" * 501},
             "INVALID_INPUT", "description"),
        ]  # fmt: skip
        for given, code, field in cases:
            answer = (await env.api(CREATE, {"i": given}))["createWebhookEndpoint"]
            assert answer["endpoint"] is None and answer["secret"] is None
            assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [
                (code, ["input", field])
            ], (given, answer)
        assert (await env.api(LIST))["webhookEndpoints"] == []

    async def test_only_organization_write_keys(self, hooks: tuple[Env, Receiver]) -> None:
        env, receiver = hooks
        reader = await env.new_key("org-a", ("wallets:read",))
        await env.api.top_up("cus_1", 100, "t")
        session = await env.customer_session(env.api, "cus_1")
        for api in (reader, session):
            for document, variables in (
                (LIST, {}),
                (CREATE, {"i": {"url": receiver.url("/ok"), "events": ALL}}),
                (THRESHOLD, {"i": {"customerId": "cus_1", "currency": "usd", "threshold": 5}}),
            ):
                _status, body = await api.answer(document, variables)
                assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert (await env.api(LIST))["webhookEndpoints"] == []


class TestSsrf:
    @pytest.mark.parametrize(
        "url",
        [
            "https://10.0.0.8/hook",  # private
            "https://192.168.1.1/hook",
            "https://172.16.5.4/hook",
            "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
            "https://[fe80::1]/hook",
            "https://[fd00:ec2::254]/hook",  # a unique-local (metadata) address
            "https://[::ffff:10.0.0.1]/hook",  # IPv4-mapped private
            "https://100.64.0.1/hook",  # shared (carrier-grade NAT)
            "https://127.0.0.1/hook",  # loopback, not allowed in production
            "https://localhost/hook",  # a DNS name that resolves to loopback
            "https://0.0.0.0/hook",
            "http://203.0.113.9/hook",  # not https
        ],
    )
    async def test_private_addresses_are_refused_at_creation(self, env: Env, url: str) -> None:
        answer = (await env.api(CREATE, {"i": {"url": url, "events": ALL}}))[
            "createWebhookEndpoint"
        ]
        assert [e["code"] for e in answer["userErrors"]] == ["WEBHOOK_URL_NOT_ALLOWED"], answer
        assert (await env.api(LIST))["webhookEndpoints"] == []

    async def test_refused_again_at_delivery_time(self) -> None:
        # An endpoint accepted in development, delivered by a process without the setting (or
        # a name whose address changed since): the client refuses to connect.
        async with Receiver() as receiver:
            client = guarded_client(False, 2, 4)
            try:
                with pytest.raises(AddressNotAllowed, match=r"127\.0\.0\.1"):
                    await client.post(receiver.url("/ok"), content=b"{}")
                with pytest.raises(AddressNotAllowed, match="localhost"):
                    await client.post(f"http://localhost:{receiver.port}/ok", content=b"{}")
            finally:
                await client.aclose()
            assert receiver.requests == []
            allowed = guarded_client(True, 2, 4)
            try:
                response = await allowed.post(receiver.url("/ok"), content=b"{}")
                assert response.status_code == 200
                redirect = await allowed.get(receiver.url("/ok"))  # no redirects either way
                assert not redirect.is_redirect
            finally:
                await allowed.aclose()


class TestEvents:
    @WITH_PGBOUNCER
    async def test_deliveries_are_signed_per_standard_webhooks(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        hook = await endpoint(env, receiver, "/ok", [ALL[0]])
        await env.api.top_up("cus_1", 500, "t1")
        await env.api.charge(
            "cus_1", 120, "c1", description="usage", metadata={"usage_record": "ur_1"}
        )
        await receiver.wait_for(2, "/ok")
        verifier = Webhook(hook["secret"])
        bodies = []
        for request in receiver.answered("/ok"):
            body = verifier.verify(request.body, request.headers)
            assert request.headers["webhook-id"] == body["id"] and body["id"].startswith("evt_")
            bodies.append(body)
        with pytest.raises(Exception, match="signature"):
            Webhook("whsec_" + "A" * 32).verify(receiver.answered("/ok")[0].body,
                                               receiver.answered("/ok")[0].headers)  # fmt: skip
        # Deliveries may arrive in any order (each is sent on its own): `sequence` orders them.
        top_up, charge = sorted(bodies, key=lambda body: body["sequence"])
        assert types(bodies) == ["wallet.transaction.created"] * 2
        assert top_up["data"]["transaction"]["type"] == "TOP_UP"
        assert charge["organizationId"] and charge["createdAt"]
        assert charge["data"]["transaction"]["amount"] == -120
        assert charge["data"]["transaction"]["type"] == "CHARGE"
        assert charge["data"]["transaction"]["description"] == "usage"
        assert charge["data"]["transaction"]["idempotencyKey"] == "c1"
        assert charge["data"]["transaction"]["metadata"] == {"usage_record": "ur_1"}
        assert top_up["data"]["transaction"]["metadata"] == {}
        # The wallet as it was right after each change.
        assert top_up["data"]["wallet"]["balance"] == 500
        assert charge["data"]["wallet"]["balance"] == 380
        assert charge["data"]["wallet"]["availableBalance"] == 380
        assert charge["data"]["hold"] is None

    async def test_threshold_events_fire_once_per_crossing(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/ok", ALL[1:4])
        await env.api.top_up("cus_1", 1_000, "t1")  # a new wallet: nothing to announce
        set_ = (
            await env.api(
                THRESHOLD, {"i": {"customerId": "cus_1", "currency": "usd", "threshold": 500}}
            )
        )["setLowBalanceThreshold"]
        assert set_["userErrors"] == [] and set_["wallet"]["lowBalanceThreshold"] == 500
        for n, amount in enumerate([300, 300, 100, 100, 200], 1):  # 700, 400 low, 300, 200, 0
            await env.api.charge("cus_1", amount, f"c{n}")
        await env.api.top_up("cus_1", 100, "t2")  # 100: still below, no event
        await env.api.top_up("cus_1", 900, "t3")  # 1,000: recovered
        await env.api.charge("cus_1", 600, "c9")  # 400: low again
        await settled(env)
        bodies = received(receiver, "/ok")
        assert types(bodies) == [
            "wallet.balance.low",
            "wallet.balance.depleted",
            "wallet.balance.recovered",
            "wallet.balance.low",
        ]
        assert [b["data"]["wallet"]["availableBalance"] for b in bodies] == [400, 0, 1_000, 400]
        assert all(b["data"]["transaction"] is None for b in bodies)
        # Without a threshold: only reaching 0, and leaving it.
        cleared = (
            await env.api(
                THRESHOLD, {"i": {"customerId": "cus_1", "currency": "usd", "threshold": None}}
            )
        )["setLowBalanceThreshold"]
        assert cleared["wallet"]["lowBalanceThreshold"] is None
        await env.api.charge("cus_1", 400, "c10")
        await env.api.top_up("cus_1", 1, "t4")
        await settled(env)
        assert types(received(receiver, "/ok"))[4:] == [
            "wallet.balance.recovered",  # the threshold removed: 400 is no longer low
            "wallet.balance.depleted",
            "wallet.balance.recovered",
        ]

    async def test_bad_thresholds(self, env: Env) -> None:
        for threshold, code in ((0, "INVALID_AMOUNT"), (-5, "INVALID_AMOUNT")):
            answer = (
                await env.api(
                    THRESHOLD,
                    {"i": {"customerId": "cus_1", "currency": "usd", "threshold": threshold}},
                )
            )["setLowBalanceThreshold"]
            assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [
                (code, ["input", "threshold"])
            ]
        missing = (
            await env.api(
                THRESHOLD, {"i": {"customerId": "nobody", "currency": "usd", "threshold": 5}}
            )
        )["setLowBalanceThreshold"]
        assert [e["code"] for e in missing["userErrors"]] == ["WALLET_NOT_FOUND"]

    async def test_no_event_for_refused_or_replayed_writes(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/ok")
        await env.api.top_up("cus_1", 100, "t1")
        await env.api.top_up("cus_1", 100, "t1")  # a replay
        refused = await env.api.charge("cus_1", 500, "c1")  # more than the balance
        assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_FUNDS"]
        await env.api.charge("cus_1", 500, "c1")  # its replay
        await env.api.charge("nobody", 5, "c2")  # no wallet
        await settled(env)
        assert types(received(receiver, "/ok")) == ["wallet.transaction.created"]
        async with env.database.read_connection() as conn:
            assert (await conn.execute(select(func.count()).select_from(events))).scalar_one() == 1

    async def test_hold_and_credit_expiry_events(self, hooks: tuple[Env, Receiver]) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/ok", ["wallet.hold.expired", "wallet.credit.expired"])
        grant = (
            await env.api(
                "mutation($i: GrantCreditsInput!) { grantCredits(input: $i) "
                "{ userErrors { code } } }",
                {
                    "i": {
                        "customerId": "cus_1",
                        "currency": "usd",
                        "amount": 50,
                        "idempotencyKey": "g",
                        "expiresAt": later(1.0),
                    }
                },
            )
        )["grantCredits"]
        assert grant["userErrors"] == []
        await env.api.top_up("cus_1", 100, "t")
        hold = (await create_hold(env.api, 30, "h", expiresInSeconds=1))["hold"]  # from the promo
        await receiver.wait_for(2, "/ok")  # the sweeper writes the expiries
        await asyncio.sleep(0.5)
        await settled(env)
        bodies = received(receiver, "/ok")
        [expired_hold] = [b["data"] for b in bodies if b["type"] == "wallet.hold.expired"]
        assert expired_hold["hold"]["id"] == hold["id"]
        assert expired_hold["hold"]["status"] == "EXPIRED"
        assert expired_hold["wallet"]["heldBalance"] == 0
        # The promo's unreserved 20 when it expired, and the 30 the hold gave back to it when
        # the hold expired (or all 50 at once, if one sweep wrote both).
        credits = [b["data"] for b in bodies if b["type"] == "wallet.credit.expired"]
        assert {c["transaction"]["type"] for c in credits} == {"EXPIRATION"}
        assert sorted(c["transaction"]["amount"] for c in credits) in ([-30, -20], [-50])
        assert credits[-1]["wallet"]["balance"] == 100

    async def test_an_endpoint_receives_its_types_only_from_its_creation_on(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        await env.api.top_up("cus_1", 100, "before")
        await endpoint(env, receiver, "/ok", ["wallet.balance.depleted"])
        await env.api.top_up("cus_1", 100, "after")
        await env.api.charge("cus_1", 200, "all")
        await settled(env)
        bodies = received(receiver, "/ok")
        assert types(bodies) == ["wallet.balance.depleted"]


class TestDelivery:
    async def test_retries_after_500s_hangs_and_closed_connections(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        hooks_ = {path: await endpoint(env, receiver, path, [ALL[0]])
                  for path in ("/fail/2", "/close/2", "/hang", "/ok")}  # fmt: skip
        await env.api.top_up("cus_1", 100, "t")
        for path in ("/fail/2", "/close/2", "/ok"):
            await receiver.wait_for(1, path)
        # The same event on every attempt: the same id, body and a valid signature.
        failing = [r for r in receiver.requests if r.path == "/fail/2"]
        assert [r.status for r in failing] == [500, 500, 200]
        assert len({r.headers["webhook-id"] for r in failing}) == 1
        assert len({r.body for r in failing}) == 1
        for request in failing:
            Webhook(hooks_["/fail/2"]["secret"]).verify(request.body, request.headers)
        # Growing delays with jitter: 0.2 s +-10% between attempts here.
        gaps = [b.at - a.at for a, b in itertools.pairwise(failing)]
        assert all(gap >= 0.15 for gap in gaps), gaps
        delivery = await finished(env, hooks_["/fail/2"]["id"])
        assert delivery["status"] == "SUCCEEDED" and delivery["attemptCount"] == 3
        assert [a["statusCode"] for a in delivery["attempts"]] == [500, 500, 200]
        attempts = (await finished(env, hooks_["/close/2"]["id"]))["attempts"]
        assert [a["statusCode"] for a in attempts] == [None, None, 200]
        assert all(a["error"] for a in attempts[:2])
        # The hanging endpoint: every attempt times out (1 s here), then it is FAILED.
        node = await finished(env, hooks_["/hang"]["id"])
        assert node["status"] == "FAILED" and node["attemptCount"] == 4
        assert node["nextAttemptAt"] is None and node["completedAt"] is not None
        assert all("no answer within 1 s" in a["error"] for a in node["attempts"])
        assert all(900 <= a["durationMs"] <= 3000 for a in node["attempts"])

    async def test_a_failing_endpoint_does_not_slow_a_healthy_one(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/hang", [ALL[0]])
        await endpoint(env, receiver, "/ok", [ALL[0]])
        started = time.monotonic()
        for n in range(30):
            await env.api.top_up(f"cus_{n % 3}", 10, f"t{n}")
        await receiver.wait_for(30, "/ok", seconds=10)
        lags = sorted(r.at - started for r in receiver.answered("/ok"))
        # 30 hanging attempts hold every slot the hanging endpoint may have for 1 s each; the
        # healthy endpoint's deliveries go on meanwhile.
        assert lags[-1] < 4.0, lags

    async def test_an_endpoint_deleted_mid_attempt_holds_up_no_outcome(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        doomed = await endpoint(env, receiver, "/hang", [ALL[0]])
        await endpoint(env, receiver, "/ok", [ALL[0]])
        await env.api.top_up("cus_1", 10, "a")
        deadline = time.monotonic() + 10
        while not any(path == "/hang" for path, _id in receiver.tries):
            assert time.monotonic() < deadline, receiver.tries
            await asyncio.sleep(0.02)
        # Its delivery goes with it while its attempt is under way; the attempt's outcome has
        # nothing left to be recorded on, and the outcomes of others are recorded all the same.
        gone = (await env.api(DELETE, {"i": {"id": doomed["id"]}}))["deleteWebhookEndpoint"]
        assert gone["userErrors"] == []
        await asyncio.sleep(1.5)  # its attempt times out (1 s here)
        await env.api.top_up("cus_1", 10, "b")
        await settled(env)
        await asyncio.sleep(2.5)  # an outcome not recorded would be attempted again by now
        assert len(receiver.answered("/ok")) == len(received(receiver, "/ok")) == 2

    async def test_a_connection_is_kept_for_the_next_delivery(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/ok", [ALL[0]])
        for n in range(12):
            await env.api.top_up("cus_1", 10, f"k{n}")
            await receiver.wait_for(n + 1, "/ok")
        # One at a time, each delivery finds the last one's connection open (a response read
        # to its end): one connection, not one per delivery.
        assert receiver.accepted == 1, receiver.accepted

    async def test_failed_after_the_schedule_then_redelivered(
        self, hooks: tuple[Env, Receiver]
    ) -> None:
        env, receiver = hooks
        hook = await endpoint(env, receiver, "/fail/4", [ALL[0]])
        await env.api.top_up("cus_1", 100, "t")
        failed: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while not failed and time.monotonic() < deadline:
            page = await env.api(DELIVERIES, {"e": hook["id"], "status": "FAILED"})
            edges = page["webhookDeliveries"]["edges"]
            failed = edges[0]["node"] if edges else {}
            await asyncio.sleep(0.1)
        assert failed["attemptCount"] == 4 and failed["lastStatusCode"] == 500
        again = (await env.api(REDELIVER, {"i": {"deliveryId": failed["id"]}}))["redeliverWebhook"]
        assert again["userErrors"] == [] and again["delivery"]["status"] == "PENDING"
        await receiver.wait_for(1, "/fail/4")
        await settled(env)
        page = (await env.api(DELIVERIES, {"e": hook["id"]}))["webhookDeliveries"]
        node = page["edges"][0]["node"]
        assert node["status"] == "SUCCEEDED" and node["attemptCount"] == 5
        unknown = (await env.api(REDELIVER, {"i": {"deliveryId": "nope"}}))["redeliverWebhook"]
        assert [e["code"] for e in unknown["userErrors"]] == ["WEBHOOK_DELIVERY_NOT_FOUND"]
        foreign = (await env.other(REDELIVER, {"i": {"deliveryId": node["id"]}}))[
            "redeliverWebhook"
        ]
        assert [e["code"] for e in foreign["userErrors"]] == ["WEBHOOK_DELIVERY_NOT_FOUND"]

    async def test_metrics(self, hooks: tuple[Env, Receiver]) -> None:
        env, receiver = hooks
        await endpoint(env, receiver, "/fail/1", [ALL[0]])
        await env.api.top_up("cus_1", 100, "t")
        await receiver.wait_for(1, "/fail/1")
        await settled(env)
        await asyncio.sleep(0.1)
        text = (await env.client.get("/metrics")).text
        assert 'gql_wallet_webhook_deliveries_total{outcome="retrying"}' in text
        assert 'gql_wallet_webhook_deliveries_total{outcome="succeeded"}' in text
        assert "gql_wallet_webhook_oldest_pending_seconds" in text


async def test_pagination_of_deliveries(hooks: tuple[Env, Receiver]) -> None:
    env, receiver = hooks
    hook = await endpoint(env, receiver, "/ok", [ALL[0]])
    for n in range(5):
        await env.api.top_up("cus_1", 10, f"t{n}")
    await settled(env)
    seen: list[str] = []
    after = None
    while True:
        page = (
            await env.api(
                DELIVERIES.replace("first: 100", "first: 2"), {"e": hook["id"], "after": after}
            )
        )["webhookDeliveries"]
        seen += [edge["node"]["eventId"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == len(set(seen)) == 5
    assert seen == [body["id"] for body in reversed(received(receiver, "/ok"))]


async def test_unknown_endpoint_for_deliveries(env: Env) -> None:
    status, body = await env.api.answer(DELIVERIES, {"e": "nope"})
    assert body["data"] is None and "no webhook endpoint" in body["errors"][0]["message"]
    assert status == 200


async def test_a_worker_stops_even_if_a_task_will_not(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a task does whose database connection's cleanup hangs: SQLAlchemy runs that cleanup
    # to its end even when the task is cancelled.
    monkeypatch.setattr(worker_module, "STOP_SECONDS", 0.2)
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    worker = worker_module.WebhookWorker(None, settings, None)  # type: ignore[arg-type]
    worker.tasks = [asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(3600))]
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(worker.stop(), 5)
    assert time.monotonic() - started < 2
    assert worker.tasks[1].cancelled() and not worker.tasks[0].done()
    released.set()
    await worker.tasks[0]
