"""scoped keys and customer sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 04:58:30.100087
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customer_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("public_id", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("customer_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_sessions_api_key_id"), ["api_key_id"], unique=False
        )

    # Keys from before scopes and HMAC storage cannot be checked any more: they are revoked (kept
    # for the record) and get a placeholder public id. Their owners create new keys.
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column(
                "scopes",
                sa.String(length=100),
                nullable=False,
                server_default="wallets:read wallets:write",
            )
        )
    op.execute(
        "UPDATE api_keys SET public_id = substr(key_hash, 1, 16), "
        "revoked_at = COALESCE(revoked_at, CURRENT_TIMESTAMP) WHERE public_id IS NULL"
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(length=16), nullable=False)
        batch_op.alter_column("scopes", existing_type=sa.String(length=100), server_default=None)
        batch_op.create_unique_constraint("api_keys_public_id_key", ["public_id"])
        batch_op.drop_column("prefix")


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("prefix", sa.VARCHAR(length=32), nullable=False, server_default="")
        )
        batch_op.drop_constraint("api_keys_public_id_key", type_="unique")
        batch_op.drop_column("scopes")
        batch_op.drop_column("public_id")

    with op.batch_alter_table("customer_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_sessions_api_key_id"))

    op.drop_table("customer_sessions")
