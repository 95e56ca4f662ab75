"""The webhook worker: every process runs one. It dispatches the outbox's changes into events
and deliveries, and sends the deliveries that are due, signed per Standard Webhooks.

At least once: an attempt is claimed in the database before it is sent (its delivery is due
again only after the attempt's lease), and its outcome recorded after; a process killed
mid-attempt leaves the delivery to be attempted again, with the same `webhook-id`, when the
lease ends. No two processes claim the same attempt (on PostgreSQL, `FOR UPDATE SKIP LOCKED`).
Each process sends at most `GQL_WALLET_WEBHOOK_MAX_IN_FLIGHT` at once, at most
`..._PER_ENDPOINT` of them to one endpoint, each within `GQL_WALLET_WEBHOOK_TIMEOUT_SECONDS`,
so a slow or failing endpoint ties up only its own share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from gql_wallet import metrics
from gql_wallet import repository as repo
from gql_wallet.auth import Principal
from gql_wallet.db import Database, create_database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.context import Context
from gql_wallet.logs import logger
from gql_wallet.repository.webhooks import FAILED, PENDING, Claimed, Outcome
from gql_wallet.settings import Settings
from gql_wallet.webhooks.dispatch import BATCH, dispatch
from gql_wallet.webhooks.guard import AddressNotAllowed, guarded_client

AGE_EVERY_SECONDS = 5.0
STOP_SECONDS = 5.0
CLAIM_COALESCE_SECONDS = 0.02
DISPATCH_GATHER_SECONDS = 0.1
USER_AGENT = "gql_wallet-webhooks/1"
RESPONSE_READ_LIMIT = 64 * 1024  # bytes of an answer read to keep its connection


def retry_delay(schedule: tuple[float, ...], attempt: int) -> float | None:
    """Seconds until the attempt after `attempt` (1-based), varied by up to 10%; None: none
    is left."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * random.uniform(0.9, 1.1)  # noqa: S311 (jitter)


def signed_headers(secret: str, event_id: str, payload: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: the event's ID on every attempt, the
    attempt's time, the signature of both with the body."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, payload),
    }


class WebhookWorker:
    def __init__(self, database: Database, settings: Settings, feed: LedgerFeed) -> None:
        self.database = database
        self.settings = settings
        self.feed = feed
        self.schedule = settings.webhook_retry_schedule
        # An attempt's lease: its timeout, and as long again to record its outcome.
        self.lease = 2 * settings.webhook_timeout_seconds
        self.in_flight: Counter[int] = Counter()  # per endpoint seq
        self.sending: set[asyncio.Task[None]] = set()
        self.wakeup = asyncio.Event()
        self.outcomes: list[Outcome] = []  # attempts made, not yet recorded
        self.recorded = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self.client = guarded_client(
            self.settings.webhooks_allow_loopback_http,
            self.settings.webhook_timeout_seconds,
            self.settings.webhook_max_in_flight,
        )
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._dispatching()),
            loop.create_task(self._claiming()),
            loop.create_task(self._record()),
        ]

    def _context(self) -> Context:
        # Rendering reads records the dispatcher hands it; no field it selects checks access.
        principal = Principal(uuid.UUID(int=0), uuid.UUID(int=0), frozenset())
        return Context(self.database, principal, self.settings, self.feed)

    async def _dispatching(self) -> None:
        """Turn the outbox's changes into deliveries, batch after batch while there are any."""
        while True:
            made = 0
            try:
                async with self.database.read_connection() as conn:
                    waiting = await repo.webhooks.changes_waiting(conn)
                if waiting:
                    made = await dispatch(self.database, self._context)
            except Exception:
                logger.exception("webhook dispatch failed; trying again")
                await asyncio.sleep(1)
            if made:
                self.wakeup.set()  # new deliveries are due
                if made < BATCH:
                    # Let the next batch gather: each one's commit waits for the disk, as
                    # the ledger's writes do.
                    await asyncio.sleep(DISPATCH_GATHER_SECONDS)
            else:
                await asyncio.sleep(self.settings.webhook_poll_seconds)

    async def _claiming(self) -> None:
        """Claim due attempts: at once when woken (an attempt ended, or new deliveries were
        made), else when a look every poll finds some due (retries)."""
        while True:
            try:
                if self.wakeup.is_set() or await self._any_due():
                    self.wakeup.clear()
                    await self._claim()
            except Exception:
                logger.exception("claiming webhook attempts failed; trying again")
                await asyncio.sleep(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.settings.webhook_poll_seconds)
                # Let the attempts that end about now end too, so that one claim takes all
                # their slots.
                await asyncio.sleep(CLAIM_COALESCE_SECONDS)

    async def _any_due(self) -> bool:
        async with self.database.read_connection() as conn:
            return await repo.webhooks.deliveries_due(conn)

    async def _claim(self) -> int:
        free = self.settings.webhook_max_in_flight - len(self.sending)
        if free <= 0:
            return 0
        cap = self.settings.webhook_max_in_flight_per_endpoint
        room = {seq: cap - n for seq, n in self.in_flight.items() if n > 0}
        async with self.database.write_transaction() as conn:
            claimed = await repo.webhooks.claim_due(conn, free, room, cap, self.lease)
        for attempt in claimed:
            self.in_flight[attempt.endpoint_seq] += 1
            task = asyncio.get_running_loop().create_task(self._send(attempt))
            self.sending.add(task)
            task.add_done_callback(self._sent)
        return len(claimed)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.sending.discard(task)
        self.wakeup.set()  # room for more

    async def _send(self, attempt: Claimed) -> None:
        assert self.client is not None
        started = datetime.now(UTC)
        clock = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            headers = signed_headers(attempt.secret, attempt.event_id, attempt.payload, started)
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                request = self.client.build_request(
                    "POST", attempt.url, content=attempt.payload.encode(), headers=headers
                )
                response = await self.client.send(request, stream=True)
                try:
                    status = response.status_code
                    # The body is not needed, but read to its end (a short one) the connection
                    # stays open for the next delivery; closed before, it is dropped.
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read > RESPONSE_READ_LIMIT:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_seconds:g} s"
        except AddressNotAllowed as refused:
            error = f"refused: {refused}"
        except httpx.HTTPError as failed:
            error = f"{type(failed).__name__}: {failed}" if str(failed) else type(failed).__name__
        except Exception as failed:  # recorded as the attempt's error; the worker goes on
            error = f"{type(failed).__name__}: {failed}"
        finally:
            self.in_flight[attempt.endpoint_seq] -= 1
        duration_ms = int((time.monotonic() - clock) * 1000)
        retry_in = retry_delay(self.schedule, attempt.attempt)
        self.outcomes.append(Outcome(attempt, started, status, error, duration_ms, retry_in))
        self.recorded.set()

    async def _record(self) -> None:
        """Record the attempts' outcomes as they come, those that came together in one
        transaction. One not recorded (the process dies first) is made again when its lease
        ends."""
        while True:
            await self.recorded.wait()
            self.recorded.clear()
            outcomes, self.outcomes = self.outcomes, []
            try:
                async with self.database.write_transaction() as conn:
                    await repo.webhooks.record_attempts(conn, outcomes)
            except Exception:
                logger.exception("recording %d webhook attempts failed", len(outcomes))
                self.outcomes[:0] = outcomes  # tried again in a second
                await asyncio.sleep(1)
                self.recorded.set()
                continue
            for outcome in outcomes:
                label = {PENDING: "retrying", FAILED: "failed"}.get(outcome.status, "succeeded")
                metrics.WEBHOOK_DELIVERIES.labels(label).inc()

    async def stop(self) -> None:
        # No new work; then the attempts under way (each made again when its lease ends); then
        # the recorder.
        working, recorder = self.tasks[:-1], self.tasks[-1:]
        for tasks in (working, list(self.sending), recorder):
            await _cancel(tasks)
        if self.client is not None:
            await self.client.aclose()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them, STOP_SECONDS at most: a task cancelled inside a
    database call waits for the connection's cleanup, which SQLAlchemy shields from
    cancellation, and one that never ends must not keep the process from stopping (what it
    was doing is done again when its lease ends)."""
    for task in tasks:
        task.cancel()
    if tasks:
        _done, stuck = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        if stuck:
            logger.warning("%d webhook tasks did not stop within %g s", len(stuck), STOP_SECONDS)


class PendingAge:
    """`gql_wallet_webhook_oldest_pending_seconds`, read every few seconds by every server
    process: they get the CPU first, so the gauge stays fresh when delivery falls behind."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with self.database.read_transaction() as conn:
                    oldest = await repo.webhooks.oldest_pending_at(conn)
                    now = await repo.webhooks.clock(conn)
                age = 0.0 if oldest is None else (now - oldest).total_seconds()
                metrics.WEBHOOK_OLDEST_PENDING.set(max(age, 0.0))
            except Exception:
                logger.exception("reading the oldest pending webhook failed")
            await asyncio.sleep(AGE_EVERY_SECONDS)

    async def stop(self) -> None:
        if self.task is not None:
            await _cancel([self.task])


async def deliver(settings: Settings, parent: int | None = None) -> None:
    """A delivery process (`gql-wallet webhooks deliver`): the worker, until SIGTERM or SIGINT,
    or until `parent` (the `gql-wallet serve` that started it) is gone."""
    database = create_database(settings)
    # Rendering reads no feed; the worker's Context only needs one to exist.
    worker = WebhookWorker(database, settings, LedgerFeed(database, settings))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    worker.start()
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1)
            if parent is not None and os.getppid() != parent:
                logger.info("gql-wallet serve (pid %d) has stopped, and so does delivery", parent)
                break
    finally:
        await worker.stop()
        await database.dispose()
