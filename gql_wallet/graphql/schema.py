"""The strawberry Schema: the export target of `gql-wallet export-schema`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import strawberry
from graphql import FieldNode, GraphQLError, get_operation_ast
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from gql_wallet.graphql.errors import ErrorPolicy, should_mask_error
from gql_wallet.graphql.execution import WalletExecutor
from gql_wallet.graphql.limits import CostLimiter, validation_rules
from gql_wallet.graphql.mutations import Mutation
from gql_wallet.graphql.queries import Query
from gql_wallet.graphql.subscriptions import Subscription
from gql_wallet.graphql.types import DATETIME_SCALAR, SAFE_INT_SCALAR, SafeInt
from gql_wallet.logs import current_request, logger, request_id
from gql_wallet.settings import Settings


class WalletSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Called before ErrorPolicy masks them: the full detail stays in the server's log.
        for error in errors:
            if should_mask_error(error):
                logger.error(
                    "unexpected error in %s [request %s]",
                    error.path,
                    request_id.get(),
                    exc_info=error.original_error,
                )


class OperationLabel(SchemaExtension):
    """Names the request for its log line and metrics: the operation type and its root fields.

    Root fields (not client-chosen operation names) keep the metrics' label values few.
    """

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        operation = get_operation_ast(document, context.operation_name) if document else None
        if operation is not None:
            fields = sorted(
                {
                    s.name.value
                    for s in operation.selection_set.selections
                    if isinstance(s, FieldNode)
                }
            )
            current_request().operation = f"{operation.operation.value} {','.join(fields) or '-'}"
        yield


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema; with `settings`, also every limit and safeguard the server runs with."""
    extensions: list[Callable[[], SchemaExtension]] = []
    if settings is not None:
        # Factories, not instances: an extension instance holds one request's execution
        # context, so a shared one would mask (or leak) another request's errors. The rule
        # classes are built once, so that the validation cache (keyed by them) keeps hitting.
        rules = validation_rules(settings)
        max_tokens, max_cost = settings.max_tokens, settings.max_cost
        extensions = [
            ErrorPolicy,
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: ParserCache(maxsize=1024),
            lambda: AddValidationRules(rules),
            lambda: ValidationCache(maxsize=1024),
            lambda: CostLimiter(max_cost),
            OperationLabel,
        ]
    return WalletSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(
            scalar_map={SafeInt: SAFE_INT_SCALAR, datetime: DATETIME_SCALAR},
            # "Did you mean ...?" would reveal the schema even with introspection off.
            disable_field_suggestions=True,
        ),
        extensions=extensions,
        execution_context_class=WalletExecutor,
    )


schema = build_schema()
