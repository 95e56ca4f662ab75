"""A mixed wallet workload for the multi-process and crash tests: 32 concurrent HTTP clients
sending top-ups, charges (some refused), reads, and concurrent duplicate retries of the same
idempotency keys, keeping a client-side record of every acknowledged outcome."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import CHARGE, TOP_UP

READ = """query($c: String!) { customerWallet(customerId: $c, currency: "usd") { balance } }"""


@dataclass(frozen=True)
class Op:
    kind: str  # "top_up", "charge" or "read"
    customer: str
    amount: int = 0
    key: str = ""


@dataclass(frozen=True)
class Outcome:
    """What the server acknowledged for one idempotency key."""

    customer: str
    delta: int  # signed change of the balance; 0 when refused
    transaction_id: str | None
    error: str | None


@dataclass
class Record:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reads: int = 0
    lowest_balance_read: int | None = None
    duplicates_sent: int = 0
    acknowledged_writes: int = 0

    def acknowledge(self, op: Op, payload: dict[str, Any]) -> None:
        errors = payload["userErrors"]
        transaction = payload["transaction"]
        outcome = Outcome(
            customer=op.customer,
            delta=(op.amount if op.kind == "top_up" else -op.amount) if not errors else 0,
            transaction_id=transaction["id"] if transaction else None,
            error=errors[0]["code"] if errors else None,
        )
        assert not errors or errors[0]["code"] == "INSUFFICIENT_FUNDS", errors
        earlier = self.outcomes.setdefault(op.key, outcome)
        # Every acknowledgement of one key (duplicates, retries after a crash) is identical.
        assert earlier == outcome, (op, earlier, outcome)
        self.acknowledged_writes += 1

    def expected_balances(self) -> dict[str, int]:
        balances: dict[str, int] = {}
        for outcome in self.outcomes.values():
            balances[outcome.customer] = balances.get(outcome.customer, 0) + outcome.delta
        return balances


def mixed_ops(customers: list[str], count: int, seed: int, prefix: str = "op") -> Iterator[Op]:
    rng = random.Random(seed)
    for i in range(count):
        customer = rng.choice(customers)
        roll = rng.random()
        if roll < 0.4:
            yield Op("top_up", customer, rng.randint(1, 500), f"{prefix}-{i}")
        elif roll < 0.8:
            yield Op("charge", customer, rng.randint(1, 900), f"{prefix}-{i}")
        else:
            yield Op("read", customer)


class Unacknowledged(Exception):
    """The request got no answer (the server died mid-flight); retry it with the same key."""


async def send(client: httpx.AsyncClient, api_key: str, op: Op, record: Record) -> None:
    if op.kind == "read":
        query, variables = READ, {"c": op.customer}
    else:
        query = TOP_UP if op.kind == "top_up" else CHARGE
        variables = {
            "input": {
                "customerId": op.customer,
                "currency": "usd",
                "amount": op.amount,
                "idempotencyKey": op.key,
            }
        }
    try:
        response = await client.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    except httpx.TransportError as error:
        raise Unacknowledged from error
    if response.status_code >= 500:
        raise Unacknowledged(response.text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    data = body["data"]
    if op.kind == "read":
        wallet = data["customerWallet"]
        record.reads += 1
        if wallet is not None:
            balance = wallet["balance"]
            assert balance >= 0
            low = record.lowest_balance_read
            record.lowest_balance_read = balance if low is None else min(low, balance)
        return
    record.acknowledge(op, data["topUpWallet" if op.kind == "top_up" else "chargeWallet"])


async def run_clients(
    base_url: str,
    api_key: str,
    ops: Iterator[Op],
    record: Record,
    *,
    clients: int = 32,
    duplicate_every: int = 10,
    stop: asyncio.Event | None = None,
) -> list[Op]:
    """Send `ops` from `clients` concurrent clients until they run out or `stop` is set.

    Every `duplicate_every`-th write is sent twice at once (a client retrying over a second
    connection). Returns the writes that were not acknowledged, to be retried.
    """
    unacknowledged: list[Op] = []
    counter = 0
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal counter
            for op in ops:
                if stop is not None and stop.is_set():
                    if op.kind != "read":
                        unacknowledged.append(op)
                    return
                counter += 1
                copies = 2 if op.kind != "read" and counter % duplicate_every == 0 else 1
                record.duplicates_sent += copies - 1
                results = await asyncio.gather(
                    *[send(client, api_key, op, record) for _ in range(copies)],
                    return_exceptions=True,
                )
                failures = [r for r in results if isinstance(r, BaseException)]
                for failure in failures:
                    if not isinstance(failure, Unacknowledged):
                        raise failure
                if len(failures) == copies and op.kind != "read":
                    unacknowledged.append(op)

        await asyncio.gather(*[worker() for _ in range(clients)])
    return unacknowledged
