"""The HTTP side of /graphql: GraphiQL on GET text/html, operations on GET and POST.

This layer owns everything before and after execution: authentication, body limits, and turning
any malformed request (bad JSON, invalid UTF-8, a body that is not an object, wrong field types)
into a 4xx with a GraphQL-shaped error, never a 500 or a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from graphql import GraphQLError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from strawberry.exceptions import MissingQueryError
from strawberry.http.ides import get_graphql_ide_html
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gql_wallet import repository as repo
from gql_wallet.auth import Authenticator, bearer_token
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.context import Context
from gql_wallet.logs import accept_request_id, logger, request_id
from gql_wallet.ratelimit import RateLimiter
from gql_wallet.settings import Settings

JSON_MEDIA_TYPE = "application/json"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _json_response(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers
    )


def _error_payload(message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if code:
        error["extensions"] = {"code": code}
    return {"errors": [error]}


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes | str) -> Any:
    """Parse JSON, keeping every integer exact.

    orjson turns integers beyond 64 bits into floats and refuses some; when a float shows up we
    parse again with the stdlib, which keeps integers exact, so an oversized amount reaches
    validation and gets its typed INVALID_AMOUNT rather than a confusing type error.
    """
    try:
        value = orjson.loads(body)
        if not _has_float(value):
            return value
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise BadRequest(400, "The request body is not valid JSON.") from error


class GraphQLEndpoint:
    def __init__(
        self,
        schema: Any,
        engine: AsyncEngine,
        settings: Settings,
        authenticator: Authenticator,
        feed: LedgerFeed,
    ) -> None:
        self.schema = schema
        self.engine = engine
        self.settings = settings
        self.authenticator = authenticator
        self.feed = feed
        self.rate_limiter = RateLimiter(settings)
        self.ide_html = get_graphql_ide_html("graphiql") if settings.graphiql_enabled else None

    async def handle(self, request: Request) -> Response:
        rid = accept_request_id(request.headers.get("x-request-id"))
        request_id.set(rid)
        try:
            response = await self._handle(request)
        except BadRequest as error:
            response = _json_response(_error_payload(error.message), error.status, error.headers)
        except Exception:
            logger.exception(
                "unhandled error serving %s %s [request %s]", request.method, request.url.path, rid
            )
            response = _json_response(_error_payload("Internal server error."), 500)
        response.headers["X-Request-ID"] = rid
        return response

    async def _handle(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            raise BadRequest(405, "Use GET or POST.", {"Allow": "GET, POST"})
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            if self.ide_html is None:
                raise BadRequest(404, "GraphiQL is turned off on this server.")
            return HTMLResponse(self.ide_html)

        principal = await self.authenticator.authenticate(
            bearer_token(request.headers.get("authorization")), repo.now_utc()
        )
        if principal is None:
            return _json_response(
                _error_payload(
                    "A valid, unexpired token is required: send 'Authorization: Bearer <token>' "
                    "with an API key or a customer session token.",
                    "UNAUTHENTICATED",
                ),
                401,
                {"WWW-Authenticate": "Bearer"},
            )
        retry_after = await self.rate_limiter.retry_after(principal)
        if retry_after is not None:
            limit = self.rate_limiter.limit_for(principal)
            payload = _error_payload(
                f"Rate limit exceeded for this token ({limit}); retry after {retry_after} s.",
                "RATE_LIMITED",
            )
            payload["errors"][0]["extensions"]["retryAfter"] = retry_after
            return _json_response(payload, 429, {"Retry-After": str(retry_after)})

        params = await self._params(request)
        query, variables, operation_name = _operation(params)
        allowed = {OperationType.QUERY} if request.method == "GET" else None
        try:
            result = await self.schema.execute(
                query,
                variable_values=variables,
                context_value=Context(
                    engine=self.engine, principal=principal, settings=self.settings, feed=self.feed
                ),
                operation_name=operation_name,
                allowed_operation_types=allowed,
            )
        except InvalidOperationTypeError as error:
            raise BadRequest(
                405,
                "Only queries can be sent with GET; send mutations with POST.",
                {"Allow": "POST"},
            ) from error
        except MissingQueryError as error:
            raise BadRequest(400, "The request has no GraphQL query.") from error
        except CannotGetOperationTypeError as error:
            raise BadRequest(
                400, "operationName does not name an operation of the query."
            ) from error
        return _json_response(_result_payload(result))

    async def _params(self, request: Request) -> Any:
        if request.method == "GET":
            params: dict[str, Any] = dict(request.query_params)
            if "variables" in params:
                params["variables"] = _loads(params["variables"])
            if "extensions" in params:
                params["extensions"] = _loads(params["extensions"])
            return params
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            raise BadRequest(415, "Send the request as Content-Type: application/json.")
        return _loads(await self._body(request))

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"The request body is larger than {limit} bytes.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)


def _operation(params: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """query, variables and operationName of a request, each checked for its JSON type."""
    if isinstance(params, list):
        raise BadRequest(400, "Batched requests are not supported: send one operation per request.")
    if not isinstance(params, dict):
        raise BadRequest(400, "The request body must be a JSON object with a 'query' string.")
    query = params.get("query")
    variables = params.get("variables")
    operation_name = params.get("operationName")
    extensions = params.get("extensions")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest(400, "'query' must be a non-empty string.")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest(400, "'variables' must be a JSON object.")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest(400, "'operationName' must be a string.")
    if extensions is not None and not isinstance(extensions, dict):
        raise BadRequest(400, "'extensions' must be a JSON object.")
    return query, variables, operation_name


def _result_payload(result: ExecutionResult) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    errors: list[GraphQLError] = result.errors or []
    # A request that failed before execution (syntax, validation, variables) has no `data`.
    if result.data is not None or not errors or any(e.path is not None for e in errors):
        payload["data"] = result.data
    if errors:
        payload["errors"] = [error.formatted for error in errors]
    return payload
