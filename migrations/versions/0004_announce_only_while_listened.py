"""balance changes NOTIFY only while some process LISTENs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 04:00:00.000000

PostgreSQL serialises the commits of every transaction that sent a NOTIFY: such a transaction
takes one database-wide lock before its commit record and keeps it until the commit is flushed
(async.c, PreCommit_Notify), so that notifications are queued in commit order, and the processes
of a larger deployment wait for each other's WAL flush (measured in bench/PROFILE.md, sixth
round).

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

from collections.abc import Sequence

from alembic import op
from gql_wallet._migrations import sql_file

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0003's function with the probe above: same statements and outcomes, and a NOTIFY only when
# some process listens.
FUNCTION = sql_file("gql_wallet_balance_change.v2.sql")
_PREVIOUS = sql_file("gql_wallet_balance_change.v1.sql")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PREVIOUS)
