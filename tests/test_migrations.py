"""Alembic migrations: they match the models and run safely from several processes at once."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select

from gql_wallet import ledger
from gql_wallet import repository as repo
from gql_wallet.db import create_database
from gql_wallet.migrate import alembic_config, current_revision, head_revision
from gql_wallet.models import metadata
from gql_wallet.settings import Settings
from tests.conftest import CLI, Env, cli


async def test_models_and_migrations_do_not_drift(env: Env) -> None:
    async with env.database.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata
            )
        )
    assert diff == [], f"models and migrations differ; add a revision: {diff}"


async def test_schema_is_at_head(env: Env) -> None:
    async with env.database.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()


def test_migrate_reports_the_head_revision(database_url: str) -> None:
    result = cli(database_url, "migrate")
    assert f"database schema is at revision {head_revision()}" in result.stdout


async def test_downgrade_and_concurrent_upgrades_from_empty(database_url: str) -> None:
    database = create_database(Settings(database_url=database_url))
    try:
        async with database.write_transaction() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "base"))
        async with database.engine.connect() as conn:
            assert await conn.run_sync(current_revision) is None
    finally:
        await database.dispose()

    # Three processes migrating one empty database at once: one migrates, the others wait.
    env = {"GQL_WALLET_DATABASE_URL": database_url}

    processes = [
        subprocess.Popen(
            [CLI, "migrate"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert "0 problems" in cli(database_url, "verify").stdout


async def test_revision_0007_makes_each_wallet_one_paid_block(database_url: str) -> None:
    """A ledger written before credit blocks (revision 0006) keeps its history; each wallet
    with a top-up gets one PAID block of its balance, never expiring, from its first top-up,
    and its older charges and top-ups can be refunded and reversed."""
    database = create_database(Settings(database_url=database_url))
    try:
        async with database.write_transaction() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0006"))
        organization = uuid.uuid4()
        now = datetime.now(UTC)
        entries = [("TOP_UP", 1_000), ("CHARGE", -300), ("TOP_UP", 500), ("CHARGE", -200)]
        async with database.write_transaction() as conn:
            await conn.execute(
                insert(repo.organizations).values(id=organization, name="old", created_at=now)
            )
            for customer, balance in (("cus_old", 1_000), ("cus_spent", 0)):
                await conn.execute(
                    insert(repo.wallets).values(
                        id=uuid.uuid4(),
                        organization_id=organization,
                        customer_id=customer,
                        currency="usd",
                        balance=balance,
                        created_at=now,
                        modified_at=now,
                    )
                )
            wallet_seqs = dict(
                (await conn.execute(select(repo.wallets.c.customer_id, repo.wallets.c.seq))).all()
            )
            for customer, history in (
                ("cus_old", entries),
                ("cus_spent", [*entries[:2], ("CHARGE", -700)]),
            ):
                running = 0
                for n, (kind, amount) in enumerate(history):
                    running += amount
                    await conn.execute(
                        insert(repo.transactions).values(
                            id=uuid.uuid4(),
                            organization_id=organization,
                            wallet_seq=wallet_seqs[customer],
                            type=kind,
                            amount=amount,
                            balance_after=running,
                            idempotency_key=f"{customer}-{n}",
                            created_at=now,
                        )
                    )
        migrated = cli(database_url, "migrate", check=False)
        assert migrated.returncode == 0, migrated.stderr[-1500:]
        assert "0 problems" in cli(database_url, "verify").stdout

        async with database.read_transaction() as conn:
            blocks = (
                await conn.execute(
                    select(
                        repo.credit_blocks.c.wallet_seq,
                        repo.credit_blocks.c.category,
                        repo.credit_blocks.c.priority,
                        repo.credit_blocks.c.expires_at,
                        repo.credit_blocks.c.amount,
                        repo.credit_blocks.c.remaining,
                        repo.transactions.c.idempotency_key,
                    ).join(
                        repo.transactions,
                        repo.transactions.c.seq == repo.credit_blocks.c.source_seq,
                    )
                )
            ).all()
        assert sorted(tuple(b) for b in blocks) == sorted(
            [
                (wallet_seqs["cus_old"], "PAID", 50, None, 1_000, 1_000, "cus_old-0"),
                (wallet_seqs["cus_spent"], "PAID", 50, None, 0, 0, "cus_spent-0"),
            ]
        )
        # An old charge is refunded into that block; an old top-up is reversed from it.
        async with database.read_transaction() as conn:
            ids = dict(
                (
                    await conn.execute(
                        select(repo.transactions.c.idempotency_key, repo.transactions.c.id)
                    )
                ).all()
            )
        refunded = await ledger.refund(
            database, organization, ledger.Undo(str(ids["cus_spent-2"]), "r1", amount=700)
        )
        assert refunded.errors == () and refunded.wallet is not None
        assert refunded.wallet.balance == 700
        reversed_ = await ledger.reverse(
            database, organization, ledger.Undo(str(ids["cus_old-2"]), "r2")
        )
        assert reversed_.errors == () and reversed_.transaction is not None
        assert reversed_.transaction.amount == -500  # capped by that top-up, not the block
        assert "0 problems" in cli(database_url, "verify").stdout
    finally:
        await database.dispose()
