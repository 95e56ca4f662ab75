"""The HTTP side of /graphql: GraphiQL on GET text/html, operations on GET and POST.

This layer owns everything before and after execution: authentication, body limits, and turning
any malformed request (bad JSON, invalid UTF-8, a body that is not an object, wrong field types)
into a 4xx with a GraphQL-shaped error, never a 500 or a traceback.

Responses follow the GraphQL-over-HTTP spec. A client that accepts
`application/graphql-response+json` gets that media type, and a request that fails before
execution (syntax, validation, variable coercion) is a 400 without `data`. Older clients
(`application/json`, `*/*` or no Accept header) get `application/json`, where such failures keep
status 200 as that media type requires. An Accept header that allows neither is a 406.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from graphql import GraphQLError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gql_wallet import repository as repo
from gql_wallet.auth import Authenticator, bearer_token
from gql_wallet.db import Database
from gql_wallet.feed import LedgerFeed
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.errors import (
    FORBIDDEN,
    HTTP_ERROR_CODES,
    INTERNAL_SERVER_ERROR,
    MASKED_MESSAGE,
    RATE_LIMITED,
    SUBSCRIPTION_OVER_HTTP,
    UNAUTHENTICATED,
    error_code,
)
from gql_wallet.graphql.graphiql import GRAPHIQL_HEADERS, graphiql_html
from gql_wallet.logs import current_request, logger
from gql_wallet.ratelimit import RateLimiter
from gql_wallet.settings import Settings

JSON_MEDIA_TYPE = "application/json"
GRAPHQL_RESPONSE_MEDIA_TYPE = "application/graphql-response+json"


class BadRequest(Exception):
    """A request refused before execution; its code is its status's unless it has its own."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or HTTP_ERROR_CODES[status]


def _json_response(
    payload: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
    media_type: str = JSON_MEDIA_TYPE,
) -> Response:
    # The body's media type depends on the Accept header: caches must key on it.
    return Response(
        orjson.dumps(payload),
        status_code=status,
        media_type=f"{media_type}; charset=utf-8",
        headers={"Vary": "Accept", **(headers or {})},
    )


def _accepted_quality(accept: str) -> dict[str, tuple[float, bool]]:
    """For each response media type: its quality in an Accept header, and whether it is named.

    The most specific matching range wins (RFC 9110 12.5.1): `application/json;q=0` refuses JSON
    even next to `*/*`. A media type that no range matches has quality 0.
    """
    found: dict[str, tuple[int, float]] = {}
    for media_range in accept.split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        kind = kind.lower()
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        for media_type in (GRAPHQL_RESPONSE_MEDIA_TYPE, JSON_MEDIA_TYPE):
            specificity = {media_type: 3, "application/*": 2, "*/*": 1}.get(kind, 0)
            if specificity > found.get(media_type, (0, 0.0))[0]:
                found[media_type] = (specificity, quality)
    return {
        media_type: (quality, specificity == 3)
        for media_type, (specificity, quality) in found.items()
    }


def negotiate_media_type(accept: str | None) -> str | None:
    """The response media type for an Accept header, or None when it allows neither.

    No Accept header, `*/*` and `application/*` mean `application/json`, which every client
    reads (the spec's choice for legacy clients). `application/graphql-response+json` wins when
    the client names it with at least the quality of JSON.
    """
    if not accept or not accept.strip():
        return JSON_MEDIA_TYPE
    qualities = _accepted_quality(accept)
    graphql_quality, graphql_named = qualities.get(GRAPHQL_RESPONSE_MEDIA_TYPE, (0.0, False))
    json_quality, _ = qualities.get(JSON_MEDIA_TYPE, (0.0, False))
    if graphql_quality == 0 and json_quality == 0:
        return None
    if graphql_quality > json_quality or (graphql_quality == json_quality and graphql_named):
        return GRAPHQL_RESPONSE_MEDIA_TYPE
    return JSON_MEDIA_TYPE


def _error_payload(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


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
        database: Database,
        settings: Settings,
        authenticator: Authenticator,
        feed: LedgerFeed,
    ) -> None:
        self.schema = schema
        self.database = database
        self.settings = settings
        self.authenticator = authenticator
        self.feed = feed
        self.rate_limiter = RateLimiter(settings)
        self.ide_html = graphiql_html() if settings.graphiql_enabled else None

    async def handle(self, request: Request) -> Response:
        info = current_request()
        # Errors found before negotiation (a 406 itself) are answered in plain JSON.
        media_type = JSON_MEDIA_TYPE
        try:
            if request.method not in ("GET", "POST"):
                raise BadRequest(405, "Use GET or POST.", {"Allow": "GET, POST"})
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                response = self._graphiql()
            else:
                negotiated = negotiate_media_type(request.headers.get("accept"))
                if negotiated is None:
                    raise BadRequest(
                        406,
                        "The Accept header allows no media type this server answers with: "
                        f"accept {GRAPHQL_RESPONSE_MEDIA_TYPE} or {JSON_MEDIA_TYPE}.",
                    )
                media_type = negotiated
                response = await self._handle(request, media_type)
        except ClientDisconnect:
            # Gone before its body arrived: nobody reads this answer, and it is no server fault.
            info.outcome = "disconnected"
            response = _json_response(
                _error_payload(
                    "The client disconnected before the request body arrived.",
                    HTTP_ERROR_CODES[400],
                ),
                400,
                None,
                media_type,
            )
        except BadRequest as error:
            info.outcome = "rejected"
            response = _json_response(
                _error_payload(error.message, error.code), error.status, error.headers, media_type
            )
        except Exception:
            info.outcome = "error"
            logger.exception("unhandled error serving %s %s", request.method, request.url.path)
            response = _json_response(
                _error_payload(MASKED_MESSAGE, INTERNAL_SERVER_ERROR),
                500,
                None,
                media_type,
            )
        return response

    def _graphiql(self) -> Response:
        if self.ide_html is None:
            raise BadRequest(404, "GraphiQL is turned off on this server.")
        return HTMLResponse(self.ide_html, headers=GRAPHIQL_HEADERS)

    async def _handle(self, request: Request, media_type: str) -> Response:
        # The body is read first, so that no database connection waits on a slow client. Its
        # errors are still answered only after authentication and rate limits, as the order of
        # checks has always been.
        try:
            params, rejected = await self._params(request), None
        except BadRequest as error:
            params, rejected = None, error
        answer = await self._authorized(request, media_type, params, rejected)
        if isinstance(answer, Response):
            return answer
        return await self._execute(request, media_type, *answer)

    async def _authorized(
        self, request: Request, media_type: str, params: Any, rejected: BadRequest | None
    ) -> Response | tuple[Context, str, dict[str, Any] | None, str | None]:
        """The response of a request that is refused, else what execution needs to answer it."""
        principal = await self.authenticator.authenticate(
            bearer_token(request.headers.get("authorization")), repo.now_utc()
        )
        info = current_request()
        if principal is None:
            info.outcome = "unauthenticated"
            return _json_response(
                _error_payload(
                    "A valid, unexpired token is required: send 'Authorization: Bearer <token>' "
                    "with an API key or a customer session token.",
                    UNAUTHENTICATED,
                ),
                401,
                {"WWW-Authenticate": "Bearer"},
                media_type,
            )
        info.principal_kind = principal.kind
        info.organization_id = str(principal.organization_id)
        retry_after = await self.rate_limiter.retry_after(principal)
        if retry_after is not None:
            info.outcome = "rate_limited"
            limit = self.rate_limiter.limit_for(principal)
            payload = _error_payload(
                f"Rate limit exceeded for this token ({limit}); retry after {retry_after} s.",
                RATE_LIMITED,
            )
            payload["errors"][0]["extensions"]["retryAfter"] = retry_after
            return _json_response(payload, 429, {"Retry-After": str(retry_after)}, media_type)
        if rejected is not None:
            raise rejected
        query, variables, operation_name = _operation(params)
        info.variables = variables
        context = Context(
            database=self.database, principal=principal, settings=self.settings, feed=self.feed
        )
        return context, query, variables, operation_name

    async def _execute(
        self,
        request: Request,
        media_type: str,
        context: Context,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> Response:
        info = current_request()
        allowed = (
            {OperationType.QUERY}
            if request.method == "GET"
            else {OperationType.QUERY, OperationType.MUTATION}
        )
        try:
            result = await self.schema.execute(
                query,
                variable_values=variables,
                context_value=context,
                operation_name=operation_name,
                allowed_operation_types=allowed,
            )
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise _subscription_over_http(request) from error
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
        payload = _result_payload(result)
        if "errors" in payload:
            info.outcome = _outcome_of(result.errors or [])
        elif info.outcome == "-":
            info.outcome = "ok"
        # graphql-response+json: a result without `data` is a request error, hence a 400.
        # application/json keeps 200 for it: older clients read errors only from a 200.
        status = 400 if media_type == GRAPHQL_RESPONSE_MEDIA_TYPE and "data" not in payload else 200
        return _json_response(payload, status, None, media_type)

    async def _params(self, request: Request) -> Any:
        if request.method == "GET":
            params: dict[str, Any] = dict(request.query_params)
            if "variables" in params:
                params["variables"] = _loads(params["variables"])
            if "extensions" in params:
                params["extensions"] = _loads(params["extensions"])
            return params
        content_type, *parameters = request.headers.get("content-type", "").split(";")
        charset = next(
            (
                value.strip().strip('"').lower()
                for name, _, value in (p.partition("=") for p in parameters)
                if name.strip().lower() == "charset"
            ),
            "utf-8",
        )
        if content_type.strip().lower() != JSON_MEDIA_TYPE or charset not in ("utf-8", "utf8"):
            raise BadRequest(415, "Send the request as Content-Type: application/json (UTF-8).")
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


def _subscription_over_http(request: Request) -> BadRequest:
    websocket_url = request.url.replace(
        scheme="wss" if request.url.scheme == "https" else "ws", query=""
    )
    return BadRequest(
        400,
        f"Subscriptions are not served over HTTP: open a WebSocket to {websocket_url} with "
        "the graphql-transport-ws protocol and send the token in the connection_init "
        'payload, {"Authorization": "Bearer <token>"}.',
        code=SUBSCRIPTION_OVER_HTTP,
    )


def _outcome_of(errors: list[GraphQLError]) -> str:
    """The outcome of a result with errors: `error` only when the server is at fault."""
    codes = {error_code(error) for error in errors}
    if INTERNAL_SERVER_ERROR in codes:
        return "error"
    return "forbidden" if FORBIDDEN in codes else "invalid"


def _result_payload(result: ExecutionResult) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    errors: list[GraphQLError] = result.errors or []
    # A request that failed before execution (syntax, validation, variables) has no `data`.
    if result.data is not None or not errors or any(e.path is not None for e in errors):
        payload["data"] = result.data
    if errors:
        payload["errors"] = [error.formatted for error in errors]
    return payload
