"""The WebSocket side of /graphql: subscriptions over graphql-transport-ws.

Strawberry runs the protocol; we add authentication from the connection_init payload (browsers
cannot set headers on a WebSocket), the allowed browser origins, a bound on connections, and a
way for a subscription to send a payload that was executed and encoded once for many (fanout.py).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage

from gql_wallet import metrics
from gql_wallet import repository as repo
from gql_wallet.auth import NOBODY, Authenticator, bearer_token
from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import SUBSCRIPTION_LIMIT_EXCEEDED, UNAUTHENTICATED
from gql_wallet.graphql.fanout import Delivery, SharedSubscriptions, current_delivery
from gql_wallet.settings import Settings

TRY_AGAIN_LATER = 1013

logger = logging.getLogger(__name__)
ORIGINS_VARIABLE = f"{Settings.model_config['env_prefix']}cors_allow_origins".upper()


class _WithoutStrawberrysOriginWarning(logging.Filter):
    """Drops strawberry's warning on a refused origin: it names its own argument
    (`allowed_origins`), which an operator cannot set; ours names the variable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Rejected WebSocket connection from origin")


_STRAWBERRY_ORIGIN_FILTER = _WithoutStrawberrysOriginWarning()


def connection_token(params: dict[str, Any] | None) -> str | None:
    """The token of a connection_init payload: {"Authorization": "Bearer ..."} or {"token": ...}."""
    if not isinstance(params, dict):
        return None
    for name in ("Authorization", "authorization"):
        if isinstance(params.get(name), str):
            return bearer_token(params[name])
    token = params.get("token")
    return token if isinstance(token, str) else None


class TransportHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws as Strawberry runs it, plus a `Delivery` for each operation."""

    view: SubscriptionView

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        # Strawberry refuses one subscription too many with an error that has no code.
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and limit is not None
            and len(self.operations) >= limit
        ):
            await self.send_message(
                {
                    "id": message["id"],
                    "type": "error",
                    "payload": [
                        {
                            "message": f"At most {limit} operations may run at once on one "
                            "connection: complete one first, or open another connection.",
                            "extensions": {"code": SUBSCRIPTION_LIMIT_EXCEEDED},
                        }
                    ],
                }
            )
            return
        await super().handle_subscribe(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # Runs as the operation's own task: the variable is seen by its resolver alone.
        current_delivery.set(
            Delivery(
                query=operation.query,
                operation_name=operation.operation_name,
                variables=operation.variables,
                send_payload=lambda payload: self.send_next_payload(operation, payload),
                shared=self.view.shared,
            )
        )
        await super().run_operation(operation)

    async def send_next_payload(self, operation: Operation[Context, None], payload: str) -> None:
        """A `next` message whose payload (data, errors) is already encoded as JSON."""
        if operation.completed:
            return
        websocket = self.context.websocket
        assert websocket is not None
        try:
            await websocket.send_text(
                f'{{"id":{json.dumps(operation.id)},"type":"next","payload":{payload}}}'
            )
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


class SubscriptionView(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportHandler

    def __init__(
        self,
        schema: Any,
        database: Database,
        settings: Settings,
        authenticator: Authenticator,
        feed: LedgerFeed,
        shared: SharedSubscriptions,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide=None,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=10),
            max_subscriptions_per_connection=settings.subscription_max_per_connection,
            allowed_origins=settings.cors_allow_origins,
        )
        self.database = database
        self.settings = settings
        self.authenticator = authenticator
        self.feed = feed
        self.shared = shared
        regex = settings.cors_origin_regex
        self.origin_pattern = re.compile(regex) if regex else None
        logging.getLogger("strawberry.ws").addFilter(_STRAWBERRY_ORIGIN_FILTER)

    def is_websocket_origin_allowed(self, request: Any, origin: str) -> bool:
        """Asked only for a browser page on another origin than the server's."""
        if self.origin_pattern is not None and self.origin_pattern.fullmatch(origin):
            return True
        if super().is_websocket_origin_allowed(request, origin):
            return True
        logger.warning(
            "Refused a WebSocket connection from the browser origin %r: to let pages on it "
            "connect, add it to %s (comma-separated origins).",
            origin,
            ORIGINS_VARIABLE,
        )
        return False

    async def get_context(self, request: Any, response: Any) -> Context:
        return Context(
            database=self.database,
            principal=NOBODY,
            settings=self.settings,
            feed=self.feed,
            websocket=response if isinstance(response, WebSocket) else None,
        )

    async def on_ws_connect(self, context: Context) -> None:
        principal = await self.authenticator.authenticate(
            connection_token(context.connection_params), repo.now_utc()
        )
        if principal is None:
            raise ConnectionRejectionError(
                {
                    "message": "A valid, unexpired token is required in the connection_init "
                    'payload: {"Authorization": "Bearer <token>"}.',
                    "code": UNAUTHENTICATED,
                }
            )
        context.principal = principal


class SubscriptionEndpoint:
    """ASGI app for WebSocket /graphql that refuses connections beyond the process's limit."""

    def __init__(self, view: SubscriptionView, max_connections: int) -> None:
        self.view = view
        self.max_connections = max_connections
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.open >= self.max_connections:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
            return
        self.open += 1
        metrics.SUBSCRIPTION_CONNECTIONS.inc()
        try:
            await self.view(scope, receive, send)
        finally:
            self.open -= 1
            metrics.SUBSCRIPTION_CONNECTIONS.dec()
