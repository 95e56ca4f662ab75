"""Limits on what one GraphQL document may ask for: depth, aliases, tokens, directives, cost.

The rules and the cost are applied by `documents.DocumentPolicy`, which validates each query
text once.

Every measure here memoises fragments, so it takes time linear in the document's size. This is
why depth and aliases are not measured with Strawberry's QueryDepthLimiter and MaxAliasesLimiter
(0.341): both walk every fragment spread anew, so a few dozen fragments that each spread the
previous one twice keep a server process busy for hours (see tests/test_hardening.py).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
)
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule

from gql_wallet.graphql.errors import (
    ALIAS_LIMIT_EXCEEDED,
    DEPTH_LIMIT_EXCEEDED,
    DIRECTIVE_LIMIT_EXCEEDED,
)
from gql_wallet.graphql.types import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from gql_wallet.settings import Settings

# How many objects a list field may return per parent, for the cost estimate. Connections take
# their page size from `first`; a customer has one wallet per currency, rarely more than a few,
# and an entry touches a few credit blocks (a charge may span more: an estimate, not a bound).
CONNECTION_FIELDS = frozenset({"wallets", "transactions", "credits"})
LIST_FIELD_SIZES = {"customerWallets": 10, "allocations": 10, "totals": 8}


class DocumentShape:
    """Depth (levels of fields below the root fields) and alias count of a selection set."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.memo: dict[str, tuple[int, int]] = {}
        self.visiting: set[str] = set()

    def of(self, selection_set: SelectionSetNode) -> tuple[int, int]:
        """(levels, aliases): levels counts fields on the longest path down."""
        levels, aliases = 0, 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                below, inner = (
                    self.of(selection.selection_set) if selection.selection_set else (0, 0)
                )
                aliases += inner + (1 if selection.alias else 0)
                # Introspection (__schema, __type) is as deep as the schema, not the data; it is
                # bounded by the token limit and turned off in production.
                if not selection.name.value.startswith("__"):
                    levels = max(levels, 1 + below)
            else:
                if isinstance(selection, InlineFragmentNode):
                    below, inner = self.of(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    below, inner = self._fragment(selection.name.value)
                levels, aliases = max(levels, below), aliases + inner
        return levels, aliases

    def _fragment(self, name: str) -> tuple[int, int]:
        if name not in self.memo:
            fragment = self.fragments.get(name)
            if fragment is None or name in self.visiting:  # refused by validation anyway
                return 0, 0
            self.visiting.add(name)
            self.memo[name] = self.of(fragment.selection_set)
            self.visiting.discard(name)
        return self.memo[name]


def fragments_of(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def depth_and_aliases_rule(max_depth: int, max_aliases: int) -> type[ValidationRule]:
    class DepthAndAliases(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            shape = DocumentShape(fragments_of(context.document))
            total_aliases = 0
            for definition in context.document.definitions:
                if not isinstance(definition, OperationDefinitionNode):
                    continue
                levels, aliases = shape.of(definition.selection_set)
                total_aliases += aliases
                if levels - 1 > max_depth:
                    name = definition.name.value if definition.name else "anonymous"
                    context.report_error(
                        GraphQLError(
                            f"'{name}' exceeds maximum operation depth of {max_depth}.",
                            extensions={"code": DEPTH_LIMIT_EXCEEDED},
                        )
                    )
            if total_aliases > max_aliases:
                context.report_error(
                    GraphQLError(
                        f"{total_aliases} aliases found. Allowed: {max_aliases}.",
                        extensions={"code": ALIAS_LIMIT_EXCEEDED},
                    )
                )

    return DepthAndAliases


def max_directives_rule(max_directives: int) -> type[ValidationRule]:
    class MaxDirectives(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.count = 0

        def enter_directive(self, node: DirectiveNode, *_args: Any) -> None:
            self.count += 1
            if self.count == max_directives + 1:
                self.report_error(
                    GraphQLError(
                        f"The document has more than {max_directives} directives.",
                        node,
                        extensions={"code": DIRECTIVE_LIMIT_EXCEEDED},
                    )
                )

    return MaxDirectives


def validation_rules(settings: Settings) -> list[type[ASTValidationRule]]:
    rules: list[type[ASTValidationRule]] = [
        depth_and_aliases_rule(settings.max_query_depth, settings.max_aliases),
        max_directives_rule(settings.max_directives),
    ]
    if not settings.introspection_enabled:
        rules.append(NoSchemaIntrospectionCustomRule)
    return rules


class OperationCost:
    """An upper bound on the objects an operation can return.

    A scalar is free, an object costs 1 plus what it selects, and a list field multiplies that by
    how many items it can return (a connection's `first`, with variables resolved). Fragment costs
    are memoised, so a document that spreads fragments exponentially is still measured in linear
    time (and is then refused for its cost).
    """

    def __init__(
        self,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
        operation: OperationDefinitionNode,
    ) -> None:
        self.fragments = fragments
        self.variables = {
            d.variable.name.value: d.default_value.value
            for d in operation.variable_definitions or ()
            if isinstance(d.default_value, IntValueNode)
        } | variables
        self.fragment_costs: dict[str, int] = {}
        self.visiting: set[str] = set()
        # The variables the cost depends on (which ones is a property of the document).
        self.read: set[str] = set()

    def of(self, selection_set: SelectionSetNode) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.selection_set is not None:
                    total += self._multiplier(selection) * (1 + self.of(selection.selection_set))
            elif isinstance(selection, InlineFragmentNode):
                total += self.of(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(selection.name.value)
        return total

    def _fragment(self, name: str) -> int:
        if name not in self.fragment_costs:
            fragment = self.fragments.get(name)
            if fragment is None or name in self.visiting:  # refused by validation anyway
                return 0
            self.visiting.add(name)
            self.fragment_costs[name] = self.of(fragment.selection_set)
            self.visiting.discard(name)
        return self.fragment_costs[name]

    def _multiplier(self, field: FieldNode) -> int:
        name = field.name.value
        if name in LIST_FIELD_SIZES:
            return LIST_FIELD_SIZES[name]
        if name not in CONNECTION_FIELDS:
            return 1
        first: Any = DEFAULT_PAGE_SIZE
        for argument in field.arguments or ():
            if argument.name.value != "first":
                continue
            if isinstance(argument.value, IntValueNode):
                first = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                self.read.add(argument.value.name.value)
                first = self.variables.get(argument.value.name.value, DEFAULT_PAGE_SIZE)
        if isinstance(first, bool) or not isinstance(first, int):
            return MAX_PAGE_SIZE  # coercion refuses it later; assume the worst until then
        return max(1, min(first, MAX_PAGE_SIZE))
