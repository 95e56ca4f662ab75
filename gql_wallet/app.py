"""create_app(settings): the Starlette application. Its lifespan owns the database engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gql_wallet.db import create_engine
from gql_wallet.graphql.graphiql import ASSETS_URL
from gql_wallet.graphql.http import GraphQLEndpoint
from gql_wallet.graphql.schema import schema
from gql_wallet.migrate import upgrade_to_head
from gql_wallet.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    engine = create_engine(settings)
    endpoint = GraphQLEndpoint(schema, engine, settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await upgrade_to_head(engine)
        try:
            yield
        finally:
            await engine.dispose()

    async def root(_request: object) -> Response:
        return RedirectResponse("/graphql")

    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET"]),
        Route(
            "/graphql",
            endpoint.handle,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        ),
    ]
    if settings.graphiql:
        # GraphiQL's scripts and styles, from package data: the page needs no network.
        routes.append(Mount(ASSETS_URL, StaticFiles(packages=[("gql_wallet", "static/graphiql")])))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app
