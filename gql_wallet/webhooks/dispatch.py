"""The dispatcher: turns the outbox's changes into events and deliveries, exactly once.

One batch is one transaction: the changes are read in the order they were recorded (within a
wallet, the order they committed in, since each was recorded under the wallet's lock), each
becomes its events (`events.py` decides which), each event one PENDING delivery per endpoint
of its organization that takes its type and existed when the change was made, and the changes
leave the outbox. A crash before the commit leaves them all for the next batch; one dispatcher
runs at a time (`repository.webhooks.lock_dispatch`). An event's `sequence` is its row's seq:
increasing within each wallet.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.graphql.context import Context
from gql_wallet.repository import HoldRecord, TransactionRecord, WalletRecord
from gql_wallet.repository.webhooks import EndpointRecord
from gql_wallet.webhooks import events
from gql_wallet.webhooks.payloads import EventData, render

BATCH = 500


@dataclass
class _Event:
    type: str
    organization_id: uuid.UUID
    wallet: WalletRecord
    transaction: TransactionRecord | None
    hold: HoldRecord | None
    created_at: datetime


def _wallet_after(static: WalletRecord, balance: int, held: int, at: datetime) -> WalletRecord:
    return static._replace(balance=balance, held_balance=held, modified_at=at, expiry_due=False)


def _events_of_wallet(
    rows: list[Any],
    static: WalletRecord,
    entries: dict[int, TransactionRecord],
    holds: dict[int, HoldRecord],
    states: dict[int, str],
) -> tuple[list[_Event], list[int]]:
    """The events of one wallet's changes, and the outbox rows they used up. A hold's expiry is
    shown with the wallet as its expiry pass left it (the pass's wallet row, which follows);
    without that row yet, it and what follows wait for the next batch. `states`: what the
    balance events last said of each wallet, updated."""
    found: list[_Event] = []
    used: list[int] = []
    i = 0
    while i < len(rows):
        row = rows[i]
        if row.kind == "wallet":
            # A change records its wallet before its entry: announce the entry first.
            j = i + 1
            while (
                j < len(rows) and rows[j].kind == "entry" and rows[j].created_at == row.created_at
            ):
                j += 1
            for entry_row in rows[i + 1 : j]:
                found += _entry_events(entry_row, static, entries)
                used.append(entry_row.seq)
            wallet = _wallet_after(static, row.balance, row.held_balance, row.created_at)
            available = row.balance - row.held_balance
            for event_type in events.balance_events(
                states.get(static.seq), available, row.threshold
            ):
                found.append(
                    _Event(event_type, row.organization_id, wallet, None, None, row.created_at)
                )
            states[static.seq] = events.balance_state(available, row.threshold)
            used.append(row.seq)
            i = j
        elif row.kind == "entry":
            found += _entry_events(row, static, entries)
            used.append(row.seq)
            i += 1
        else:  # a hold's expiry
            after = next((r for r in rows[i + 1 :] if r.kind == "wallet"), None)
            if after is None:
                break
            wallet = _wallet_after(static, after.balance, after.held_balance, after.created_at)
            hold = holds[row.hold_seq]
            found.append(
                _Event(events.HOLD_EXPIRED, row.organization_id, wallet, None, hold, row.created_at)
            )
            used.append(row.seq)
            i += 1
    return found, used


def _entry_events(
    row: Any, static: WalletRecord, entries: dict[int, TransactionRecord]
) -> list[_Event]:
    entry = entries[row.entry_seq]
    wallet = _wallet_after(static, entry.balance_after, entry.held_after, entry.created_at)
    return [
        _Event(event_type, row.organization_id, wallet, entry, None, entry.created_at)
        for event_type in events.entry_events(entry.type)
    ]


def _subscribed(endpoint: EndpointRecord, event: _Event) -> bool:
    return (
        endpoint.organization_id == event.organization_id
        and event.type in endpoint.events
        and endpoint.created_at <= event.created_at
    )


async def dispatch(database: Database, context: Callable[[], Context]) -> int:
    """One batch; how many changes it took from the outbox (0: none, or another process is
    dispatching). `context()`: a resolver context to render payloads with."""
    async with database.write_transaction() as conn:
        if not await repo.webhooks.lock_dispatch(conn):
            return 0
        rows = await repo.webhooks.outbox_batch(conn, BATCH)
        if not rows:
            return 0
        wallet_seqs = sorted({row.wallet_seq for row in rows})
        statics = {w.seq: w for w in await repo.get_wallets_by_seq(conn, wallet_seqs)}
        entry_seqs = [row.entry_seq for row in rows if row.entry_seq is not None]
        entries = {t.seq: t for t in await repo.credits.transactions_by_seq(conn, entry_seqs)}
        hold_seqs = [row.hold_seq for row in rows if row.hold_seq is not None]
        holds = {h.seq: h for h in await repo.holds.holds_by_seq(conn, hold_seqs)}
        states = await repo.webhooks.balance_states(conn, wallet_seqs)
        announced = dict(states)
        found: list[_Event] = []
        used: list[int] = []
        by_wallet = sorted(rows, key=lambda row: (row.wallet_seq, row.seq))
        for wallet_seq, group in groupby(by_wallet, key=lambda row: row.wallet_seq):
            wallet_events, wallet_used = _events_of_wallet(
                list(group), statics[wallet_seq], entries, holds, states
            )
            found += wallet_events
            used += wallet_used
        endpoints = await repo.webhooks.endpoints_of(conn, [e.organization_id for e in found])
        now = await repo.webhooks.clock(conn)
        ids = [f"evt_{uuid.uuid4().hex}" for _ in found]
        # A body carries its event's seq (`sequence`): the seqs are taken first, then each
        # event is written once, body and all.
        seqs = await repo.webhooks.next_event_seqs(conn, len(found))
        bodies = await render(
            context(),
            [
                (
                    EventData(wallet=event.wallet, transaction=event.transaction, hold=event.hold),  # type: ignore[arg-type]
                    {
                        "id": event_id,
                        "type": event.type,
                        "createdAt": event.created_at.isoformat(),
                        "organizationId": str(event.organization_id),
                        "sequence": seq,
                    },
                )
                for event_id, seq, event in zip(ids, seqs, found, strict=True)
            ],
        )
        await repo.webhooks.insert_events(
            conn,
            [
                {"seq": seq, "id": event_id, "organization_id": event.organization_id,
                 "wallet_seq": event.wallet.seq, "type": event.type, "payload": body,
                 "created_at": event.created_at}
                for seq, event_id, event, body in zip(seqs, ids, found, bodies, strict=True)
            ],
        )  # fmt: skip
        pairs = [
            (seq, endpoint.seq)
            for seq, event in zip(seqs, found, strict=True)
            for endpoint in endpoints
            if _subscribed(endpoint, event)
        ]
        await repo.webhooks.insert_deliveries(conn, pairs, now)
        await repo.webhooks.save_balance_states(
            conn, {w: state for w, state in states.items() if announced.get(w) != state}
        )
        await repo.webhooks.delete_outbox(conn, used)
        return len(used)
