"""An app served in-process over httpx's ASGI transport, with a key of org-a."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from gql_wallet.app import create_app, serving
from gql_wallet.auth import create_api_key
from gql_wallet.graphql.http import GraphQLEndpoint
from gql_wallet.settings import Settings


@dataclass
class Served:
    client: httpx.AsyncClient
    endpoint: GraphQLEndpoint
    key: str

    async def post(
        self, query: str, variables: Any = None, token: str | None = None, **extra: Any
    ) -> tuple[int, Any]:
        body: dict[str, Any] = {"query": query, **extra}
        if variables is not None:
            body["variables"] = variables
        response = await self.client.post(
            "/graphql", json=body, headers={"Authorization": f"Bearer {token or self.key}"}
        )
        return response.status_code, response.json()


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Served]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        key = await create_api_key(app.state.database, settings.token_secret_bytes, "org-a")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Served(client, serving(app).endpoint, key)
