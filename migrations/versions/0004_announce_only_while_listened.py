"""balance changes NOTIFY only while some process LISTENs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 04:00:00.000000

PostgreSQL serialises the commits of every transaction that sent a NOTIFY: such a transaction
takes one database-wide lock before its commit record and keeps it until the commit is flushed
(async.c, PreCommit_Notify), so that notifications are queued in commit order. Measured with
pgbench calling the function (one transaction per call, 2 runs each): 8 clients 3,362-4,778
calls/s with the NOTIFY and 7,679-8,421 without; 32 clients 2,391-3,356 against 3,914-9,505;
2 clients the same (4,571-4,731 against 4,327-5,016); this revision's final function, with
50,000 customers: 8 clients 4,060-4,338 against 7,468-7,884, 32 clients 2,453-2,923 against
5,830-7,185. One gql_wallet process sends one group commit at a time, so 2 processes saw no
difference (3,783 against 3,706 top-ups/s; 3,677 against 3,579 with the final function); the
several processes of a larger deployment would have waited for each other's WAL flush.

An announcement is only needed while some process LISTENs (gql_wallet/feed.py: a process
LISTENs from its first subscription on). So `gql_wallet_balance_change` now announces a change
only then, and this is decided without a race by two advisory locks of the database:

- FEED_GATE (7_344_512_002): every balance change holds it shared until its transaction ends,
  taken first, before any row lock (so waiting for it can never be part of a deadlock).
- FEED_LISTENING (7_344_512_003): every LISTEN connection holds it shared for its whole session;
  PostgreSQL drops it with the session, so a process that dies leaves nothing behind.

A change probes FEED_LISTENING with a try-lock in exclusive mode (released at once): it fails
while any listener holds it, and then the change NOTIFYs. A listener registers in one transaction:
FEED_GATE exclusive (which waits until every change in flight has committed, among them those
that found no listener), FEED_LISTENING shared, LISTEN; commit. A change that found no listener
has therefore committed before the listener reads its cursors (it reads the change itself), and
a change that starts after the registration finds the listener and NOTIFYs on commit, which the
listener (LISTENing since its commit) receives. Two changes probing at the same instant can see
each other's probe and both NOTIFY: an announcement too many, never one too few.
"""

import importlib
import textwrap
from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEED_GATE = 7_344_512_002
FEED_LISTENING = 7_344_512_003

# The function of 0003, whose statements and outcomes this revision keeps: only when it NOTIFYs
# changes. Its text is read from 0003 and changed in two places, each checked to match once.
_PREVIOUS: str = importlib.import_module(
    "gql_wallet._migrations.versions.0003_balance_change_function"
)._FUNCTION

_DECLARE = """DECLARE
  claimed text;
BEGIN
"""
_DECLARE_AND_PROBE = f"""DECLARE
  claimed text;
  announce boolean;
BEGIN
  -- Is some process listening? (See migration 0004.) The gate first, before any row lock.
  PERFORM pg_advisory_xact_lock_shared({FEED_GATE});
  -- One expression: the probe is released in the same evaluation that took it, so no cancel
  -- or error can come between them and leave this session holding it.
  announce := CASE WHEN pg_try_advisory_lock({FEED_LISTENING})
                   THEN NOT pg_advisory_unlock({FEED_LISTENING}) ELSE true END;
"""
_NOTIFY = """  PERFORM pg_notify(
    p_channel,
    json_build_object('o', p_organization_id::text, 'c', p_customer_id, 'w', wallet.seq)::text
  );
"""
_NOTIFY_IF_LISTENED = "  IF announce THEN\n" + textwrap.indent(_NOTIFY, "  ") + "  END IF;\n"


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"migration 0004: expected one {old!r} in 0003's function")
    return text.replace(old, new)


FUNCTION = _replace_once(
    _replace_once(_PREVIOUS, _DECLARE, _DECLARE_AND_PROBE), _NOTIFY, _NOTIFY_IF_LISTENED
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PREVIOUS)
