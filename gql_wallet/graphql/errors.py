"""Top-level errors and their stable `extensions.code`: every error a client can get has one.

The codes are decided here and nowhere else: GraphQL's own errors (syntax, validation, variable
coercion, masked server faults) get theirs from the `ErrorPolicy` extension, which runs for
HTTP and WebSocket alike; errors this server raises itself (limits,
request errors, permissions) carry theirs from the start; HTTP refusals take theirs from
`HTTP_ERROR_CODES` by status.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import StreamExecutionResult

from gql_wallet.errors import UserError

# GraphQL errors.
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
BAD_USER_INPUT = "BAD_USER_INPUT"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
FORBIDDEN = "FORBIDDEN"
# Limits on what one document may ask for (limits.py).
TOKEN_LIMIT_EXCEEDED = "TOKEN_LIMIT_EXCEEDED"  # noqa: S105 (an error code, not a secret)
DEPTH_LIMIT_EXCEEDED = "DEPTH_LIMIT_EXCEEDED"
ALIAS_LIMIT_EXCEEDED = "ALIAS_LIMIT_EXCEEDED"
DIRECTIVE_LIMIT_EXCEEDED = "DIRECTIVE_LIMIT_EXCEEDED"
COST_LIMIT_EXCEEDED = "COST_LIMIT_EXCEEDED"
# Per token and per connection.
UNAUTHENTICATED = "UNAUTHENTICATED"
RATE_LIMITED = "RATE_LIMITED"
SUBSCRIPTION_LIMIT_EXCEEDED = "SUBSCRIPTION_LIMIT_EXCEEDED"
# HTTP refusals.
BAD_REQUEST = "BAD_REQUEST"
SUBSCRIPTION_OVER_HTTP = "SUBSCRIPTION_OVER_HTTP"
HTTP_ERROR_CODES = {
    400: BAD_REQUEST,
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: INTERNAL_SERVER_ERROR,
}

# graphql-core words its token limit as a syntax error; this tells the two apart.
_TOKEN_LIMIT = re.compile(r"Syntax Error: Document contains more than \d+ tokens\.")


class RequestError(GraphQLError):
    """A malformed argument (a page size out of range, a cursor we never issued)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": BAD_USER_INPUT})


class InvalidArgument(GraphQLError):
    """A read's argument refused by the rule that refuses it in writes (money.check_*): the same
    code and message, with `field` naming the argument."""

    def __init__(self, error: UserError) -> None:
        super().__init__(
            error.message, extensions={"code": error.code.value, "field": list(error.field or ())}
        )


def refuse(errors: list[UserError]) -> None:
    """Raise the first of a read argument's refusals, if any (a field has one error)."""
    if errors:
        raise InvalidArgument(errors[0])


def should_mask_error(error: GraphQLError) -> bool:
    """Mask every error that comes from an unexpected exception; keep GraphQL's own errors."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)


def error_code(error: GraphQLError) -> str | None:
    code = (error.extensions or {}).get("code")
    return code if isinstance(code, str) else None


def _with_code(error: GraphQLError, code: str) -> None:
    if error_code(error) is None:
        error.extensions = {**(error.extensions or {}), "code": code}


def _code_after_validation(error: GraphQLError) -> str:
    """The code of an error found in parsing or execution (validation tags its own)."""
    if should_mask_error(error):
        return INTERNAL_SERVER_ERROR
    if isinstance(error, GraphQLSyntaxError):
        return TOKEN_LIMIT_EXCEEDED if _TOKEN_LIMIT.match(error.message) else PARSE_FAILED
    if error.path is not None:
        # A field that failed without saying why the client is at fault: the server's fault.
        return INTERNAL_SERVER_ERROR
    # What remains before execution starts: variables that do not coerce to their types.
    return BAD_USER_INPUT


MASKED_MESSAGE = "Internal server error."


def masked(error: GraphQLError) -> GraphQLError:
    """What the client sees of an unexpected exception: where, not what (the log has it)."""
    return GraphQLError(
        message=MASKED_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": INTERNAL_SERVER_ERROR},
    )


class ErrorPolicy(SchemaExtension):
    """Masks the errors of unexpected exceptions and gives every error of a result its code."""

    def on_validate(self) -> Iterator[None]:
        yield
        self._code(self.execution_context.pre_execution_errors or (), VALIDATION_FAILED)

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as error:
            # Raised in an extension (DocumentPolicy parses there): the result's only error.
            _with_code(error, _code_after_validation(error))
            raise
        self._finish(self.execution_context.result)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        # WebSocket operations: each result reaches the client before the operation ends.
        self._finish(result)
        yield

    @classmethod
    def _finish(cls, result: Any) -> None:
        # Masking and coding an error twice changes nothing (a stream's last result is seen
        # by on_stream_result and again when the operation ends).
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [masked(e) if should_mask_error(e) else e for e in errors]
            cls._code(result.errors)

    @staticmethod
    def _code(errors: Iterable[GraphQLError], code: str | None = None) -> None:
        for error in errors:
            _with_code(error, code or _code_after_validation(error))
