"""Webhooks over GraphQL: endpoints, low-balance thresholds, deliveries. Organization API keys
with wallets:write only, for reads too (an endpoint's deliveries carry every wallet's events)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.types import Info

from gql_wallet import repository as repo
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import RequestError, refuse
from gql_wallet.graphql.mutations import require_write, user_errors
from gql_wallet.graphql.types import (
    DEFAULT_PAGE_SIZE,
    CustomerWallet,
    FirstArgument,
    PageInfo,
    SafeInt,
    WalletUserError,
    decode_cursor,
    encode_cursor,
    page_info,
    page_size,
)
from gql_wallet.money import ARGUMENT, check_text
from gql_wallet.repository.webhooks import AttemptRecord, DeliveryRecord, EndpointRecord
from gql_wallet.webhooks import service
from gql_wallet.webhooks.events import EVENT_TYPES

_EVENTS = "Event types: " + ", ".join(EVENT_TYPES) + "."


@strawberry.type(description="Where your backend receives signed events (Standard Webhooks).")
class WebhookEndpoint:
    id: strawberry.ID = strawberry.field(description="The endpoint's ID.")
    url: str = strawberry.field(description="The https URL each event is POSTed to.")
    events: list[str] = strawberry.field(description="The event types it receives. " + _EVENTS)
    description: str | None = strawberry.field(description="Your note about it.")
    created_at: datetime = strawberry.field(
        description="When it was created: it receives the events of changes from then on."
    )
    modified_at: datetime = strawberry.field(description="Its last change.")

    @classmethod
    def from_record(cls, record: EndpointRecord) -> WebhookEndpoint:
        return cls(
            id=strawberry.ID(str(record.id)),
            url=record.url,
            events=list(record.events),
            description=record.description,
            created_at=record.created_at,
            modified_at=record.modified_at,
        )


@strawberry.enum(description="Where a delivery stands.")
class WebhookDeliveryStatus(enum.Enum):
    PENDING = strawberry.enum_value("PENDING", description="Not yet answered with a 2xx.")
    SUCCEEDED = strawberry.enum_value("SUCCEEDED", description="An attempt got a 2xx answer.")
    FAILED = strawberry.enum_value(
        "FAILED", description="Every attempt of the retry schedule failed."
    )


@strawberry.type(description="One attempt of a delivery.")
class WebhookAttempt:
    number: int = strawberry.field(description="1 for the first attempt.")
    started_at: datetime = strawberry.field(description="When it was sent.")
    status_code: int | None = strawberry.field(
        description="The HTTP status of the answer; null when there was none."
    )
    error: str | None = strawberry.field(
        description="Why there was no answer (timeout, connection error, refused address)."
    )
    duration_ms: int = strawberry.field(description="How long it took, in milliseconds.")


@strawberry.type(description="One event to one endpoint, and its attempts.")
class WebhookDelivery:
    id: strawberry.ID = strawberry.field(description="The delivery's ID (redeliverWebhook).")
    event_id: str = strawberry.field(description="The event's ID: the webhook-id header.")
    event_type: str = strawberry.field(description="The event's type.")
    payload: str = strawberry.field(description="The JSON body sent, the same on every attempt.")
    status: WebhookDeliveryStatus = strawberry.field(description="Where it stands.")
    attempt_count: int = strawberry.field(description="Attempts made so far.")
    next_attempt_at: datetime | None = strawberry.field(
        description="When the next attempt is due (PENDING only)."
    )
    last_status_code: int | None = strawberry.field(
        description="The HTTP status of the last attempt's answer."
    )
    last_error: str | None = strawberry.field(description="Why the last attempt got no answer.")
    created_at: datetime = strawberry.field(description="When the event was queued for it.")
    completed_at: datetime | None = strawberry.field(description="When it SUCCEEDED or FAILED.")
    seq: strawberry.Private[int]

    @classmethod
    def from_record(cls, record: DeliveryRecord) -> WebhookDelivery:
        return cls(
            id=strawberry.ID(str(record.id)),
            event_id=record.event_id,
            event_type=record.event_type,
            payload=record.payload,
            status=WebhookDeliveryStatus[record.status],
            attempt_count=record.attempts,
            next_attempt_at=record.next_attempt_at if record.status == "PENDING" else None,
            last_status_code=record.last_status_code,
            last_error=record.last_error,
            created_at=record.created_at,
            completed_at=record.completed_at,
            seq=record.seq,
        )

    @strawberry.field(description="Every attempt so far, oldest first.")
    async def attempts(self, info: Info[Context, None]) -> list[WebhookAttempt]:
        async with info.context.database.read_connection() as conn:
            found: list[AttemptRecord] = await repo.webhooks.attempts_of(conn, [self.seq])
        return [
            WebhookAttempt(
                number=a.number,
                started_at=a.started_at,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in found
        ]


@strawberry.type(description="A delivery and its cursor.")
class WebhookDeliveryEdge:
    cursor: str = strawberry.field(description="Pass as `after` for the deliveries after it.")
    node: WebhookDelivery = strawberry.field(description="The delivery.")


@strawberry.type(description="A page of an endpoint's deliveries, newest first.")
class WebhookDeliveryConnection:
    edges: list[WebhookDeliveryEdge] = strawberry.field(description="The deliveries.")
    page_info: PageInfo = strawberry.field(description="Where this page is.")


@strawberry.type
class WebhookQueries:
    @strawberry.field(description="Your organization's webhook endpoints, oldest first.")
    async def webhook_endpoints(self, info: Info[Context, None]) -> list[WebhookEndpoint]:
        require_write(info)
        found = await service.list_endpoints(
            info.context.database, info.context.principal.organization_id
        )
        return [WebhookEndpoint.from_record(e) for e in found]

    @strawberry.field(description="An endpoint's deliveries, newest first, cursor-paginated.")
    async def webhook_deliveries(
        self,
        info: Info[Context, None],
        endpoint_id: Annotated[strawberry.ID, strawberry.argument(description="The endpoint.")],
        first: FirstArgument = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None, strawberry.argument(description="Deliveries after this cursor.")
        ] = None,
        status: Annotated[
            WebhookDeliveryStatus | None,
            strawberry.argument(description="Only deliveries with this status."),
        ] = None,
    ) -> WebhookDeliveryConnection:
        require_write(info)
        refuse(check_text(str(endpoint_id), "endpointId", at=ARGUMENT))
        size = page_size(first)
        before_seq = decode_cursor("delivery", after)
        endpoint = await service.find_endpoint(
            info.context.database, info.context.principal.organization_id, str(endpoint_id)
        )
        if endpoint is None:
            raise RequestError("Your organization has no webhook endpoint with this ID.")
        async with info.context.database.read_connection() as conn:
            rows = await repo.webhooks.list_deliveries(
                conn, endpoint.seq, None if status is None else status.name, before_seq, size + 1
            )
        edges = [
            WebhookDeliveryEdge(
                cursor=encode_cursor("delivery", row.seq), node=WebhookDelivery.from_record(row)
            )
            for row in rows[:size]
        ]
        return WebhookDeliveryConnection(
            edges=edges, page_info=page_info([e.cursor for e in edges], len(rows) > size)
        )


@strawberry.input(description="A new webhook endpoint.")
class CreateWebhookEndpointInput:
    url: str = strawberry.field(
        description="https URL (http to loopback only with GQL_WALLET_WEBHOOKS_ALLOW_LOOPBACK_HTTP"
        "); its host must resolve to public addresses only."
    )
    events: list[str] = strawberry.field(description="The event types to receive. " + _EVENTS)
    description: str | None = strawberry.field(
        default=None, description="Your note about it, up to 500 characters."
    )


@strawberry.input(description="Change an endpoint: the fields given; the others stay.")
class UpdateWebhookEndpointInput:
    id: strawberry.ID = strawberry.field(description="The endpoint's ID.")
    url: str | None = strawberry.field(default=None, description="A new URL.")
    events: list[str] | None = strawberry.field(default=None, description="New event types.")
    description: str | None = strawberry.field(default=None, description="A new note.")


@strawberry.input(description="An endpoint, by ID.")
class WebhookEndpointIdInput:
    id: strawberry.ID = strawberry.field(description="The endpoint's ID.")


@strawberry.input(description="A wallet's low-balance threshold.")
class SetLowBalanceThresholdInput:
    customer_id: str = strawberry.field(description="The wallet's customer.")
    currency: str = strawberry.field(description="The wallet's currency.")
    threshold: SafeInt | None = strawberry.field(
        description="In minor units, 1 or more; null removes it."
    )


@strawberry.input(description="A delivery to attempt again.")
class RedeliverWebhookInput:
    delivery_id: strawberry.ID = strawberry.field(description="The delivery's ID.")


@strawberry.type(description="An endpoint, and its secret when it was just made.")
class WebhookEndpointPayload:
    endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint; null when refused."
    )
    secret: str | None = strawberry.field(
        description="The signing secret (whsec_...), shown only by createWebhookEndpoint and "
        "rotateWebhookSecret: verify deliveries with it (Standard Webhooks)."
    )
    user_errors: list[WalletUserError] = strawberry.field(description="Why it was refused.")


@strawberry.type(description="The result of setLowBalanceThreshold.")
class SetLowBalanceThresholdPayload:
    wallet: CustomerWallet | None = strawberry.field(description="The wallet.")
    user_errors: list[WalletUserError] = strawberry.field(description="Why it was refused.")


@strawberry.type(description="The result of redeliverWebhook.")
class RedeliverWebhookPayload:
    delivery: WebhookDelivery | None = strawberry.field(description="The delivery, due now.")
    user_errors: list[WalletUserError] = strawberry.field(description="Why it was refused.")


def _endpoint_payload(result: service.EndpointResult) -> WebhookEndpointPayload:
    return WebhookEndpointPayload(
        endpoint=None if result.endpoint is None else WebhookEndpoint.from_record(result.endpoint),
        secret=result.secret,
        user_errors=user_errors(result.errors),
    )


@strawberry.type
class WebhookMutations:
    @strawberry.mutation(
        description="Create a webhook endpoint. Its secret is in this answer only."
    )
    async def create_webhook_endpoint(
        self,
        info: Info[Context, None],
        input: Annotated[
            CreateWebhookEndpointInput, strawberry.argument(description="The endpoint to create.")
        ],
    ) -> WebhookEndpointPayload:
        require_write(info)
        result = await service.create_endpoint(
            info.context.database,
            info.context.principal.organization_id,
            input.url,
            input.events,
            input.description,
            info.context.settings.webhooks_allow_loopback_http,
        )
        return _endpoint_payload(result)

    @strawberry.mutation(description="Change an endpoint's URL, event types or description.")
    async def update_webhook_endpoint(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateWebhookEndpointInput, strawberry.argument(description="What to change.")
        ],
    ) -> WebhookEndpointPayload:
        require_write(info)
        result = await service.update_endpoint(
            info.context.database,
            info.context.principal.organization_id,
            str(input.id),
            input.url,
            input.events,
            input.description,
            info.context.settings.webhooks_allow_loopback_http,
        )
        return _endpoint_payload(result)

    @strawberry.mutation(
        description="Give an endpoint a new secret, in this answer only; every attempt from "
        "now on is signed with it."
    )
    async def rotate_webhook_secret(
        self,
        info: Info[Context, None],
        input: Annotated[WebhookEndpointIdInput, strawberry.argument(description="The endpoint.")],
    ) -> WebhookEndpointPayload:
        require_write(info)
        result = await service.rotate_secret(
            info.context.database, info.context.principal.organization_id, str(input.id)
        )
        return _endpoint_payload(result)

    @strawberry.mutation(
        description="Delete an endpoint and its deliveries: nothing more is sent to it."
    )
    async def delete_webhook_endpoint(
        self,
        info: Info[Context, None],
        input: Annotated[WebhookEndpointIdInput, strawberry.argument(description="The endpoint.")],
    ) -> WebhookEndpointPayload:
        require_write(info)
        result = await service.delete_endpoint(
            info.context.database, info.context.principal.organization_id, str(input.id)
        )
        return _endpoint_payload(result)

    @strawberry.mutation(
        description="Set or remove a wallet's low-balance threshold (wallet.balance.low, "
        "wallet.balance.recovered)."
    )
    async def set_low_balance_threshold(
        self,
        info: Info[Context, None],
        input: Annotated[
            SetLowBalanceThresholdInput,
            strawberry.argument(description="The wallet and its threshold."),
        ],
    ) -> SetLowBalanceThresholdPayload:
        require_write(info)
        wallet, errors = await service.set_low_balance_threshold(
            info.context.database,
            info.context.principal.organization_id,
            input.customer_id,
            input.currency,
            None if input.threshold is None else int(input.threshold),
        )
        return SetLowBalanceThresholdPayload(
            wallet=None if wallet is None else CustomerWallet.from_record(wallet),
            user_errors=user_errors(errors),
        )

    @strawberry.mutation(description="Attempt a delivery once more, now, whatever its status.")
    async def redeliver_webhook(
        self,
        info: Info[Context, None],
        input: Annotated[RedeliverWebhookInput, strawberry.argument(description="The delivery.")],
    ) -> RedeliverWebhookPayload:
        require_write(info)
        delivery, errors = await service.redeliver(
            info.context.database, info.context.principal.organization_id, str(input.delivery_id)
        )
        return RedeliverWebhookPayload(
            delivery=None if delivery is None else WebhookDelivery.from_record(delivery),
            user_errors=user_errors(errors),
        )
