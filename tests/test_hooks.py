"""Extension hooks made once per extension class (graphql/hooks.py) run as Strawberry's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import strawberry
from strawberry.extensions import SchemaExtension

from gql_wallet.graphql.hooks import HookRunner
from gql_wallet.graphql.schema import WalletSchema


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> int:
        return 1

    @strawberry.field
    def broken(self) -> int:
        raise ValueError("broken")


class EveryKind(SchemaExtension):
    """One hook of each kind Strawberry accepts, each recording what it saw."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_operation(self) -> Iterator[None]:  # a generator
        self.log.append(f"operation start {self.execution_context.query}")
        yield
        result = self.execution_context.result
        self.log.append(f"operation end errors={bool(result and result.errors)}")

    async def on_execute(self) -> AsyncIterator[None]:  # an async generator
        self.log.append("execute start")
        yield
        self.log.append("execute end")

    def on_parse(self) -> None:  # type: ignore[override]  # a plain function: runs first
        self.log.append(f"parse document={self.execution_context.graphql_document is not None}")

    async def on_validate(self) -> None:  # type: ignore[override]  # a coroutine function
        self.log.append("validate")


def _schemas(log: list[str]) -> list[strawberry.Schema]:
    def extension() -> EveryKind:
        return EveryKind(log)

    return [
        strawberry.Schema(query=Query, extensions=[extension]),
        WalletSchema(query=Query, extensions=[extension]),
    ]


@pytest.mark.parametrize("document", ["{ ok }", "{ broken }", "{ nope }", "{"])
async def test_hooks_run_as_strawberry_runs_them(document: str) -> None:
    logs: list[list[str]] = []
    results = []
    log: list[str] = []
    for schema in _schemas(log):
        log.clear()
        for _ in range(2):  # the second time from what the first one made
            result = await schema.execute(document)
        logs.append(list(log))
        results.append((result.data, [error.message for error in result.errors or []]))
    stock, ours = logs
    assert ours == stock
    assert results[1] == results[0]
    assert stock[0] == f"operation start {document}"
    assert stock[-1].startswith("operation end")


def test_the_wallet_schema_runs_its_hooks_through_the_runner() -> None:
    schema = WalletSchema(query=Query)
    runner = schema.create_extensions_runner(None, [])  # type: ignore[arg-type]
    assert isinstance(runner, HookRunner)


async def test_a_hook_that_is_not_callable_fails_as_in_strawberry() -> None:
    class Broken(SchemaExtension):
        on_validate = 3  # type: ignore[assignment]

    for schema in (
        strawberry.Schema(query=Query, extensions=[Broken]),
        WalletSchema(query=Query, extensions=[Broken]),
    ):
        result = await schema.execute("{ ok }")
        assert result.errors and "must be callable" in result.errors[0].message


async def test_an_error_in_one_hook_reaches_another_generator_hook() -> None:
    seen: list[str] = []

    class Catching(SchemaExtension):
        def on_operation(self) -> Iterator[None]:
            try:
                yield
            except RuntimeError as error:
                seen.append(str(error))
                raise

    class Failing(SchemaExtension):
        def on_parse(self) -> None:  # type: ignore[override]
            raise RuntimeError("inside")

    messages = []
    for schema in (
        strawberry.Schema(query=Query, extensions=[Catching, Failing]),
        WalletSchema(query=Query, extensions=[Catching, Failing]),
    ):
        result = await schema.execute("{ ok }")
        messages.append([error.message for error in result.errors or []])
    assert messages == [["inside"], ["inside"]]
    assert seen == ["inside", "inside"]


def test_synchronous_execution_runs_sync_hooks_and_refuses_async_ones() -> None:
    seen: list[str] = []

    class SyncOnly(SchemaExtension):
        def on_operation(self) -> Iterator[None]:
            seen.append("start")
            yield
            seen.append("end")

    class AsyncHook(SchemaExtension):
        async def on_execute(self) -> AsyncIterator[None]:
            yield

    answers = []
    for make in (strawberry.Schema, WalletSchema):
        fine = make(query=Query, extensions=[SyncOnly]).execute_sync("{ ok }")
        refused = make(query=Query, extensions=[AsyncHook]).execute_sync("{ ok }")
        answers.append((fine.data, [error.message for error in refused.errors or []]))
    assert answers[1][0] == answers[0][0] == {"ok": 1}
    assert "failed to complete synchronously" in answers[0][1][0]
    assert "failed to complete synchronously" in answers[1][1][0]
    assert seen == ["start", "end", "start", "end"]
