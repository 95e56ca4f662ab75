"""create_app(settings): the Starlette application. Its lifespan builds the one Database and
everything that holds it (`Serving`), and closes them."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import strawberry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gql_wallet.auth import Authenticator
from gql_wallet.db import Database, create_database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.fanout import SharedSubscriptions
from gql_wallet.graphql.graphiql import ASSETS_URL
from gql_wallet.graphql.http import GraphQLEndpoint
from gql_wallet.graphql.schema import build_schema
from gql_wallet.graphql.websocket import SubscriptionEndpoint, SubscriptionView
from gql_wallet.http_exports import ExportEndpoint
from gql_wallet.ledger.sweeper import ExpirySweeper
from gql_wallet.middleware import RequestMiddleware
from gql_wallet.migrate import upgrade_to_head
from gql_wallet.operations import MetricsEndpoint, Readiness, healthz
from gql_wallet.settings import Settings, from_environment
from gql_wallet.webhooks.worker import PendingAge, WebhookWorker

_heap_frozen = False
# New container objects between two young-generation collections. Python's default (700) is
# made for small scripts: under load it collects every few dozen requests (bench/PROFILE.md).
# This keeps at most 10,000 more young objects (a few MB) before a collection finds the cycles.
GC_YOUNG_THRESHOLD = 10_000


def _freeze_startup_heap() -> None:
    """Once per process: move what start-up built (modules, the schema, prepared statements) out
    of the garbage collector's sight, so that full collections under load walk only the objects
    of requests instead of the whole heap (shorter pauses, a shorter latency tail), and collect
    the young generation less often (`GC_YOUNG_THRESHOLD`)."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
        _young, *older = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


@dataclass
class Serving:
    """What the lifespan builds around the one Database and holds while the app serves."""

    database: Database
    feed: LedgerFeed
    shared: SharedSubscriptions
    endpoint: GraphQLEndpoint
    exports: ExportEndpoint
    subscriptions: SubscriptionEndpoint
    readiness: Readiness
    sweeper: ExpirySweeper
    webhooks: WebhookWorker
    pending_age: PendingAge

    @classmethod
    def build(cls, settings: Settings, schema: strawberry.Schema) -> Serving:
        database = create_database(settings)
        authenticator = Authenticator(database, settings.token_secret_bytes)
        feed = LedgerFeed(database, settings)
        shared = SharedSubscriptions(schema, database, settings, feed)
        view = SubscriptionView(schema, database, settings, authenticator, feed, shared)
        return cls(
            database=database,
            feed=feed,
            shared=shared,
            endpoint=GraphQLEndpoint(schema, database, settings, authenticator, feed),
            exports=ExportEndpoint(database, settings, authenticator),
            subscriptions=SubscriptionEndpoint(view, settings.subscription_max_connections),
            readiness=Readiness(database),
            sweeper=ExpirySweeper(database, feed, settings.expiry_sweep_seconds),
            webhooks=WebhookWorker(database, settings, feed),
            pending_age=PendingAge(database),
        )

    async def close(self) -> None:
        await self.webhooks.stop()
        await self.pending_age.stop()
        await self.sweeper.stop()
        await self.shared.stop()
        await self.feed.stop()
        await self.database.dispose()


def serving(app: Starlette) -> Serving:
    """The running app's services (set by its lifespan; `app.state.serving`)."""
    running: Serving = app.state.serving
    return running


async def _graphql(request: Request) -> Response:
    return await serving(request.app).endpoint.handle(request)


async def _exports(request: Request) -> Response:
    return await serving(request.app).exports.handle(request)


class _Subscriptions:
    """WebSocket /graphql, as an ASGI app (Starlette hands a function a WebSocket instead)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serving(scope["app"]).subscriptions(scope, receive, send)


async def _ready(request: Request) -> Response:
    return await serving(request.app).readiness.check(request)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or from_environment()
    schema = build_schema(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The Database is built here, in the event loop that serves, and closed here.
        running = Serving.build(settings, schema)
        try:
            if settings.migrate_on_start:
                await upgrade_to_head(running.database)
            app.state.serving = running
            app.state.database = running.database
            running.sweeper.start()
            if settings.webhook_delivery == "app":
                running.webhooks.start()
            running.pending_age.start()
            _freeze_startup_heap()
            yield
        finally:
            await running.close()

    async def root(_request: object) -> Response:
        return RedirectResponse("/graphql")

    # /graphql first: the router tries each route's pattern in turn on every request.
    routes: list[BaseRoute] = [
        Route(
            "/graphql",
            _graphql,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        ),
        WebSocketRoute("/graphql", _Subscriptions()),
        Route("/", root, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", _ready, methods=["GET"]),
        Route("/metrics", MetricsEndpoint(settings).serve, methods=["GET"]),
        Route("/exports/transactions", _exports, methods=["GET"]),
    ]
    if settings.graphiql_enabled:
        # GraphiQL's scripts and styles, from package data: the page needs no network.
        routes.append(Mount(ASSETS_URL, StaticFiles(packages=[("gql_wallet", "static/graphiql")])))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestMiddleware, log_variables=settings.log_variables),
            # Browsers send bearer tokens, never cookies: credentials stay off, so no origin is
            # ever trusted with the user's cookies, and a configured "*" is still safe.
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_allow_origins,
                allow_origin_regex=settings.cors_origin_regex,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
                allow_credentials=False,
                max_age=600,
            ),
        ],
    )
    return app
