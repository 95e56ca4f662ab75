"""Exports of an organization's ledger: what a period's export holds, how it is refused, and
its two formats. The command line (`gql-wallet export`) and HTTP (`GET /exports/transactions`)
both stream `Export.chunks()`.

An export is one snapshot: it is read in one read transaction (REPEATABLE READ on PostgreSQL,
a read transaction on SQLite), so writes committed while it streams are not in it, and every
entry committed before it began (within the period) is."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

import iso4217
import orjson

from gql_wallet import money
from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.errors import ErrorCode, UserError
from gql_wallet.money import ARGUMENT, check_period

FORMATS = ("csv", "ndjson")
# The GraphQL names of WalletTransaction's fields, and the wallet's; *Decimal: the amount in
# the currency's major unit, for a spreadsheet.
COLUMNS = (
    "id", "createdAt", "walletId", "customerId", "currency", "type", "amount", "amountDecimal",
    "balanceAfter", "balanceAfterDecimal", "description", "reference", "idempotencyKey",
    "metadata",
)  # fmt: skip
ROWS_PER_CHUNK = 1000
# An export's statement file: one row per wallet with an entry by `to`, which
# `gql-wallet verify --statement` checks against the ledger.
STATEMENT_COLUMNS = (
    "organizationId", "walletId", "customerId", "currency", "from", "to", "openingBalance",
    "total", "closingBalance", "entryCount",
)  # fmt: skip


def check_export(
    start: object, end: object, fmt: str, max_days: int, at: tuple[str, ...] = ARGUMENT
) -> list[UserError]:
    """INVALID_INPUT, naming the argument: a bound that is not a time with its offset, `from`
    after `to`, a period longer than `max_days`, a format other than csv or ndjson."""
    if fmt not in FORMATS:
        return [
            UserError(ErrorCode.INVALID_INPUT, "format must be csv or ndjson.", (*at, "format"))
        ]
    if start is None or end is None:
        name = "from" if start is None else "to"
        return [UserError(ErrorCode.INVALID_INPUT, f"{name} is required.", (*at, name))]
    if errors := check_period(start, end, at):
        return errors
    assert isinstance(start, datetime)  # checked
    assert isinstance(end, datetime)
    if (end - start).total_seconds() > max_days * 86_400:
        return [
            UserError(
                ErrorCode.INVALID_INPUT,
                f"An export covers at most {max_days} days (GQL_WALLET_EXPORT_MAX_DAYS); "
                "split the period.",
                (*at, "to"),
            )
        ]
    return []


def parse_instant(text: str | None) -> datetime | str | None:
    """A bound as given on a command line or in a URL: the instant (money.parse_instant), else
    the text itself, which `check_export` refuses; None if absent."""
    if text is None:
        return None
    found = money.parse_instant(text)
    return text if found is None else found


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point in the currency's major unit (usd 2, jpy 0, bhd 3); 0 for
    a code without a minor unit (gold, special drawing rights)."""
    try:
        return iso4217.Currency(currency.upper()).exponent or 0
    except ValueError:
        return 0


def in_major_units(amount: int, exponent: int) -> str:
    """-1234 cents -> "-12.34": exact, from the integer (never a float)."""
    if exponent == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    digits = str(abs(amount)).rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def _values(row: repo.statements.ExportRow) -> tuple[Any, ...]:
    """An entry's values, in COLUMNS' order."""
    exponent = minor_unit_exponent(row.currency)
    return (
        str(row.id), row.created_at.isoformat(), str(row.wallet_id), row.customer_id,
        row.currency, row.type, row.amount, in_major_units(row.amount, exponent),
        row.balance_after, in_major_units(row.balance_after, exponent), row.description,
        row.reference, row.idempotency_key, row.metadata,
    )  # fmt: skip


class Export:
    """One export, as an async context: entering opens its snapshot; `chunks()` then yields
    its text, a thousand rows at a time. Metadata is its JSON text in a CSV, an object in
    NDJSON."""

    def __init__(
        self,
        database: Database,
        organization_id: uuid.UUID,
        start: datetime,
        end: datetime,
        fmt: str,
    ) -> None:
        self.database = database
        self.organization_id = organization_id
        self.start, self.end, self.format = start, end, fmt
        self.exported = 0
        self._stack = AsyncExitStack()
        self._conn: Any = None

    async def __aenter__(self) -> Export:
        self._conn = await self._stack.enter_async_context(self.database.read_transaction())
        return self

    async def count(self) -> int:
        """How many entries the export holds (a progress bar's total), from its snapshot."""
        return await repo.statements.count_entries(
            self._conn, self.organization_id, self.start, self.end
        )

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def chunks(self) -> AsyncIterator[str]:
        rows = repo.statements.stream_entries(
            self._conn, self.organization_id, self.start, self.end
        )
        batch: list[tuple[Any, ...]] = []
        if self.format == "csv":
            yield self._csv([COLUMNS])
        async for row in rows:
            batch.append(_values(row))
            if len(batch) == ROWS_PER_CHUNK:
                yield self._text(batch)
                batch = []
        if batch:
            yield self._text(batch)

    def _text(self, batch: list[tuple[Any, ...]]) -> str:
        self.exported += len(batch)
        if self.format == "csv":
            return self._csv(batch)
        # The metadata, stored as canonical JSON, goes into the line as it is.
        return "".join(
            orjson.dumps(
                dict(zip(COLUMNS, (*values[:-1], orjson.Fragment(values[-1])), strict=True))
            ).decode()
            + "\n"
            for values in batch
        )

    async def statement(self) -> str:
        """The statement file of this export's period, from the same snapshot (CSV)."""
        found = await repo.statements.wallet_statements(
            self._conn, self.organization_id, self.start, self.end
        )
        period = (self.start.isoformat(), self.end.isoformat())
        rows = [
            (
                str(self.organization_id),
                str(row.wallet_id),
                row.customer_id,
                row.currency,
                *period,
                row.opening,
                row.total,
                row.closing,
                row.entries,
            )
            for row in found
        ]
        return self._csv([STATEMENT_COLUMNS, *rows])

    @staticmethod
    def _csv(rows: list[tuple[Any, ...]]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        return out.getvalue()


async def check_statement(database: Database, rows: list[dict[str, str]]) -> list[str]:
    """What is wrong in a statement file (its rows, as csv.DictReader reads them), checked
    against the ledger in one snapshot: each row's balances at `from` and `to`, the sum and
    number of the entries between, and that no wallet with an entry by `to` is missing."""
    problems: list[str] = []
    periods: dict[tuple[uuid.UUID, datetime, datetime], set[uuid.UUID]] = {}
    async with database.read_transaction() as conn:
        for number, row in enumerate(rows, start=2):  # the header is line 1
            try:
                organization = uuid.UUID(row["organizationId"])
                wallet = uuid.UUID(row["walletId"])
                start, end = datetime.fromisoformat(row["from"]), datetime.fromisoformat(row["to"])
                claimed = [int(row[k]) for k in ("openingBalance", "total", "closingBalance")]
                count = int(row["entryCount"])
            except (KeyError, ValueError, TypeError):
                problems.append(
                    f"line {number}: not a statement row ({', '.join(STATEMENT_COLUMNS)})"
                )
                continue
            periods.setdefault((organization, start, end), set()).add(wallet)
            seq = await repo.statements.wallet_seq_of(conn, wallet)
            if seq is None:
                problems.append(f"line {number}: wallet {wallet}: no such wallet")
                continue
            opening, totals, closing = await repo.statements.statement(conn, seq, start, end)
            ledger = [opening.balance, sum(t.total for t in totals), closing.balance]
            entries = sum(t.entries for t in totals)
            for name, said, found in zip(
                ("openingBalance", "total", "closingBalance", "entryCount"),
                [*claimed, count],
                [*ledger, entries],
                strict=True,
            ):
                if said != found:
                    problems.append(
                        f"line {number}: wallet {wallet}: {name} {said}, the ledger says {found}"
                    )
        for (organization, start, end), listed in periods.items():
            every = await repo.statements.wallet_statements(conn, organization, start, end)
            for missing in sorted(str(r.wallet_id) for r in every if r.wallet_id not in listed):
                problems.append(f"wallet {missing}: has entries by {end.isoformat()} but no row")
    return problems
