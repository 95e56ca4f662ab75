"""The strawberry Schema: the export target of `gql-wallet export-schema`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from gql_wallet.graphql.errors import should_mask_error
from gql_wallet.graphql.mutations import Mutation
from gql_wallet.graphql.queries import Query
from gql_wallet.graphql.types import DATETIME_SCALAR, SAFE_INT_SCALAR, SafeInt
from gql_wallet.logs import logger


class WalletSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Called before MaskErrors rewrites them: the full detail stays in the server's log.
        for error in errors:
            if should_mask_error(error):
                logger.error("unexpected error in %s", error.path, exc_info=error.original_error)


def build_schema() -> strawberry.Schema:
    return WalletSchema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(scalar_map={SafeInt: SAFE_INT_SCALAR, datetime: DATETIME_SCALAR}),
        extensions=[
            # Factories, not instances: an extension instance holds one request's execution
            # context, so a shared one would mask (or leak) another request's errors.
            lambda: MaskErrors(
                should_mask_error=should_mask_error, error_message="Internal server error."
            ),
            lambda: ParserCache(maxsize=1024),
            lambda: ValidationCache(maxsize=1024),
        ],
    )


schema: Any = build_schema()
