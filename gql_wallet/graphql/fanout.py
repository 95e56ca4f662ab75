"""One execution per feed event, shared by every subscription that would compute the same result.

Subscriptions with the same inputs to execution (query text, operation name, variables, and what
the principal may see: organization, customer restriction, scopes) form a group. The group holds
one feed subscription, executes the selection set once per committed change and encodes the
`next` payload once; each member then gets that JSON text in its own bounded mailbox, with its
own per-wallet cursor, so ordering, gaps and repeats, and the slow-consumer limit stay per
subscriber: a member that falls behind overflows alone, the group never waits for it. A group
lives as long as it has members.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import strawberry
from strawberry.types.graphql import OperationType

from gql_wallet import metrics
from gql_wallet.auth import Principal
from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed, Mailbox, SlowConsumer, WalletChange
from gql_wallet.graphql.context import Context
from gql_wallet.logs import logger
from gql_wallet.settings import Settings


@dataclass(frozen=True)
class Delivery:
    """How a subscription operation of a connection receives shared results (set per operation
    by the transport): its request as the client sent it, and a way to send an encoded payload.
    """

    query: str
    operation_name: str | None
    variables: dict[str, Any] | None
    send_payload: Callable[[str], Awaitable[None]]  # a `next` payload, already JSON
    shared: SharedSubscriptions  # the process's groups


current_delivery: contextvars.ContextVar[Delivery] = contextvars.ContextVar("current_delivery")


@dataclass(frozen=True)
class GroupKey:
    """Everything an event's execution depends on besides the event itself."""

    organization_id: uuid.UUID
    viewer_customer_id: str | None  # a customer session sees only this customer
    scopes: frozenset[str]
    customer_id: str
    currency: str | None
    query: str
    operation_name: str | None
    variables: str  # canonical JSON

    @classmethod
    def of(
        cls, delivery: Delivery, principal: Principal, customer_id: str, currency: str | None
    ) -> GroupKey:
        return cls(
            organization_id=principal.organization_id,
            viewer_customer_id=principal.customer_id,
            scopes=principal.scopes,
            customer_id=customer_id,
            currency=currency,
            query=delivery.query,
            operation_name=delivery.operation_name,
            variables=json.dumps(delivery.variables or {}, sort_keys=True, separators=(",", ":")),
        )


RootValue = Callable[[WalletChange], object]


class GroupFailed(RuntimeError):
    """The group's shared execution stopped unexpectedly; its members' subscriptions end."""


class Group:
    def __init__(
        self, key: GroupKey, principal: Principal, variables: dict[str, Any] | None, root: RootValue
    ) -> None:
        self.key = key
        self.principal = principal
        self.variables = variables
        self.root = root
        self.members: set[Mailbox[str]] = set()
        self.holders = 0  # members plus those still waiting for the group to start
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None


class SharedSubscriptions:
    """Per process: the groups of identical subscriptions and their shared executions."""

    def __init__(
        self, schema: strawberry.Schema, database: Database, settings: Settings, feed: LedgerFeed
    ) -> None:
        self.schema = schema
        self.database = database
        self.settings = settings
        self.feed = feed
        self.groups: dict[GroupKey, Group] = {}

    @contextlib.asynccontextmanager
    async def join(
        self,
        key: GroupKey,
        principal: Principal,
        variables: dict[str, Any] | None,
        root: RootValue,
    ) -> AsyncIterator[Mailbox[str]]:
        """A mailbox of encoded payloads, one per change committed from now on.

        The group's feed subscription is active when this yields: a snapshot read afterwards
        sees every change that does not arrive in the mailbox.
        """
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, principal, variables, root)
            # A context of its own: the group outlives the connection that happened to start it.
            group.task = asyncio.create_task(self._run(group), context=contextvars.Context())
            metrics.SUBSCRIPTION_GROUPS.inc()
        group.holders += 1
        member: Mailbox[str] = Mailbox(self.settings.subscription_queue_size)
        try:
            await asyncio.shield(group.started)
            group.members.add(member)
            yield member
        finally:
            group.members.discard(member)
            group.holders -= 1
            if group.holders == 0:
                self._dissolve(group)

    def _dissolve(self, group: Group) -> None:
        if self.groups.get(group.key) is group:
            del self.groups[group.key]
            metrics.SUBSCRIPTION_GROUPS.dec()
        if group.task is not None:
            group.task.cancel()

    async def stop(self) -> None:
        groups = list(self.groups.values())
        for group in groups:
            self._dissolve(group)
        for group in groups:
            if group.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await group.task

    async def _run(self, group: Group) -> None:
        key = group.key
        try:
            async with self.feed.subscribe(
                key.organization_id, key.customer_id, key.currency
            ) as source:
                group.started.set_result(None)
                while True:
                    change = await source.next()
                    payload = await self._execute(group, change)
                    for member in list(group.members):
                        member.put(change.wallet.seq, change.position, payload)
        except SlowConsumer as error:
            # The shared execution fell behind the feed: so did every member.
            self._end(group, error)
        except Exception as error:
            if not group.started.done():
                group.started.set_exception(error)
            logger.exception("the shared execution of a subscription failed")
            self._end(group, GroupFailed("The subscription's event stream stopped."))
        finally:
            if not group.started.done():
                group.started.cancel()

    def _end(self, group: Group, error: Exception) -> None:
        for member in group.members:
            member.end(error)
        # Later joiners start a fresh group; this one goes once its members have left.
        if self.groups.get(group.key) is group:
            del self.groups[group.key]
            metrics.SUBSCRIPTION_GROUPS.dec()

    async def _execute(self, group: Group, change: WalletChange) -> str:
        """The `next` payload of `change` for every member, executed and encoded once."""
        key = group.key
        result = await self.schema.execute(
            key.query,
            variable_values=group.variables,
            # A fresh context per event: its loaders read the wallets as they are now.
            context_value=Context(
                database=self.database,
                principal=group.principal,
                settings=self.settings,
                feed=self.feed,
            ),
            root_value=group.root(change),
            operation_name=key.operation_name,
            allowed_operation_types=(OperationType.SUBSCRIPTION,),
        )
        metrics.SUBSCRIPTION_EXECUTIONS.inc()
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [error.formatted for error in result.errors]
        if result.extensions:
            payload["extensions"] = result.extensions
        return json.dumps(payload, separators=(",", ":"))
