"""Every request's document: parsed, validated, measured and named once per query text.

Strawberry's ParserCache and ValidationCache keep two LRU caches, the second keyed by the parsed
document, and a graphql-core 3.3 AST node is a frozen dataclass that does not keep its hash: each
request hashed its whole document, node by node, to find its validation. Here one entry per query
text holds the document, its validation errors, its fragments and its operations' log labels, and
one extension applies the limits on documents (tokens, validation rules, cost) from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
    get_operation_ast,
    parse,
    specified_rules,
)
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from gql_wallet.graphql.errors import COST_LIMIT_EXCEEDED
from gql_wallet.graphql.limits import OperationCost, fragments_of
from gql_wallet.logs import current_request


@dataclass(slots=True)
class Prepared:
    """A query text's document and what every request of it shares."""

    document: DocumentNode
    fragments: dict[str, FragmentDefinitionNode]
    errors: list[GraphQLError] | None = None  # None until validated
    operations: dict[str | None, tuple[OperationDefinitionNode, str]] = field(default_factory=dict)
    # Per operation: the variables its cost depends on, and its cost by their values.
    costs: dict[str | None, tuple[tuple[str, ...], dict[tuple[Any, ...], int]]] = field(
        default_factory=dict
    )


# Costs kept per operation: a page size is a variable with at most 100 useful values.
_MOST_COSTS = 128


def operation_label(operation: OperationDefinitionNode) -> str:
    """The request's name for its log line and metrics: the operation type and its root fields
    (not the client-chosen operation name, so that the metrics' label values stay few)."""
    fields = sorted(
        {s.name.value for s in operation.selection_set.selections if isinstance(s, FieldNode)}
    )
    return f"{operation.operation.value} {','.join(fields) or '-'}"


class Documents:
    """The prepared documents of one schema, the most recently used `maxsize` of them."""

    def __init__(
        self, rules: Sequence[type[ASTValidationRule]], max_tokens: int, max_cost: int, maxsize: int
    ) -> None:
        # Strawberry adds its own rules (MaybeNull, OneOf) to these in `validate_document`.
        self.rules = (*specified_rules, *rules)
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        # A syntax error raises, so a document that does not parse is never kept.
        self.get = lru_cache(maxsize=maxsize)(self._prepare)

    def _prepare(self, query: str) -> Prepared:
        document = parse(query, max_tokens=self.max_tokens)
        return Prepared(document, fragments_of(document))

    def operation(
        self, prepared: Prepared, name: str | None
    ) -> tuple[OperationDefinitionNode, str] | None:
        """The operation `name` selects in the document, with its label. Only names that select
        one are kept, so that a client's made-up operation names take no memory."""
        found = prepared.operations.get(name)
        if found is None:
            operation = get_operation_ast(prepared.document, name)
            if operation is None:
                return None
            found = prepared.operations[name] = (operation, operation_label(operation))
        return found

    def cost(
        self,
        prepared: Prepared,
        name: str | None,
        operation: OperationDefinitionNode,
        variables: dict[str, Any],
    ) -> int:
        """The operation's cost (limits.OperationCost) with these variables, measured once per
        set of values of the variables it depends on."""
        known = prepared.costs.get(name)
        if known is not None:
            cost = known[1].get(_values(variables, known[0]))
            if cost is not None:
                return cost
        measure = OperationCost(prepared.fragments, variables, operation)
        cost = measure.of(operation.selection_set)
        names, by_values = prepared.costs.setdefault(name, (tuple(sorted(measure.read)), {}))
        if len(by_values) < _MOST_COSTS:
            by_values[_values(variables, names)] = cost
        return cost


def _values(variables: dict[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
    """A key for the values of `names` (repr: any JSON value, 1 apart from true, an absent
    variable apart from null)."""
    return tuple(repr(variables[name]) if name in variables else "" for name in names)


class DocumentPolicy(SchemaExtension):
    """Parses and validates through `Documents`, refuses an operation over the cost limit
    before anything executes, and names the request for its log line and metrics."""

    def __init__(self, documents: Documents) -> None:
        super().__init__()
        self.documents = documents
        self.prepared: Prepared | None = None

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None:  # handed in by the caller: prepared for this request only
            self.prepared = Prepared(document, fragments_of(document))
        elif context.query:
            self.prepared = self.documents.get(context.query)
            context.graphql_document = self.prepared.document
        yield

    def on_validate(self) -> Iterator[None]:
        prepared = self.prepared
        if prepared is not None:
            if prepared.errors is None:
                context = self.execution_context
                prepared.errors = validate_document(
                    context.schema._schema, prepared.document, self.documents.rules
                )
            self.execution_context.pre_execution_errors = list(prepared.errors)
        yield

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        prepared = self.prepared
        found = (
            None if prepared is None else self.documents.operation(prepared, context.operation_name)
        )
        if prepared is not None and found is not None:
            operation, label = found
            current_request().operation = label
            variables = context.variables if isinstance(context.variables, dict) else {}
            cost = self.documents.cost(prepared, context.operation_name, operation, variables)
            if cost > self.documents.max_cost:
                raise GraphQLError(
                    f"This operation could return {cost} objects; the limit is "
                    f"{self.documents.max_cost}. Ask for smaller pages (first) or fewer nested "
                    "connections.",
                    extensions={"code": COST_LIMIT_EXCEEDED},
                )
        yield
