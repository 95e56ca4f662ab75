"""The executor of every document: Strawberry's, with less work per plain scalar field.

A page of 100 wallets has about 700 scalar fields that only read an attribute. graphql-core
builds a path, a resolve info and a resolver call for each, and completes the value in five
nested steps; that was most of the CPU of a page. Here a field that Strawberry resolves with
its basic resolver (an attribute of the source, no arguments, no field extensions) and whose
type is a scalar or an enum is read and serialized directly. Anything else, including every
error and every null of a non-null field, takes graphql-core's own path, so the answers are
the same byte for byte (tests/test_execution.py compares both executors).

With a SchemaExtension that resolves fields (a `resolve` hook, graphql-core middleware), the
executor is graphql-core's for every field, so that the extension sees each one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from graphql import (
    GraphQLField,
    GraphQLLeafType,
    GraphQLNonNull,
    GraphQLObjectType,
    is_leaf_type,
)
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.pyutils import AwaitableOrValue, Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField


class PlainLeaf(NamedTuple):
    attribute: str
    type: GraphQLLeafType
    non_null: bool


def plain_leaf(field: GraphQLField) -> PlainLeaf | None:
    """How to read `field` directly, or None when graphql-core must resolve it."""
    definition = (field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    resolve = field.resolve
    if (
        not isinstance(definition, StrawberryField)
        or not definition.is_basic_field
        or definition.default_resolver is not getattr
        or field.args
        # Strawberry's resolver for a basic field without exception handlers, and nothing else.
        or resolve is None
        or not resolve.__qualname__.endswith("._get_basic_result")
    ):
        return None
    field_type = field.type
    non_null = isinstance(field_type, GraphQLNonNull)
    leaf = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    if not is_leaf_type(leaf):
        return None
    return PlainLeaf(definition.python_name, leaf, non_null)


_FieldPlans = dict[str, PlainLeaf | None]


class WalletExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor with plain scalar fields read directly (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.middleware_manager
        self.direct_leaves = manager is None or not manager.middlewares
        # Per object type, per field name: resolved on first sight, for this operation.
        self.field_plans: dict[GraphQLObjectType, _FieldPlans] = {}

    def _plans(self, parent_type: GraphQLObjectType) -> _FieldPlans:
        plans = self.field_plans.get(parent_type)
        if plans is None:
            plans = self.field_plans[parent_type] = {
                name: plain_leaf(field) for name, field in parent_type.fields.items()
            }
        return plans

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        if not self.direct_leaves:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        plans = self._plans(parent_type)
        direct: dict[str, Any] = {}
        rest: GroupedFieldSet = {}
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            leaf = plans.get(node.name.value)
            if leaf is not None and not node.arguments:
                value = _read(source_value, leaf)
                if value is not Undefined:
                    direct[response_name] = value
                    continue
            rest[response_name] = field_details_list
        if not rest:
            return direct
        if not direct:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        resolved = super().execute_fields(parent_type, source_value, path, rest, position_context)
        return _merged(grouped_field_set, direct, resolved, self.is_awaitable)


def _read(source: Any, leaf: PlainLeaf) -> Any:
    """The field's serialized value, or Undefined where graphql-core must answer (an error, a
    null in a non-null field, an awaitable)."""
    try:
        value = getattr(source, leaf.attribute)
        if value is None:
            return Undefined if leaf.non_null else None
        coerced = leaf.type.coerce_output_value(value)
    except Exception:  # graphql-core raises and locates it the same way
        return Undefined
    return Undefined if coerced is None or coerced is Undefined else coerced


def _merged(
    grouped_field_set: GroupedFieldSet,
    direct: dict[str, Any],
    resolved: AwaitableOrValue[dict[str, Any]],
    is_awaitable: Any,
) -> AwaitableOrValue[dict[str, Any]]:
    """The fields in the document's order, as graphql-core would have put them."""

    def ordered(rest: dict[str, Any]) -> dict[str, Any]:
        return {
            name: direct[name] if name in direct else rest[name]
            for name in grouped_field_set
            if name in direct or name in rest
        }

    if is_awaitable(resolved):

        async def awaited() -> dict[str, Any]:
            return ordered(await resolved)  # type: ignore[misc]

        return awaited()
    return ordered(resolved)  # type: ignore[arg-type]
