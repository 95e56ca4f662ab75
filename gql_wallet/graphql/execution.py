"""The executor of every document: Strawberry's, with less work per plain field.

A page of 100 wallets has about 800 fields that only read an attribute. graphql-core builds a
path, a resolve info and a resolver call for each, and reaches an object's fields in five
nested steps; that was most of the CPU of a page. Here a field that Strawberry resolves with
its basic resolver (an attribute of the source, no arguments, no field extensions) is read
directly: a scalar or an enum is serialized at once, an object's fields are executed at once,
and so are the fields of each object of a list (its subfields collected once for the list).
What to do for each field is decided once per operation and shared by every request of it
(the document is one object per query text), unless a directive reads a variable.
Errors, nulls of non-null fields and awaitables take graphql-core's own path (an error inside
an object goes to graphql-core's `handle_field_error`), so the answers are the same
(tests/test_execution.py runs generated documents through both executors).

With a SchemaExtension that resolves fields (a `resolve` hook, graphql-core middleware), the
executor is graphql-core's for every field, so that the extension sees each one.
"""

from __future__ import annotations

from functools import partial
from operator import attrgetter
from types import GeneratorType
from typing import Any, ClassVar, NamedTuple
from weakref import WeakKeyDictionary

from graphql import (
    FragmentDefinitionNode,
    GraphQLEnumType,
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    VariableNode,
)
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.pyutils import AwaitableOrValue, Path, Undefined, gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField


class Plain(NamedTuple):
    """A field read as an attribute: a scalar or enum (`leaf`, serialized by `coerce`), an
    object without an `is_type_of` check (`type`, executed at once), or a list of such objects
    (`items`: the declared item type, non-null or not)."""

    attribute: str
    field_type: GraphQLOutputType  # as declared, non-null or not
    type: GraphQLLeafType | GraphQLObjectType
    non_null: bool
    leaf: bool
    coerce: Any
    items: GraphQLOutputType | None = None


def _plain_object(field_type: GraphQLOutputType) -> GraphQLObjectType | None:
    inner = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    if isinstance(inner, GraphQLObjectType) and inner.is_type_of is None:
        return inner
    return None


def plain_field(field: GraphQLField) -> Plain | None:
    """How to read `field` directly, or None when graphql-core must resolve it: a scalar, enum,
    object (without an `is_type_of` check) or list of such objects that Strawberry reads as an
    attribute."""
    definition = (field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    resolve = field.resolve
    if (
        not isinstance(definition, StrawberryField)
        or definition.default_resolver is not getattr
        or field.args
        # Strawberry's resolver for a basic field (no resolver, no field extensions, no
        # exception handlers), and nothing else.
        or resolve is None
        or not resolve.__qualname__.endswith("._get_basic_result")
    ):
        return None
    field_type = field.type
    non_null = isinstance(field_type, GraphQLNonNull)
    inner = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    name = definition.python_name
    if isinstance(inner, GraphQLScalarType | GraphQLEnumType):
        return Plain(name, field_type, inner, non_null, True, inner.coerce_output_value)
    if isinstance(inner, GraphQLObjectType) and inner.is_type_of is None:
        return Plain(name, field_type, inner, non_null, False, None)
    if isinstance(inner, GraphQLList):
        item = _plain_object(inner.of_type)
        if item is not None:
            return Plain(name, field_type, item, non_null, False, None, inner.of_type)
    return None


_FieldPlans = dict[str, Plain | None]


class Leaves(NamedTuple):
    """A selection of plain scalars, enums and records that select only such fields (a wallet,
    a ledger entry, a page's edge and its node): all read in one call, then serialized (a
    record: its own leaves read) in one loop."""

    names: tuple[str, ...]
    read: Any  # operator.attrgetter of every attribute: a tuple of values
    coercers: tuple[Any, ...]
    non_null: tuple[bool, ...]


class Steps(NamedTuple):
    """What to do for each field of a grouped field set: (response name, field details, plan)."""

    fields: list[tuple[str, Any, Plain | None]]
    leaves: Leaves | None


# An operation's subfield steps by (object type, the ids of the selecting field nodes).
_Shared = dict[tuple[Any, ...], Steps | None]


def _leaves(fields: list[tuple[str, Any, Plain | None]], coercers: list[Any]) -> Leaves | None:
    """The one-call form of a selection whose every field has a coercer (see `Steps.leaves`)."""
    attributes = [plan.attribute for _, _, plan in fields if plan is not None]
    if not attributes or len(attributes) != len(fields):
        return None
    read: Any = attrgetter(*attributes)
    if len(attributes) == 1:  # attrgetter of one attribute answers its value, not a tuple
        one = read

        def read(source: Any) -> tuple[Any]:
            return (one(source),)

    return Leaves(
        tuple(name for name, _, _ in fields),
        read,
        tuple(coercers),
        tuple(plan.non_null for _, _, plan in fields if plan is not None),
    )


class WalletExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor with plain fields read directly (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.middleware_manager
        self.direct = manager is None or not manager.middlewares
        self.field_steps: dict[int, tuple[GroupedFieldSet, Steps]] = {}
        self.shared = self._shared_steps(self.operation, self.fragment_definitions)
        # A plain object field's (or list's) subfields, by its field details list: collected
        # once per operation, kept alive with the list so that its id is not reused.
        self.sub_steps: dict[int, tuple[Any, GraphQLObjectType, Steps | None]] = {}

    # Per object type of a schema, per field name: decided on first sight, for every operation.
    field_plans: ClassVar[WeakKeyDictionary[GraphQLObjectType, _FieldPlans]] = WeakKeyDictionary()
    # Per operation (by id, kept alive with it): the steps of its objects' subfields, shared by
    # every request of it, or None where they depend on the request's variables.
    operations: ClassVar[dict[int, tuple[OperationDefinitionNode, _Shared | None]]] = {}
    most_operations: ClassVar[int] = 1024

    @classmethod
    def _shared_steps(
        cls, operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]
    ) -> _Shared | None:
        known = cls.operations.get(id(operation))
        if known is not None and known[0] is operation:
            return known[1]
        shared: _Shared | None = None if _varies(operation, fragments) else {}
        if len(cls.operations) >= cls.most_operations:
            cls.operations.clear()
        cls.operations[id(operation)] = (operation, shared)
        return shared

    def _plans(self, parent_type: GraphQLObjectType) -> _FieldPlans:
        plans = self.field_plans.get(parent_type)
        if plans is None:
            plans = self.field_plans[parent_type] = {
                name: plain_field(field) for name, field in parent_type.fields.items()
            }
        return plans

    def _steps(self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet) -> Steps:
        """What to do for each field of a grouped field set, decided once per operation (the
        set is memoized by graphql-core's `collect_subfields`, so every item of a list shares
        it; the set is kept alive with its steps so that its id is not reused)."""
        cached = self.field_steps.get(id(grouped_field_set))
        if cached is not None:
            return cached[1]
        plans = self._plans(parent_type)
        fields = []
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            plan = None if node.arguments else plans.get(node.name.value)
            fields.append((response_name, field_details_list, plan))
        steps = Steps(fields, self._leaves(fields))
        self.field_steps[id(grouped_field_set)] = (grouped_field_set, steps)
        return steps

    def _leaves(self, fields: list[tuple[str, Any, Plain | None]]) -> Leaves | None:
        coercers = []
        for _, field_details_list, plan in fields:
            if plan is None or plan.items is not None:
                return None
            if plan.leaf:
                coercers.append(plan.coerce)
                continue
            sub = self._sub_steps(plan.type, field_details_list)  # type: ignore[arg-type]
            if sub is None or sub.leaves is None:
                return None
            coercers.append(partial(_read_record, sub.leaves))
        return _leaves(fields, coercers)

    def _sub_steps(self, object_type: GraphQLObjectType, field_details_list: Any) -> Steps | None:
        """The steps of an object's subfields, or None where part of them is deferred (then
        graphql-core answers)."""
        cached = self.sub_steps.get(id(field_details_list))
        if cached is not None and cached[1] is object_type:
            return cached[2]
        shared = self.shared
        if shared is None:
            steps = self._collected_steps(object_type, field_details_list)
        else:
            # The document is the same object for every request of its text (documents.py),
            # so its nodes identify the selection; they live as long as the operation.
            key = (object_type, *(id(details.node) for details in field_details_list))
            if key in shared:
                steps = shared[key]
            else:
                steps = shared[key] = self._collected_steps(object_type, field_details_list)
        self.sub_steps[id(field_details_list)] = (field_details_list, object_type, steps)
        return steps

    def _collected_steps(
        self, object_type: GraphQLObjectType, field_details_list: Any
    ) -> Steps | None:
        grouped_field_set, defer_usages, _ = self.collect_subfields(object_type, field_details_list)
        return None if defer_usages else self._steps(object_type, grouped_field_set)

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        if not self.direct:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        return self._execute(
            parent_type, self._steps(parent_type, grouped_field_set), source_value, path,
            position_context,
        )  # fmt: skip

    def _execute(
        self,
        parent_type: GraphQLObjectType,
        steps: Steps,
        source_value: Any,
        path: Path | None,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        leaves = steps.leaves
        if leaves is not None:
            read = _read_leaves(leaves, source_value)
            if read is not None:
                return read
        # graphql-core's loop (Executor.execute_fields), with the direct reads.
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list, plan in steps.fields:
                result: Any = Undefined
                if plan is not None:
                    if plan.leaf:
                        # The field's serialized value; graphql-core answers an error or a
                        # null in a non-null field, and raises and locates it the same way.
                        try:
                            value = getattr(source_value, plan.attribute)
                            if value is None:
                                if not plan.non_null:
                                    results[response_name] = None
                                    continue
                            else:
                                result = plan.coerce(value)
                                if result is None:
                                    result = Undefined
                        except Exception:
                            result = Undefined
                    else:
                        complete = self._object if plan.items is None else self._list
                        result = complete(
                            plan, source_value, field_details_list, path, response_name,
                            parent_type, position_context,
                        )  # fmt: skip
                if result is Undefined:
                    field_path = Path(path, response_name, parent_type.name)
                    result = self.execute_field(
                        parent_type, source_value, field_details_list, field_path,
                        position_context,
                    )  # fmt: skip
                    if result is Undefined:
                        continue
                    if is_awaitable(result):
                        awaitable_fields.append(response_name)
                elif not plan.leaf and result is not None and not isinstance(result, dict | list):  # type: ignore[union-attr]
                    awaitable_fields.append(response_name)
                results[response_name] = result
        except Exception:
            if awaitable_fields:
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results

        async def get_results() -> dict[str, Any]:
            if len(awaitable_fields) == 1:
                field = awaitable_fields[0]
                results[field] = await results[field]
            else:
                awaited = await gather_with_cancel(*(results[f] for f in awaitable_fields))
                results.update(zip(awaitable_fields, awaited, strict=True))
            return results

        return get_results()

    def _object(
        self,
        plan: Plain,
        source: Any,
        field_details_list: Any,
        path: Path | None,
        response_name: str,
        parent_type: GraphQLObjectType,
        position_context: Any,
    ) -> Any:
        """A plain object field's completed value, or Undefined where graphql-core must answer."""
        value = _attribute(plan, source)
        if value is None or value is Undefined:
            return value
        # A tuple (a record) is neither awaitable nor an exception.
        if not isinstance(value, tuple) and (
            self.is_awaitable(value) or isinstance(value, Exception)
        ):
            return Undefined
        object_type: GraphQLObjectType = plan.type  # type: ignore[assignment]
        steps = self._sub_steps(object_type, field_details_list)
        if steps is None:
            return Undefined
        field_path = Path(path, response_name, parent_type.name)
        try:
            completed = self._execute(object_type, steps, value, field_path, position_context)
        except Exception as error:
            self.handle_field_error(error, plan.field_type, field_details_list, field_path)
            return None
        if isinstance(completed, dict):
            return completed

        async def await_completed() -> Any:
            try:
                return await completed
            except Exception as error:
                self.handle_field_error(error, plan.field_type, field_details_list, field_path)
                return None

        return await_completed()

    def _list(
        self,
        plan: Plain,
        source: Any,
        field_details_list: Any,
        path: Path | None,
        response_name: str,
        parent_type: GraphQLObjectType,
        position_context: Any,
    ) -> Any:
        """A plain list-of-objects field's completed value, or Undefined where graphql-core must
        answer (anything but a list of objects that are there, or a list streamed or deferred).
        Each item is completed as graphql-core's `complete_list_item_value` would, with the
        subfields collected once for the whole list."""
        items = _attribute(plan, source)
        if type(items) is not list:
            return items if items is None or items is Undefined else Undefined
        is_awaitable = self.is_awaitable
        checked: set[type] = set()  # an item of a type seen is plain too: a type decides both
        for item in items:
            kind = type(item)
            if kind in checked:
                continue
            if item is None or isinstance(item, Exception) or is_awaitable(item):
                return Undefined
            if not hasattr(kind, "__await__") and kind is not GeneratorType:
                checked.add(kind)
        item_type: GraphQLObjectType = plan.type  # type: ignore[assignment]
        field_path = Path(path, response_name, parent_type.name)
        if self.get_stream_usage(field_details_list, field_path) is not None:
            return Undefined
        steps = self._sub_steps(item_type, field_details_list)
        if steps is None:
            return Undefined
        declared = plan.items
        assert declared is not None  # a list's plan
        handle_field_error = self.handle_field_error
        execute = self._execute
        leaves = steps.leaves
        completed: list[Any] = []
        awaitable_indices: list[int] = []
        try:
            for index, item in enumerate(items):
                if leaves is not None:  # no path needed unless the loop must answer
                    read = _read_leaves(leaves, item)
                    if read is not None:
                        completed.append(read)
                        continue
                fields: Any
                item_path = Path(field_path, index, None)
                try:
                    fields = execute(item_type, steps, item, item_path, position_context)
                except Exception as error:
                    handle_field_error(error, declared, field_details_list, item_path)
                    fields = None
                if fields is not None and not isinstance(fields, dict):
                    fields = self._awaited_item(fields, declared, field_details_list, item_path)
                    awaitable_indices.append(index)
                completed.append(fields)
        except Exception as error:
            if awaitable_indices:
                self.settle_in_background([completed[i] for i in awaitable_indices])
            handle_field_error(error, plan.field_type, field_details_list, field_path)
            return None
        if not awaitable_indices:
            return completed

        async def await_items() -> Any:
            try:
                awaited = await gather_with_cancel(*(completed[i] for i in awaitable_indices))
            except Exception as error:
                handle_field_error(error, plan.field_type, field_details_list, field_path)
                return None
            for index, value in zip(awaitable_indices, awaited, strict=True):
                completed[index] = value
            return completed

        return await_items()

    async def _awaited_item(
        self, fields: Any, declared: Any, field_details_list: Any, item_path: Path
    ) -> Any:
        try:
            return await fields
        except Exception as error:
            self.handle_field_error(error, declared, field_details_list, item_path)
            return None

    def complete_value(
        self,
        return_type: GraphQLOutputType,
        field_details_list: Any,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[Any]:
        # An object that is there (a list's item, a resolver's result): its fields, without
        # graphql-core's four steps to reach them.
        if (
            self.direct
            and result is not None
            and result is not Undefined
            and not isinstance(result, Exception)
        ):
            inner = return_type.of_type if type(return_type) is GraphQLNonNull else return_type
            if type(inner) is GraphQLObjectType and inner.is_type_of is None:
                completed = self._fields_of(
                    inner, field_details_list, result, path, position_context
                )
                if completed is not Undefined:
                    return completed
        return super().complete_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _fields_of(
        self,
        object_type: GraphQLObjectType,
        field_details_list: Any,
        value: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        """An object's executed fields, or Undefined when part of it is deferred (graphql-core
        answers that)."""
        steps = self._sub_steps(object_type, field_details_list)
        if steps is None:
            return Undefined
        return self._execute(object_type, steps, value, path, position_context)


def _attribute(plan: Plain, source: Any) -> Any:
    """A plain field's value: None for a null in a nullable field, Undefined where graphql-core
    must answer (reading it raised, or a null in a non-null field)."""
    try:
        value = getattr(source, plan.attribute)
    except Exception:
        return Undefined
    if value is None and plan.non_null:
        return Undefined
    return value


def _varies(
    operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]
) -> bool:
    """Whether the fields an operation selects can differ from one request to the next: a
    directive with a variable argument (`@include(if: $flag)`), or a fragment with variables."""
    if any(fragment.variable_definitions for fragment in fragments.values()):
        return True
    nodes: list[Any] = [operation, *fragments.values()]
    while nodes:
        node = nodes.pop()
        for directive in getattr(node, "directives", None) or ():
            if any(_has_variable(argument.value) for argument in directive.arguments or ()):
                return True
        selection_set = getattr(node, "selection_set", None)
        if selection_set is not None:
            nodes.extend(selection_set.selections)
    return False


def _has_variable(value: Any) -> bool:
    if isinstance(value, VariableNode):
        return True
    if isinstance(value, ListValueNode):
        return any(_has_variable(item) for item in value.values)
    if isinstance(value, ObjectValueNode):
        return any(_has_variable(field.value) for field in value.fields)
    return False


def _read_record(leaves: Leaves, value: Any) -> dict[str, Any] | None:
    """A record's (a named tuple's) leaves; anything else takes the field-by-field loop."""
    return _read_leaves(leaves, value) if isinstance(value, tuple) else None


def _read_leaves(leaves: Leaves, source: Any) -> dict[str, Any] | None:
    """The serialized values of an all-leaf selection, or None at the first value that is not
    plainly there (an error, a null in a non-null field): the field-by-field loop, which reads
    them again, then answers as graphql-core does."""
    try:
        values = leaves.read(source)
        results: dict[str, Any] = {}
        for name, coerce, non_null, value in zip(
            leaves.names, leaves.coercers, leaves.non_null, values, strict=True
        ):
            if value is None:
                if non_null:
                    return None
                results[name] = None
            else:
                result = coerce(value)
                if result is None:
                    return None
                results[name] = result
        return results
    except Exception:
        return None
