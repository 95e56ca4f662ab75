"""The strawberry Schema: the export target of `gql-wallet export-schema`."""

from __future__ import annotations

from collections.abc import Callable

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext
from strawberry.types.base import get_object_definition

from gql_wallet.graphql.documents import DocumentPolicy, Documents
from gql_wallet.graphql.errors import ErrorPolicy, should_mask_error
from gql_wallet.graphql.execution import WalletExecutor
from gql_wallet.graphql.hooks import HookRunner
from gql_wallet.graphql.limits import validation_rules
from gql_wallet.graphql.mutations import Mutation
from gql_wallet.graphql.queries import Query
from gql_wallet.graphql.subscriptions import Subscription
from gql_wallet.graphql.types import SCALARS
from gql_wallet.graphql.webhooks import WebhookMutations, WebhookQueries
from gql_wallet.logs import logger, request_id
from gql_wallet.settings import Settings


class WalletSchema(strawberry.Schema):
    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return HookRunner(execution_context=execution_context, extensions=extensions)

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


# The roots: each domain's fields, in one type each.
@strawberry.type(name="Query", description=get_object_definition(Query, strict=True).description)
class _Query(Query, WebhookQueries):
    pass


@strawberry.type(
    name="Mutation", description=get_object_definition(Mutation, strict=True).description
)
class _Mutation(Mutation, WebhookMutations):
    pass


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema; with `settings`, also every limit and safeguard the server runs with."""
    extensions: list[Callable[[], SchemaExtension]] = []
    if settings is not None:
        # Factories, not instances: an extension instance holds one request's execution
        # context, so a shared one would mask (or leak) another request's errors. What requests
        # share (prepared documents) is held by `documents`.
        documents = Documents(
            validation_rules(settings), settings.max_tokens, settings.max_cost, maxsize=1024
        )
        extensions = [ErrorPolicy, lambda: DocumentPolicy(documents)]
    return WalletSchema(
        query=_Query,
        mutation=_Mutation,
        subscription=Subscription,
        config=StrawberryConfig(
            scalar_map=SCALARS,
            # "Did you mean ...?" would reveal the schema even with introspection off.
            disable_field_suggestions=True,
        ),
        extensions=extensions,
        execution_context_class=WalletExecutor,
    )


schema = build_schema()
