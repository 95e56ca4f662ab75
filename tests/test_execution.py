"""The executor (gql_wallet/graphql/execution.py) answers exactly like Strawberry's own: the same
documents, run by both on the same data, get identical results, errors included; plain scalar
fields are really read directly; and an extension that resolves fields still sees every one."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import pytest
import strawberry
from graphql import FragmentDefinitionNode, OperationDefinitionNode, parse
from graphql.execution import Executor
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.base import StrawberryObjectDefinition

from gql_wallet.app import serving
from gql_wallet.graphql.execution import WalletExecutor, _varies, plain_field
from gql_wallet.graphql.schema import build_schema
from gql_wallet.repository import TransactionRecord, WalletRecord
from tests.conftest import Env

STOCK = StrawberryGraphQLCoreExecutionContext

WALLET_LEAVES = ["id", "createdAt", "modifiedAt", "customerId", "balance", "currency"]
ENTRY_LEAVES = [
    "id",
    "createdAt",
    "type",
    "amount",
    "balanceAfter",
    "description",
    "reference",
    "idempotencyKey",
]


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many fields graphql-core resolved itself (the rest were read directly)."""
    count = [0]
    execute_field = Executor.execute_field

    def counted(self: Executor, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return execute_field(self, *args, **kwargs)

    monkeypatch.setattr(Executor, "execute_field", counted)
    return count


def _selection(rng: random.Random, leaves: list[str]) -> str:
    fields = []
    for _ in range(rng.randint(1, 5)):
        name = rng.choice([*leaves, "__typename"])
        alias = rng.choice([None, None, "a", "b", name])
        fields.append(f"{alias}: {name}" if alias else name)
    if rng.random() < 0.3:
        fields.append(
            f"... on {'CustomerWallet' if leaves is WALLET_LEAVES else 'WalletTransaction'}"
            f" {{ {rng.choice(leaves)} }}"
        )
    if rng.random() < 0.3:
        fields.append(f"{rng.choice(leaves)} @include(if: $flag)")
    return " ".join(fields)


def generated_documents(count: int) -> list[str]:
    rng = random.Random(16)
    documents = []
    for _ in range(count):
        wallet = _selection(rng, WALLET_LEAVES)
        if rng.random() < 0.6:
            first = rng.choice([1, 3, 10, 0, 1000])  # 0 and 1000 are refused with an error
            entry = _selection(rng, ENTRY_LEAVES)
            if rng.random() < 0.3:
                entry += f" wallet {{ {_selection(rng, WALLET_LEAVES)} }}"
            wallet += (
                f" transactions(first: {first}) {{ edges {{ cursor node {{ {entry} }} }} "
                "pageInfo { hasNextPage endCursor startCursor hasPreviousPage } }"
            )
        root = rng.choice(
            [
                f'customerWallet(customerId: "cus_1", currency: "usd") {{ {wallet} }}',
                f'customerWallets(customerId: "cus_{rng.randint(1, 3)}") {{ {wallet} }}',
                f"wallets(first: {rng.choice([2, 5, 101])}) {{ edges {{ cursor node {{ {wallet} }} }}"
                " pageInfo { hasNextPage } }",
            ]
        )
        documents.append(f"query Q($flag: Boolean!) {{ {root} }}")
    return documents


async def _seed(env: Env) -> None:
    for i in range(1, 4):
        await env.api.top_up(f"cus_{i}", 1000 * i, f"seed-{i}")
    await env.api.top_up("cus_1", 5, "t-1", currency="eur")
    for j in range(4):
        await env.api.charge("cus_1", 7, f"c-{j}", description=f"usage {j}")
        await env.api.top_up("cus_1", 11, f"u-{j}", reference=f"inv_{j}")


async def test_generated_documents_answer_alike_with_both_executors(
    env: Env, resolved: list[int]
) -> None:
    await _seed(env)
    schema = serving(env.app).endpoint.schema
    assert schema.execution_context_class is WalletExecutor
    by_stock = by_ours = 0
    for query in generated_documents(150):
        for flag in (True, False):
            schema.execution_context_class = STOCK
            before = resolved[0]
            expected = await env.api.answer(query, {"flag": flag})
            by_stock += resolved[0] - before
            schema.execution_context_class = WalletExecutor
            before = resolved[0]
            assert await env.api.answer(query, {"flag": flag}) == expected, query
            by_ours += resolved[0] - before
    # Most fields are plain: graphql-core resolves only the others, and those in errors.
    assert by_ours * 3 < by_stock


async def test_an_operation_collects_its_subfields_once_for_every_request(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subfield steps of an operation are shared by its requests, unless a directive reads
    a variable: then each request collects its own, and each answers its own variables."""
    await _seed(env)
    collected = [0]
    collect = Executor.collect_subfields

    def counted(self: Executor, *args: Any) -> Any:
        collected[0] += 1
        return collect(self, *args)

    monkeypatch.setattr(Executor, "collect_subfields", counted)
    page = (
        'query($c: String!) { customerWallet(customerId: $c, currency: "usd") { balance '
        "transactions(first: 3) { edges { cursor node { amount } } pageInfo { hasNextPage } } } }"
    )
    answers = []
    for customer in ("cus_1", "cus_2", "cus_1"):
        before = collected[0]
        answers.append(await env.api(page, {"c": customer}))
        if customer == "cus_1" and answers[:-1]:
            assert collected[0] == before  # the third request: nothing collected again
    assert answers[0] == answers[2] != answers[1]
    assert len(answers[0]["customerWallet"]["transactions"]["edges"]) == 3
    flagged = (
        'query($c: String!, $f: Boolean!) { customerWallet(customerId: $c, currency: "usd") { '
        "balance transactions(first: 2) { edges { node { amount @include(if: $f) id } } } } }"
    )
    shown = await env.api(flagged, {"c": "cus_1", "f": True})
    hidden = await env.api(flagged, {"c": "cus_1", "f": False})
    before = collected[0]
    assert await env.api(flagged, {"c": "cus_1", "f": True}) == shown
    assert collected[0] > before  # collected per request: its fields follow $f
    shown_nodes = [e["node"] for e in shown["customerWallet"]["transactions"]["edges"]]
    hidden_nodes = [e["node"] for e in hidden["customerWallet"]["transactions"]["edges"]]
    assert all("amount" in n for n in shown_nodes)
    assert not any("amount" in n for n in hidden_nodes)


@pytest.mark.parametrize(
    ("document", "varies"),
    [
        ("{ a { b } }", False),
        ("{ a @include(if: true) { b @skip(if: false) } }", False),
        ("query($f: Boolean!) { a { b @include(if: $f) } }", True),
        ("query($f: Boolean!) { ...F } fragment F on Query { a @skip(if: $f) { b } }", True),
        ("query($f: Boolean!) { a { ... @include(if: $f) { b } } }", True),
        ("query($f: Boolean!) { ...F @include(if: $f) } fragment F on Query { a }", True),
    ],
)
def test_which_operations_select_by_their_variables(document: str, varies: bool) -> None:
    parsed = parse(document)
    operation = next(d for d in parsed.definitions if isinstance(d, OperationDefinitionNode))
    fragments = {
        d.name.value: d for d in parsed.definitions if isinstance(d, FragmentDefinitionNode)
    }
    assert _varies(operation, fragments) is varies


async def test_a_write_payload_answers_alike_with_both_executors(env: Env) -> None:
    await env.api.top_up("cus_1", 100, "seed")
    query = (
        "mutation($input: ChargeWalletInput!) { chargeWallet(input: $input) { "
        "wallet { id balance currency modifiedAt } transaction { id type amount balanceAfter "
        "description reference idempotencyKey createdAt wallet { balance } } "
        "userErrors { code field message } } }"
    )
    schema = serving(env.app).endpoint.schema
    for amount, key in ((7, "a"), (10**6, "b"), (-1, "c")):
        variables = {"input": {"customerId": "cus_1", "currency": "usd", "amount": amount}}
        variables["input"]["idempotencyKey"] = key
        schema.execution_context_class = WalletExecutor
        first = await env.api.answer(query, variables)  # written once; then replayed by both
        schema.execution_context_class = STOCK
        assert await env.api.answer(query, variables) == first
        schema.execution_context_class = WalletExecutor
        assert await env.api.answer(query, variables) == first


# --- the rare cases, on a schema made for them ----------------------------------------------


@strawberry.type
class Thing:
    name: str
    nickname: str | None
    count: int
    maybe_count: int | None
    fragile: str | None = None

    @strawberry.field
    def computed(self) -> str:
        return self.name.upper()

    @strawberry.field
    async def later(self) -> str:
        if self.count == 2**40:
            raise ValueError("not yet")
        return self.name


@strawberry.type
class Holder:
    thing: Thing
    things: list[Thing]
    loose_things: list[Thing | None]  # an item in error is null, not the list
    maybe_things: list[Thing | None] | None  # holds a null


def _things() -> list[Thing]:
    things = [
        Thing(name="a", nickname=None, count=1, maybe_count=None, fragile="f"),
        Thing(name=None, nickname="n", count=2, maybe_count=3),  # type: ignore[arg-type]
        Thing(name="c", nickname="m", count="x", maybe_count="y"),  # type: ignore[arg-type]
        Thing(name="d", nickname=None, count=2**40, maybe_count=2**40),
    ]
    del things[3].fragile  # reading it raises AttributeError
    return things


@strawberry.type
class ToyQuery:
    @strawberry.field
    def holder(self) -> Holder:
        things = _things()
        return Holder(thing=things[0], things=things, loose_things=things, maybe_things=None)

    @strawberry.field
    def nullable_holder(self) -> Holder | None:
        things = _things()
        return Holder(thing=things[1], things=things, loose_things=[], maybe_things=[None, *things])


def _toy(executor: type, extensions: tuple[Any, ...] = ()) -> strawberry.Schema:
    return strawberry.Schema(
        query=ToyQuery, execution_context_class=executor, extensions=list(extensions)
    )


TOY_DOCUMENTS = [
    "{ holder { thing { name nickname count maybeCount computed } } }",
    "{ holder { things { name } } }",  # a null in a non-null field: the error propagates
    "{ holder { things { nickname count } } }",  # "x" is no Int, 2**40 is out of its range
    "{ holder { things { maybeCount a: maybeCount nickname } } }",
    "{ nullableHolder { things { name count } } }",
    "{ nullableHolder { thing { name nickname } } holder { thing { count } } }",
    "{ holder { things { __typename computed nickname } } }",
    "{ holder { things { fragile name } } }",
    "{ nullableHolder { things { fragile } } }",
    "{ holder { looseThings { name count } } }",
    "{ holder { looseThings { later nickname } maybeThings { name } } }",
    "{ holder { things { later } } }",  # an awaited error propagates to the holder
    "{ holder { things { maybeCount later } } thing { later } }",
    "{ nullableHolder { maybeThings { nickname later } looseThings { name } } }",
    "{ nullableHolder { a: things { nickname } b: looseThings { count } } }",
]


@pytest.mark.parametrize("document", TOY_DOCUMENTS)
async def test_errors_and_nulls_are_graphql_cores_own(document: str) -> None:
    expected = await _toy(STOCK).execute(document)
    got = await _toy(WalletExecutor).execute(document)
    assert got.data == expected.data
    assert [e.formatted for e in got.errors or []] == [e.formatted for e in expected.errors or []]


def test_only_strawberrys_basic_scalar_fields_are_read_directly() -> None:
    schema = build_schema()._schema
    wallet = schema.type_map["CustomerWallet"].fields  # type: ignore[union-attr]
    assert plain_field(wallet["balance"]) is not None
    assert plain_field(wallet["createdAt"]) is not None
    assert plain_field(wallet["transactions"]) is None  # a resolver with arguments
    edge = schema.type_map["WalletTransactionEdge"].fields  # type: ignore[union-attr]
    assert plain_field(edge["cursor"]) is not None
    assert plain_field(edge["node"]) is not None  # an object read as an attribute
    toy = _toy(WalletExecutor)._schema.type_map["Thing"].fields  # type: ignore[union-attr]
    assert plain_field(toy["computed"]) is None


class Recorder(SchemaExtension):
    seen: ClassVar[list[str]] = []

    def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        Recorder.seen.append(f"{info.parent_type.name}.{info.field_name}")
        return _next(root, info, *args, **kwargs)


async def test_an_extension_that_resolves_fields_sees_every_one(resolved: list[int]) -> None:
    document = "{ holder { thing { name nickname count computed } } }"
    seen = {}
    counts = {}
    for executor in (STOCK, WalletExecutor):
        Recorder.seen = []
        before = resolved[0]
        result = await _toy(executor, (Recorder,)).execute(document)
        assert result.errors is None
        seen[executor] = list(Recorder.seen)
        counts[executor] = resolved[0] - before
    assert seen[WalletExecutor] == seen[STOCK]
    assert "Thing.nickname" in seen[STOCK]
    assert counts[WalletExecutor] == counts[STOCK] == 6


@pytest.mark.parametrize(
    ("type_name", "record"),
    [("CustomerWallet", WalletRecord), ("WalletTransaction", TransactionRecord)],
)
def test_the_api_types_read_their_records_attributes(type_name: str, record: type) -> None:
    # Resolvers hand the repository's records to these types as they are (from_record).
    definition = build_schema().get_type_by_name(type_name)
    assert isinstance(definition, StrawberryObjectDefinition)
    plain = [f.python_name for f in definition.fields if f.base_resolver is None]
    assert plain and set(plain) <= set(record._fields), set(plain) - set(record._fields)
