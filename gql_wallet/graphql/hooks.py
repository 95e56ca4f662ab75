"""Strawberry's extension hooks, looked up once per extension class instead of per request.

Strawberry's runner inspects every extension's hooks on every request and wraps each in a new
context-manager function (`inspect`, `functools.wraps`): four times per operation. Here the
wrapper is made once per extension class and hook, and bound to each request's extension
instance with `partial`. The hooks run exactly as Strawberry runs them (same order, same
context managers), for our extensions and for any a user adds.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any, ClassVar

from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    OperationContextManager,
    ParsingContextManager,
    ValidationContextManager,
    WrappedHook,
)
from strawberry.extensions.runner import SchemaExtensionsRunner

# A hook as a context-manager factory taking the extension, and whether it is async.
_Made = tuple[Callable[[SchemaExtension], Any], bool] | None


def make_hook(hook_fn: Any, name: str) -> tuple[Callable[[SchemaExtension], Any], bool]:
    """The context-manager factory of one hook, as Strawberry's `get_hook` makes it."""
    if inspect.isgeneratorfunction(hook_fn):
        return contextlib.contextmanager(hook_fn), False
    if inspect.isasyncgenfunction(hook_fn):
        return contextlib.asynccontextmanager(hook_fn), True
    if not callable(hook_fn):
        raise ValueError(f"Hook {name} must be callable, received {hook_fn!r}")
    if inspect.iscoroutinefunction(hook_fn):

        @contextlib.asynccontextmanager
        async def awaited(extension: SchemaExtension) -> AsyncIterator[None]:
            await hook_fn(extension)
            yield

        return awaited, True

    @contextlib.contextmanager
    def called(extension: SchemaExtension) -> Iterator[None]:
        hook_fn(extension)
        yield

    return called, False


class _MadeOnce:
    HOOK_NAME: str
    default_hook: Any
    made: ClassVar[dict[type[SchemaExtension], _Made]]

    def get_hook(self, extension: SchemaExtension) -> WrappedHook | None:
        kind = type(extension)
        try:
            made = self.made[kind]
        except KeyError:
            hook_fn = getattr(kind, self.HOOK_NAME)
            made = None
            if hook_fn is not self.default_hook:
                made = make_hook(hook_fn, f"{self.HOOK_NAME} on {kind.__name__}")
            self.made[kind] = made
        if made is None:
            return None
        factory, is_async = made
        return WrappedHook(extension=extension, hook=partial(factory, extension), is_async=is_async)


class _Operation(_MadeOnce, OperationContextManager):
    made: ClassVar[dict[type[SchemaExtension], _Made]] = {}


class _Validation(_MadeOnce, ValidationContextManager):
    made: ClassVar[dict[type[SchemaExtension], _Made]] = {}


class _Parsing(_MadeOnce, ParsingContextManager):
    made: ClassVar[dict[type[SchemaExtension], _Made]] = {}


class _Executing(_MadeOnce, ExecutingContextManager):
    made: ClassVar[dict[type[SchemaExtension], _Made]] = {}


class HookRunner(SchemaExtensionsRunner):
    """Strawberry's runner, with each hook's wrapper made once per extension class."""

    def operation(self) -> OperationContextManager:
        return _Operation(self.extensions)

    def validation(self) -> ValidationContextManager:
        return _Validation(self.extensions)

    def parsing(self) -> ParsingContextManager:
        return _Parsing(self.extensions)

    def executing(self) -> ExecutingContextManager:
        return _Executing(self.extensions)
