"""Precompiled plans for the hot writes: `topUpWallet` and `chargeWallet`.

The same contract as the lookup plans (compiled.py): a document gets a plan only after the
general path has answered it without errors, only for one exact shape, and every request keeps
everything around execution (authentication, rate limits, the log line, metrics). The write
itself is the same call (`ledger.top_up` / `ledger.charge`) with the same side effects
(`mutations.write_parts`: ledger metrics, user-error metrics, the wake-up of subscribers).

The shape: one mutation operation without directives, whose only root field is `topUpWallet`
or `chargeWallet` with `input: $variable`, the variable declared `TopUpWalletInput!` (or
`ChargeWalletInput!`) without a default; selecting, with aliases allowed, `__typename` and
`wallet`, `transaction`, `userErrors` with only scalar fields below them.

A plan answers only when the input is one the general path coerces without an error (an object
with only the input's fields, the four required ones present, strings as strings, amount a JSON
integer); anything else goes the general way before anything is written. The write is
idempotent by its key, so if anything fails after the write started, the general path answers
instead: it replays the outcome (or makes the write, if it did not happen).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLObjectType,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    VariableNode,
    build_schema,
    get_named_type,
    is_leaf_type,
    is_non_null_type,
)
from strawberry.types.base import StrawberryOptional, get_object_definition

from gql_wallet import auth, ledger
from gql_wallet.db import DriverConnection
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.mutations import BalanceChangeInput, balance_change, write_parts
from gql_wallet.graphql.schema import schema
from gql_wallet.graphql.types import (
    CustomerWallet,
    SafeInt,
    WalletTransaction,
    WalletUserError,
    serialize_datetime,
    serialize_safe_int,
)

# The payload's objects, serialised as the schema's scalars and enums serialise them (the
# objects are the ones the general path's resolver returns: CustomerWallet, WalletTransaction,
# WalletUserError). Their fields are read off the types themselves, not listed again here.
Leaves = dict[str, Callable[[Any], Any]]
_SERIALISE: dict[str, Callable[[Any], Any]] = {
    "ID": str,
    "SafeInt": serialize_safe_int,
    "DateTime": serialize_datetime,
}


def _leaf(python_name: str, graphql_type: Any) -> Callable[[Any], Any]:
    named = get_named_type(graphql_type)
    if isinstance(named, GraphQLEnumType):
        return lambda value: getattr(value, python_name).name
    serialise = _SERIALISE.get(named.name)
    if serialise is None:  # String, and lists of them: JSON as they are
        return attrgetter(python_name)
    if is_non_null_type(graphql_type):
        return lambda value: serialise(getattr(value, python_name))
    return lambda value: None if (v := getattr(value, python_name)) is None else serialise(v)


# The schema as clients see it (its SDL), for the fields' GraphQL types.
_SDL = build_schema(schema.as_str())


def _leaves(strawberry_type: Any) -> Leaves:
    """Every plain (resolver-less) scalar or enum field of a Strawberry object type, by its
    GraphQL name, with `__typename`."""
    definition = get_object_definition(strawberry_type, strict=True)
    graphql_type = _SDL.get_type(definition.name)
    assert isinstance(graphql_type, GraphQLObjectType)
    python_names = {
        schema.config.name_converter.get_graphql_name(field): field.python_name
        for field in definition.fields
        if field.base_resolver is None
    }
    leaves: Leaves = {
        name: _leaf(python_names[name], field.type)
        for name, field in graphql_type.fields.items()
        if name in python_names and is_leaf_type(get_named_type(field.type))
    }
    leaves["__typename"] = lambda _value: definition.name
    return leaves


WALLET_LEAVES = _leaves(CustomerWallet)
_OBJECTS: dict[str, Leaves] = {
    "wallet": WALLET_LEAVES,
    "transaction": _leaves(WalletTransaction),
    "userErrors": _leaves(WalletUserError),
}
_WRITES = {
    # root field: (input type, payload type, the ledger call)
    "topUpWallet": ("TopUpWalletInput", "TopUpWalletPayload", ledger.top_up),
    "chargeWallet": ("ChargeWalletInput", "ChargeWalletPayload", ledger.charge),
}


def _input_fields() -> tuple[tuple[str, str, type, bool], ...]:
    """(GraphQL name, Python name, JSON type, required) of each field of the input type both
    writes share, read off the type itself."""
    kinds: dict[Any, type] = {SafeInt: int, str: str}
    fields = []
    for field in get_object_definition(BalanceChangeInput, strict=True).fields:
        field_type = field.type
        optional = isinstance(field_type, StrawberryOptional)
        kind = kinds[
            field_type.of_type if isinstance(field_type, StrawberryOptional) else field_type
        ]
        name = schema.config.name_converter.get_graphql_name(field)
        fields.append((name, field.python_name, kind, not optional))
    return tuple(fields)


_INPUT = _input_fields()
_INPUT_NAMES = frozenset(name for name, *_ in _INPUT)

# A selection of the payload: (response key, field name, the leaves below it or None).
Selection = tuple[str, str, tuple[tuple[str, Callable[[Any], Any]], ...] | None]


@dataclass(frozen=True)
class WritePlan:
    root_field: str
    response_key: str
    variable: str
    selections: tuple[Selection, ...]
    mutation = True  # never for GET: the general path refuses mutations there

    @property
    def label(self) -> str:
        return f"mutation {self.root_field}"  # as OperationLabel names it

    async def run(
        self, variables: dict[str, Any] | None, context: Context, conn: DriverConnection
    ) -> Any:
        """The response payload, or None when the general path must answer. `conn` is the
        request's connection (a `db.OnDemandConnection`): on PostgreSQL a replay reads on it."""
        change = _coerced((variables or {}).get(self.variable))
        if change is None or not context.principal.can(auth.SCOPE_WRITE):
            return None  # the general path words the error (variables, FORBIDDEN)
        _input_type, payload_type, write = _WRITES[self.root_field]
        try:
            result = await write(context.database, context.principal.organization_id, change, conn)
            wallet, transaction, errors = write_parts(context, result)
            parts = {"wallet": wallet, "transaction": transaction, "userErrors": errors}
            payload: dict[str, Any] = {}
            for key, name, leaves in self.selections:
                if leaves is None:  # __typename
                    payload[key] = payload_type
                elif name == "userErrors":
                    payload[key] = [_object(error, leaves) for error in errors]
                else:
                    value = parts[name]
                    payload[key] = None if value is None else _object(value, leaves)
        except Exception:
            return None  # idempotent: the general path replays or makes the write
        return {"data": {self.response_key: payload}}


def _object(value: Any, leaves: tuple[tuple[str, Callable[[Any], Any]], ...]) -> dict[str, Any]:
    return {key: serialise(value) for key, serialise in leaves}


def _coerced(value: Any) -> ledger.BalanceChange | None:
    """The input as the general path coerces it, or None where that path has an error to say."""
    if not isinstance(value, dict) or not _INPUT_NAMES.issuperset(value):
        return None
    arguments: dict[str, Any] = {}
    for name, python_name, kind, required in _INPUT:
        item = value.get(name)
        if item is None and not required:
            arguments[python_name] = None
        elif isinstance(item, bool) or not isinstance(item, kind):
            return None
        else:
            arguments[python_name] = item
    return balance_change(BalanceChangeInput(**arguments))


def compile_write_plan(operation: OperationDefinitionNode) -> WritePlan | None:
    """A plan for a mutation operation, or None when its shape is not one a plan reproduces."""
    if operation.directives:
        return None
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode):
        return None
    root = roots[0]
    if root.name.value not in _WRITES or root.directives or root.selection_set is None:
        return None
    input_type = _WRITES[root.name.value][0]
    arguments = root.arguments or ()
    definitions = operation.variable_definitions or ()
    if len(arguments) != 1 or arguments[0].name.value != "input" or len(definitions) != 1:
        return None
    argument, declaration = arguments[0].value, definitions[0]
    declared = declaration.type
    if (
        not isinstance(argument, VariableNode)
        or declaration.variable.name.value != argument.name.value
        or declaration.default_value is not None
        or declaration.directives
        or not isinstance(declared, NonNullTypeNode)
        or not isinstance(declared.type, NamedTypeNode)
        or declared.type.name.value != input_type
    ):
        return None
    selections: dict[str, Selection] = {}
    for selection in root.selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.arguments or selection.directives:
            return None
        name = selection.name.value
        key = selection.alias.value if selection.alias else name
        if name == "__typename" and selection.selection_set is None:
            planned: Selection = (key, name, None)
        elif name in _OBJECTS and selection.selection_set is not None:
            leaves = scalar_leaves(selection, _OBJECTS[name])
            if leaves is None:
                return None
            planned = (key, name, leaves)
        else:
            return None
        if key in selections:
            return None  # a response key selected twice: merging is the general path's work
        selections[key] = planned
    response_key = root.alias.value if root.alias else root.name.value
    return WritePlan(root.name.value, response_key, argument.name.value, tuple(selections.values()))


def scalar_leaves(
    selection: FieldNode, leaves: Leaves
) -> tuple[tuple[str, Callable[[Any], Any]], ...] | None:
    """(response key, serialiser) for each field selected below `selection`, or None unless
    all of them are plain `leaves` (aliases allowed; one key for two fields is invalid, the
    general path says so)."""
    assert selection.selection_set is not None
    fields: dict[str, Callable[[Any], Any]] = {}
    for leaf in selection.selection_set.selections:
        if (
            not isinstance(leaf, FieldNode)
            or leaf.name.value not in leaves
            or leaf.arguments
            or leaf.directives
            or leaf.selection_set is not None
        ):
            return None
        key = leaf.alias.value if leaf.alias else leaf.name.value
        if key in fields and fields[key] is not leaves[leaf.name.value]:
            return None
        fields.setdefault(key, leaves[leaf.name.value])
    return tuple(fields.items())
