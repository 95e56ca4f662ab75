"""Request errors: the caller asked for something malformed (top-level `errors`, never a 5xx)."""

from __future__ import annotations

from graphql import GraphQLError

from gql_wallet.errors import UserError


class RequestError(GraphQLError):
    """A malformed argument (a page size out of range, a cursor we never issued)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "BAD_USER_INPUT"})


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
