"""Health, readiness and metrics endpoints for whoever runs gql_wallet."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gql_wallet import metrics
from gql_wallet.auth import bearer_token
from gql_wallet.db import Database
from gql_wallet.logs import logger
from gql_wallet.migrate import current_revision, head_revision
from gql_wallet.settings import Settings


async def healthz(_request: Request) -> Response:
    """The process is alive and serving. Needs no token, touches nothing."""
    return JSONResponse({"status": "ok"})


class Readiness:
    """Ready when the database answers and its schema is at the newest migration."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.head = head_revision()

    async def check(self, _request: Request) -> Response:
        try:
            async with self.database.read_transaction() as conn:
                revision = await conn.run_sync(current_revision)
        except Exception:
            logger.exception("readiness check: the database does not answer")
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        if revision != self.head:
            return JSONResponse(
                {"status": "unavailable", "database": "up", "migrations": "behind"},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "database": "up", "migrations": "at head"})


class MetricsEndpoint:
    """/metrics on the API port: with a token if one is set; without, only in development."""

    def __init__(self, settings: Settings) -> None:
        self.token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        self.open = settings.metrics_enabled and (self.token is not None or settings.development)

    async def serve(self, request: Request) -> Response:
        if not self.open:
            return JSONResponse({"error": "not found"}, status_code=404)
        if self.token is not None:
            given = bearer_token(request.headers.get("authorization")) or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse(
                    {"error": "a valid metrics token is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
