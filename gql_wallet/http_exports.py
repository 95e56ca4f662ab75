"""GET /exports/transactions?from=&to=&format=csv|ndjson: `gql-wallet export` over HTTP, for an
organization API key with read scope, streamed as the snapshot is read (ledger/exports.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gql_wallet.auth import SCOPE_READ, Authenticator, bearer_token
from gql_wallet.db import Database
from gql_wallet.errors import UserError
from gql_wallet.ledger import exports
from gql_wallet.repository import now_utc
from gql_wallet.settings import Settings

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}


def _refusal(status: int, code: str, message: str, field: list[str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message, **({"field": field} if field else {})}}
    return Response(orjson.dumps(body), status, media_type="application/json")


class ExportEndpoint:
    def __init__(self, database: Database, settings: Settings, authenticator: Authenticator):
        self.database = database
        self.settings = settings
        self.authenticator = authenticator

    async def handle(self, request: Request) -> Response:
        principal = await self.authenticator.authenticate(
            bearer_token(request.headers.get("authorization")), now_utc()
        )
        if principal is None:
            return _refusal(401, "UNAUTHENTICATED", "An organization API key is required.")
        if principal.customer_id is not None or not principal.can(SCOPE_READ):
            return _refusal(403, "FORBIDDEN", "Exports need an organization API key that reads.")
        query = request.query_params
        start, end = (
            exports.parse_instant(query.get("from")),
            exports.parse_instant(query.get("to")),
        )
        fmt = query.get("format", "csv")
        errors: list[UserError] = exports.check_export(
            start, end, fmt, self.settings.export_max_days
        )
        if errors:
            error = errors[0]
            return _refusal(400, error.code.value, error.message, list(error.field or ()))
        assert isinstance(start, datetime)  # checked
        assert isinstance(end, datetime)
        organization_id = principal.organization_id

        async def body() -> AsyncIterator[bytes]:
            # The snapshot is opened here, once the answer streams: an answer never sent opens
            # none, and one cut off closes it (the generator is closed).
            async with exports.Export(self.database, organization_id, start, end, fmt) as job:
                async for chunk in job.chunks():
                    yield chunk.encode()

        filename = f"transactions-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.{fmt}"
        return StreamingResponse(
            body(),
            media_type=MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
