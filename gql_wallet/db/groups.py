"""PostgreSQL group commit and group reads: the statements of one kind waiting in a process,
sent together."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gql_wallet.db.connections import DriverConnection, checkout
from gql_wallet.db.sqlite import MAX_BATCH, settle
from gql_wallet.logs import logger

_T = TypeVar("_T")


# What a statement that the server refused, or that never reached it, raises. After these the
# group's transaction has written nothing, or (a connection lost during COMMIT) maybe everything,
# which the writes sent again find as their own idempotency keys, `taken`, and replay. Any other
# error comes after the group has committed: its writes get it rather than being sent again.
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, DBAPIError, OSError)


# How often a statement sent alone is tried when it is a deadlock's victim each time.
DEADLOCK_ATTEMPTS = 3


async def _release(held: list[AsyncConnection]) -> None:
    """Give a sender's connection (if it holds one) back to the pool."""
    if held:
        await held.pop().close()


class _Line:
    """The statements of one kind waiting to be sent together, and the senders serving them."""

    def __init__(
        self,
        send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
        send_one: Callable[[DriverConnection, Any], Awaitable[Any]],
        observe: Callable[[int], None] | None,
        most_senders: int,
    ) -> None:
        self.send_group = send_group
        self.send_one = send_one
        self.observe = observe or (lambda _size: None)
        self.most_senders = most_senders
        self.waiting: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.senders = 0


class PgGroupCommit:
    """PostgreSQL group commit for writes that are one statement each (a top-up or a charge is
    one call of `gql_wallet_balance_change`), and group reads of one row set by key (the API
    keys, customer sessions, customers' wallets, ledger pages and pages of wallets of the
    requests waiting), on the same lines.

    The writes waiting in a process go to the server together, as one statement that runs each
    write's function call in turn, in one transaction: one round trip and one commit (one WAL
    flush) for the group instead of one per write. Nobody waits for a group to fill: a write
    that finds its line's sender free goes at once, and the writes that arrive while a group is
    in flight form the next group (at most `MAX_BATCH`). Balance changes have one sender per
    process (larger groups, fewer commits); reads, which commit nothing, keep two. Both were
    measured both ways (bench/PROFILE.md).

    Every write keeps its own outcome. The statement runs the same function, with the same
    steps, as a write sent alone; a later write of a group sees the earlier ones (a retry of
    the same idempotency key in one group is `taken`, and replays once the group has
    committed). If the group statement raises (a deadlock with another process, a constraint,
    a lost connection), its transaction wrote nothing, and each write of the group is sent
    again alone, so one bad write fails only itself; a write alone that is a deadlock's victim
    is sent again (`_send_alone`). Nobody hears of success before the group
    has committed. A caller cancelled while its write waits is taken out of the line; once its
    group has been sent, the write completes, and a retry with the same key replays it.

    The senders use a pool of their own (`engines.GROUP_CONNECTIONS`), so that requests
    holding every connection of the main pool can never starve them.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lines: dict[Any, _Line] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(
        self,
        send_group: Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]],
        send_one: Callable[[DriverConnection, Any], Awaitable[_T]],
        item: Any,
        observe: Callable[[int], None] | None,
        senders: int,
    ) -> _T:
        line = self.lines.get(send_group)
        if line is None:
            line = self.lines[send_group] = _Line(send_group, send_one, observe, senders)
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        line.waiting.append((item, future))
        if line.senders < line.most_senders:
            line.senders += 1
            task = asyncio.get_running_loop().create_task(self._serve(line))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _serve(self, line: _Line) -> None:
        """One sender: groups from the line until it is empty.

        The sender keeps its pooled connection from one group to the next while the line has
        work (a checkout and a checkin cost about as much CPU as the group's statement), and
        gives it back when the line is empty or a statement on it failed."""
        group: list[tuple[Any, asyncio.Future[Any]]] = []
        held: list[AsyncConnection] = []  # the sender's connection, once it has one
        try:
            while line.waiting:
                group = []
                while line.waiting and len(group) < MAX_BATCH:
                    item, future = line.waiting.popleft()
                    if not future.done():  # else its caller was cancelled while it waited
                        group.append((item, future))
                if not group:
                    continue
                try:
                    await self._send(line, group, held)
                except Exception as error:  # not the database's: its callers hear of it
                    await _release(held)
                    for _item, future in group:
                        settle(future, (False, error))
        except BaseException as error:  # cancelled (shutdown): nobody may wait forever
            for _item, future in [*group, *line.waiting]:
                settle(future, (False, error))
            line.waiting.clear()
            raise
        finally:
            line.senders -= 1
            await _release(held)

    async def _send(
        self,
        line: _Line,
        group: list[tuple[Any, asyncio.Future[Any]]],
        held: list[AsyncConnection],
    ) -> None:
        if len(group) > 1:
            try:
                if not held:
                    held.append(await checkout(self.engine))
                results = await line.send_group(held[0], [item for item, _ in group])
            except _DATABASE_ERRORS:
                await _release(held)  # the statement's connection may be the trouble
                logger.warning(
                    "a group of %d statements failed; sending each alone", len(group), exc_info=True
                )
            else:
                line.observe(len(group))
                for (_item, future), result in zip(group, results, strict=True):
                    settle(future, (True, result))
                return
        for item, future in group:
            try:
                outcome: tuple[bool, Any] = (True, await self._send_alone(line, item, held))
            except Exception as error:
                await _release(held)
                outcome = (False, error)
            else:
                line.observe(1)
            settle(future, outcome)

    async def _send_alone(self, line: _Line, item: Any, held: list[AsyncConnection]) -> Any:
        """One statement, its own transaction. A deadlock is sent again: PostgreSQL rolled the
        whole transaction back. Within a group a call's key claim comes after the wallet locks
        of the calls before it, so a group and a write of a duplicate key, which claims the key
        before the wallet, can each wait for the other."""
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            if not held:
                held.append(await checkout(self.engine))
            try:
                return await line.send_one(held[0], item)
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
                logger.warning("a statement was a deadlock's victim; sending it again")
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Let the groups in flight finish, then close the senders' connections."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.engine.dispose()
