"""Precompiled plans for the hottest read: `customerWallets` with plain scalar selections (and,
through compiled_writes.py, for the hot writes `topUpWallet` and `chargeWallet`).

A request with a plan still goes through everything around execution (body checks,
authentication, rate limits, the log line and metrics) and through the same resolver logic
(`queries.customer_wallet_records`); what a plan skips is strawberry's and graphql-core's general
executor, about a third of a lookup's CPU (bench/PROFILE.md).

A document gets a plan only when both hold:
- the general path has answered this exact text (and operationName) without any error once, so
  parsing, validation and every limit (tokens, depth, aliases, directives, cost) passed; none of
  them depends on anything but the text for this shape;
- its shape is one the plan reproduces exactly: one query operation without directives, whose
  only root field is `customerWallets(customerId: <string literal or a String! variable without
  default>)`, selecting only scalar fields of CustomerWallet (aliases allowed), with no
  fragments, directives or arguments.
Anything else, a variable that is missing or not a string, or any error while running the plan
goes the general way, which then answers exactly as it always did. Tests compare both paths'
responses on generated documents (tests/test_compiled.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
    parse,
)

from gql_wallet.db import DriverConnection
from gql_wallet.graphql.compiled_writes import (
    WALLET_LEAVES,
    WritePlan,
    compile_write_plan,
    scalar_leaves,
)
from gql_wallet.graphql.context import Context
from gql_wallet.graphql.queries import customer_wallet_records

# CustomerWallet's scalar fields, serialised as the schema's scalars serialise them.
_LEAVES = WALLET_LEAVES
ROOT_FIELD = "customerWallets"
LABEL = f"query {ROOT_FIELD}"  # as OperationLabel names it, for the log line and metrics
MAX_PLANNED_QUERY_LENGTH = 4_000  # characters; the cache holds the texts


@dataclass(frozen=True)
class Plan:
    response_key: str
    customer_literal: str | None  # customerId given in the text
    customer_variable: str | None  # or the name of its String! variable
    fields: tuple[tuple[str, Callable[[Any], Any]], ...]  # (response key, serialiser)
    label = LABEL
    mutation = False

    async def run(
        self, variables: dict[str, Any] | None, context: Context, conn: DriverConnection
    ) -> Any:
        """The response payload, or None when the general path must answer. `conn` is the
        request's connection, a `db.OnDemandConnection`."""
        customer_id = self.customer_literal
        if self.customer_variable is not None:
            value = (variables or {}).get(self.customer_variable)
            if not isinstance(value, str):
                return None  # missing or not a String: the general path words the error
            customer_id = value
        assert customer_id is not None
        try:
            records = await customer_wallet_records(context, customer_id, conn)
            wallets = [{key: serialise(r) for key, serialise in self.fields} for r in records]
        except Exception:
            return None
        return {"data": {self.response_key: wallets}}


def compile_plan(query: str, operation_name: str | None) -> Plan | WritePlan | None:
    """A plan for the document, or None when its shape is not one a plan reproduces."""
    try:
        document = parse(query, no_location=True)
    except GraphQLError:
        return None
    operations = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            return None  # fragments: the general path
        operations.append(definition)
    if operation_name is None:
        if len(operations) != 1:
            return None
        operation = operations[0]
    else:
        named = [op for op in operations if op.name and op.name.value == operation_name]
        if len(named) != 1:
            return None
        operation = named[0]
    if operation.operation is OperationType.MUTATION:
        return compile_write_plan(operation)
    if operation.operation is not OperationType.QUERY or operation.directives:
        return None
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode):
        return None
    root = roots[0]
    if root.name.value != ROOT_FIELD or root.directives or root.selection_set is None:
        return None
    arguments = root.arguments or ()
    if len(arguments) != 1 or arguments[0].name.value != "customerId":
        return None
    literal = variable = None
    argument = arguments[0].value
    definitions = operation.variable_definitions or ()
    if isinstance(argument, StringValueNode) and not definitions:
        literal = argument.value
    elif isinstance(argument, VariableNode) and len(definitions) == 1:
        declaration = definitions[0]
        declared = declaration.type
        if (
            declaration.variable.name.value != argument.name.value
            or declaration.default_value is not None
            or declaration.directives
            or not isinstance(declared, NonNullTypeNode)
            or not isinstance(declared.type, NamedTypeNode)
            or declared.type.name.value != "String"
        ):
            return None
        variable = argument.name.value
    else:
        return None
    fields = scalar_leaves(root, _LEAVES)
    if fields is None:
        return None
    response_key = root.alias.value if root.alias else root.name.value
    return Plan(response_key, literal, variable, fields)


class Plans:
    """Per process: plans by (query, operationName), bounded (least recently used go first)."""

    def __init__(self, enabled: bool, maxsize: int = 1024, *, writes: bool = False) -> None:
        self.enabled = enabled or writes
        self.lookups, self.writes = enabled, writes
        self.maxsize = maxsize
        # Documents the general path answered without errors -> their plan, or None.
        self._plans: OrderedDict[tuple[str, str | None], Plan | WritePlan | None] = OrderedDict()
        self.hits = 0  # requests answered by a plan (tests read it)

    def get(self, query: str, operation_name: str | None) -> Plan | WritePlan | None:
        if not self.enabled:
            return None
        key = (query, operation_name)
        plan = self._plans.get(key)
        if plan is None:
            return None
        self._plans.move_to_end(key)
        return plan

    def answered(self, query: str, operation_name: str | None) -> None:
        """The general path answered this document without errors: plan it if it fits."""
        key = (query, operation_name)
        if not self.enabled or key in self._plans or len(query) > MAX_PLANNED_QUERY_LENGTH:
            return
        plan = compile_plan(query, operation_name)
        if plan is not None and not (self.writes if plan.mutation else self.lookups):
            plan = None  # that kind of plan is turned off
        self._plans[key] = plan
        if len(self._plans) > self.maxsize:
            self._plans.popitem(last=False)
