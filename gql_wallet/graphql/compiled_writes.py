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
from typing import Any

from graphql import (
    FieldNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    VariableNode,
)

from gql_wallet import auth, ledger
from gql_wallet.db import DriverConnection
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.mutations import write_parts
from gql_wallet.graphql.types import serialize_datetime, serialize_safe_int

# The payload's objects, serialised as the schema's scalars and enums serialise them (the
# objects are the ones the general path's resolver returns: CustomerWallet, WalletTransaction,
# WalletUserError).
Leaves = dict[str, Callable[[Any], Any]]
WALLET_LEAVES: Leaves = {
    "id": lambda wallet: str(wallet.id),
    "createdAt": lambda wallet: serialize_datetime(wallet.created_at),
    "modifiedAt": lambda wallet: serialize_datetime(wallet.modified_at),
    "customerId": lambda wallet: wallet.customer_id,
    "balance": lambda wallet: serialize_safe_int(wallet.balance),
    "currency": lambda wallet: wallet.currency,
    "__typename": lambda _wallet: "CustomerWallet",
}
_TRANSACTION_LEAVES: Leaves = {
    "id": lambda entry: str(entry.id),
    "createdAt": lambda entry: serialize_datetime(entry.created_at),
    "type": lambda entry: entry.type.name,
    "amount": lambda entry: serialize_safe_int(entry.amount),
    "balanceAfter": lambda entry: serialize_safe_int(entry.balance_after),
    "description": lambda entry: entry.description,
    "reference": lambda entry: entry.reference,
    "idempotencyKey": lambda entry: entry.idempotency_key,
    "__typename": lambda _entry: "WalletTransaction",
}
_USER_ERROR_LEAVES: Leaves = {
    "code": lambda error: error.code.name,
    "field": lambda error: error.field,
    "message": lambda error: error.message,
    "__typename": lambda _error: "WalletUserError",
}
_OBJECTS: dict[str, Leaves] = {
    "wallet": WALLET_LEAVES,
    "transaction": _TRANSACTION_LEAVES,
    "userErrors": _USER_ERROR_LEAVES,
}
_WRITES = {
    # root field: (input type, payload type, the ledger call)
    "topUpWallet": ("TopUpWalletInput", "TopUpWalletPayload", ledger.top_up),
    "chargeWallet": ("ChargeWalletInput", "ChargeWalletPayload", ledger.charge),
}
_REQUIRED = ("customerId", "currency", "amount", "idempotencyKey")
_OPTIONAL = ("description", "reference")
_INPUT_FIELDS = frozenset(_REQUIRED + _OPTIONAL)

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
    if not isinstance(value, dict) or not _INPUT_FIELDS.issuperset(value):
        return None
    amount = value.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        return None
    for name in ("customerId", "currency", "idempotencyKey"):
        if not isinstance(value.get(name), str):
            return None
    for name in _OPTIONAL:
        if not isinstance(value.get(name), str | None):
            return None
    return ledger.BalanceChange(
        customer_id=value["customerId"],
        currency=value["currency"],
        amount=amount,
        idempotency_key=value["idempotencyKey"],
        description=value.get("description"),
        reference=value.get("reference"),
    )


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
