"""Statements sent on the database driver's own connection, past SQLAlchemy's execution layers."""

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections import namedtuple
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    DateTime,
    Dialect,
    Select,
    Uuid,
    bindparam,
    cast,
    func,
    select,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.types import TypeEngine

from gql_wallet.db import DriverConnection, OnDemandConnection, checked_out
from gql_wallet.repository.records import utc


@dataclass(frozen=True)
class _DriverForm:
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # (name, bind processor)
    # Values the statement itself binds (SQLite's OFFSET 0 after a bound LIMIT).
    constants: dict[str, Any]
    # (column index, result processor) of the columns that have one; None when none has
    # (asyncpg's values are already the Python ones), so that each row is made in one step.
    results: tuple[tuple[int, Callable[[Any], Any]], ...] | None
    row: Any  # a namedtuple of the selected columns' names, read like SQLAlchemy's Row


def _driver_form(statement: Any, row: Any, dialect: Dialect) -> _DriverForm:
    """The SQL text SQLAlchemy compiles for `statement`, with the type processors it would
    apply to each bound value and to each column of the result."""
    compiled = statement.compile(dialect=dialect)
    binds = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in compiled.positiontup or ()
    )
    results = tuple(
        (index, process)
        for index, column in enumerate(statement.exported_columns)
        if (process := _result_processor(column.type, dialect)) is not None
    )
    constants = {
        name: compiled.binds[name].value
        for name in compiled.positiontup or ()
        if not compiled.binds[name].required and compiled.binds[name].value is not None
    }
    return _DriverForm(compiled.string, binds, constants, results or None, row)


@functools.lru_cache(maxsize=4096)
def _uuid_from_text(value: str | uuid.UUID | None) -> uuid.UUID | None:
    return value if value is None or isinstance(value, uuid.UUID) else uuid.UUID(value)


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    process: Callable[[Any], Any] | None = type_.dialect_impl(dialect).result_processor(
        dialect, None
    )
    if process is not None and isinstance(type_, Uuid):
        # SQLite stores UUIDs as text: the same organizations' and wallets' IDs come back on
        # every write and lookup, and a UUID is immutable, so each text is parsed once.
        return _uuid_from_text
    if process is None or not (isinstance(type_, DateTime) and type_.timezone):
        return process  # asyncpg's timestamps with time zone are in UTC already

    def in_utc(value: Any) -> Any:
        value = process(value)
        return value if value is None else utc(value)

    return in_utc


def _driver_arguments(form: _DriverForm, parameters: dict[str, Any]) -> list[Any]:
    if form.constants:
        parameters = {**form.constants, **parameters}
    return [
        parameters[name] if process is None else process(parameters[name])
        for name, process in form.binds
    ]


def _driver_rows(form: _DriverForm, rows: Any) -> list[Any]:
    results, make = form.results, form.row._make
    if results is None:
        return [make(row) for row in rows]
    made = []
    for row in rows:
        values = list(row)
        for index, process in results:
            values[index] = process(values[index])
        made.append(make(values))
    return made


class DriverRead:
    """A hot SELECT sent on the driver's own connection, past SQLAlchemy's execution layers.

    On the two reads of every lookup (the API key, the customer's wallets) SQLAlchemy's execute
    path cost more CPU than the query, and through aiosqlite it made four hops to the
    connection's thread per statement (cursor, execute, fetchall, cursor close) where one does.
    SQLAlchemy still compiles the statement (once per dialect) and its type processors convert
    every value both ways, so the values are exactly those `conn.execute` returns, but that a
    timestamp with time zone is always in UTC (SQLite's come back without their offset).

    Run it only on a connection from `Database.driver_connection` or a `db.OnDemandConnection`:
    no SQLAlchemy transaction is open on it, so the statement is its own implicit transaction,
    as in `Database.read_connection`. A point read on SQLite, on an on-demand connection, takes
    no pooled connection at all (its database's `SqliteReader`).
    """

    def __init__(
        self,
        statement: Select[Any] | TextualSelect,
        *,
        point_read: bool = False,
        record: Any = None,
    ) -> None:
        self.statement = statement
        # An indexed SELECT of a few rows, which on SQLite runs on the event loop's thread.
        self.point_read = point_read
        names = tuple(column.name for column in statement.selected_columns)
        # `record`: a named tuple of exactly the selected columns, made from each row at once.
        if record is not None and record._fields != names:
            raise ValueError(f"{record.__name__} has the fields {record._fields}, not {names}")
        self._row = record or namedtuple("DriverRow", names)
        self._forms: dict[str, _DriverForm] = {}

    def _form(self, dialect: Dialect) -> _DriverForm:
        form = self._forms.get(dialect.name)
        if form is None:
            form = self._forms[dialect.name] = _driver_form(self.statement, self._row, dialect)
        return form

    async def fetchall(self, conn: DriverConnection, parameters: dict[str, Any]) -> list[Any]:
        form = self._form(conn.dialect)
        arguments = _driver_arguments(form, parameters)
        rows: Any = None
        reader = conn.reader if self.point_read and isinstance(conn, OnDemandConnection) else None
        if reader is not None:
            rows = reader.read(form.sql, arguments)  # on this thread (db.SqliteReader)
        if rows is None:
            rows = await self._driver_fetch(conn, form.sql, arguments)
        return _driver_rows(form, rows)

    @staticmethod
    async def _driver_fetch(on: DriverConnection, sql: str, arguments: list[Any]) -> Any:
        conn = await checked_out(on)
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            if conn.dialect.name == "sqlite":
                return await driver.execute_fetchall(sql, arguments)  # one thread hop
            return await driver.fetch(sql, *arguments)
        except BaseException:
            # SQLAlchemy would have checked the error for a lost connection and dropped it from
            # the pool; without it here, no connection that failed a statement is used again.
            await conn.invalidate()
            raise


class DriverWrite:
    """A statement of a SQLite top-up or charge, sent on sqlite3's own connection in the writer
    thread (`db.sqlite.SqliteWriterQueue`), past SQLAlchemy's execution layers.

    The writer thread holds the database's write lock while it runs a group's writes, so the
    CPU each write spends there bounds how many writes per second the file takes, and
    `Connection.execute` spends more of it than SQLite itself (bench/PROFILE.md). As with `DriverRead`, SQLAlchemy still compiles
    the statement (once) and its type processors convert every value both ways, so the rows are
    the values `conn.execute` returns. On any other connection (PostgreSQL, or aiosqlite's for
    an in-memory database) the statement goes through `conn.execute` unchanged.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        names = [column.name for column in statement.exported_columns]
        self._row = namedtuple("DriverRow", names)  # type: ignore[misc]
        self._form: _DriverForm | None = None

    def execute(self, conn: Connection, parameters: dict[str, Any]) -> list[Any]:
        """The statement's rows (none without RETURNING), in the connection's transaction."""
        driver = conn.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            return list(conn.execute(self.statement, parameters))
        form = self._form
        if form is None:
            form = self._form = _driver_form(self.statement, self._row, conn.dialect)
        return _driver_rows(form, driver.execute(form.sql, _driver_arguments(form, parameters)))


class GroupedPages:
    """Several requests' keyset pages in one statement, for `Database.run_grouped`: `page(*values)`
    builds one request's page (its conditions, order and LIMIT); here its values come from one
    array per parameter (bound as `<name>s`), joined LATERAL, so each page runs on its index as
    it would alone. `order(page)` orders the rows of a page as `page` does. Each request's page is
    read for it, the same page asked twice included: a group saves round trips, it does not
    merge requests."""

    def __init__(
        self,
        page: Callable[..., Select[Any]],
        parameters: Sequence[tuple[str, TypeEngine[Any]]],
        order: Callable[[Any], Any],
    ) -> None:
        self.names = tuple(name for name, _ in parameters)
        asked = (
            func.unnest(*(cast(bindparam(f"{name}s"), ARRAY(kind)) for name, kind in parameters))
            .table_valued(*self.names, with_ordinality="i")
            .render_derived(name="q")
        )
        each = page(*(asked.c[name] for name in self.names)).lateral("page")
        self.read = DriverRead(
            select(asked.c.i, *each.c)
            .select_from(asked.join(each, true()))
            .order_by(asked.c.i, order(each.c))
        )

    async def __call__(
        self, conn: AsyncConnection, pages: list[tuple[Any, ...]]
    ) -> list[list[Any]]:
        arrays = {f"{name}s": [page[k] for page in pages] for k, name in enumerate(self.names)}
        found: list[list[Any]] = [[] for _ in pages]
        for row in await self.read.fetchall(conn, arrays):
            found[row.i - 1].append(row)
        return found


def keyed_reads(
    alone: DriverRead, grouped: DriverRead, key: str
) -> tuple[
    Callable[[DriverConnection, Any], Awaitable[Any]],
    Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
]:
    """The two forms of a point read by `key` (for `Database.run_grouped`): one row (or None)
    alone, and the rows of several requests' keys in one statement (`grouped` binds `<key>s`),
    answered in the requests' order."""

    async def read_alone(conn: DriverConnection, value: Any) -> Any:
        rows = await alone.fetchall(conn, {key: value})
        return rows[0] if rows else None

    async def read_grouped(conn: AsyncConnection, values: list[Any]) -> list[Any]:
        rows = await grouped.fetchall(conn, {f"{key}s": sorted(set(values))})
        found = {getattr(row, key): row for row in rows}
        return [found.get(value) for value in values]

    return read_alone, read_grouped
