"""Strawberry's extension hooks, looked up once per extension class instead of per request.

Strawberry's runner inspects every extension's hooks on every request and wraps each in a new
context-manager function (`inspect`, `functools.wraps`): four times per operation. Here the
wrapper is made once per extension class and hook, and bound to each request's extension
instance with `partial`. The hooks run as Strawberry runs them (entered in the extensions'
order, left in reverse, an error thrown into each), for our extensions and for any a user adds.

It rests on Strawberry's extension contract only: `Schema.create_extensions_runner`, the
runner's four stage methods, and the `SchemaExtension` hook names and kinds;
tests/test_hooks.py compares it with Strawberry's own runner on the pinned version.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner

# A hook as a context-manager factory taking the extension, and whether it is async; None when
# the extension class leaves that hook as SchemaExtension has it.
_Made = tuple[Callable[[SchemaExtension], Any], bool] | None
_made: dict[tuple[str, type[SchemaExtension]], _Made] = {}


def _make(hook_fn: Any, name: str) -> tuple[Callable[[SchemaExtension], Any], bool]:
    """The context-manager factory of one hook, of each kind Strawberry accepts."""
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


def _hook(name: str, kind: type[SchemaExtension]) -> _Made:
    try:
        return _made[name, kind]
    except KeyError:
        hook_fn = getattr(kind, name)
        made = None
        if hook_fn is not getattr(SchemaExtension, name):
            made = _make(hook_fn, f"{name} on {kind.__name__}")
        _made[name, kind] = made
        return made


class _Stage:
    """One stage's hooks of a request's extensions, as one context manager. Like Strawberry's,
    it never suppresses an exception, whatever a hook returns."""

    def __init__(self, name: str, extensions: list[SchemaExtension]) -> None:
        self.name = name
        self.hooks = []
        for extension in extensions:
            made = _hook(name, type(extension))
            if made is not None:
                self.hooks.append((partial(made[0], extension), made[1], extension))
        self.stack: contextlib.ExitStack | None = None
        self.async_stack: contextlib.AsyncExitStack | None = None

    def __enter__(self) -> None:
        self.stack = stack = contextlib.ExitStack()
        stack.__enter__()
        for hook, is_async, extension in self.hooks:
            if is_async:
                raise RuntimeError(
                    f"SchemaExtension hook {extension}.{self.name} failed to complete "
                    "synchronously."
                )
            stack.enter_context(hook())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.stack is not None
        self.stack.__exit__(kind, error, tb)

    async def __aenter__(self) -> None:
        self.async_stack = stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        for hook, is_async, _ in self.hooks:
            if is_async:
                await stack.enter_async_context(hook())
            else:
                stack.enter_context(hook())

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.async_stack is not None
        await self.async_stack.__aexit__(kind, error, tb)


_OPERATION = SchemaExtension.on_operation.__name__
_VALIDATION = SchemaExtension.on_validate.__name__
_PARSING = SchemaExtension.on_parse.__name__
_EXECUTING = SchemaExtension.on_execute.__name__


class HookRunner(SchemaExtensionsRunner):
    """Strawberry's runner, with each hook's wrapper made once per extension class. Strawberry
    only enters what the stage methods return, so they return `_Stage`s."""

    def operation(self) -> Any:
        return _Stage(_OPERATION, self.extensions)

    def validation(self) -> Any:
        return _Stage(_VALIDATION, self.extensions)

    def parsing(self) -> Any:
        return _Stage(_PARSING, self.extensions)

    def executing(self) -> Any:
        return _Stage(_EXECUTING, self.extensions)
