"""Request errors: the caller asked for something malformed (top-level `errors`, never a 5xx)."""

from __future__ import annotations

from graphql import GraphQLError


class RequestError(GraphQLError):
    """A malformed argument (a page size out of range, a cursor we never issued)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "BAD_USER_INPUT"})


def should_mask_error(error: GraphQLError) -> bool:
    """Mask every error that comes from an unexpected exception; keep GraphQL's own errors."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)
