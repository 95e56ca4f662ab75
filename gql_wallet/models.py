"""SQLModel tables. Amounts and balances are 64-bit integers in the currency's minor unit.

Internal integer keys (`seq`) order rows and join tables; the UUID `id` is the public identity.
The ledger order of a wallet is `wallet_transactions.seq`: it is taken under the wallet's write
lock, so within a wallet it is the commit order.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from gql_wallet.money import NO_METADATA

# BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY (which is 64-bit there).
BigSeq = BigInteger().with_variant(Integer(), "sqlite")
UtcDateTime = DateTime(timezone=True)


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class ApiKey(SQLModel, table=True):
    """An organization's API key. Only its HMAC is stored; `public_id` finds it and lists it."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", index=True)
    public_id: str = Field(sa_column=Column(String(16), nullable=False, unique=True))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    scopes: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))


class CustomerSession(SQLModel, table=True):
    """A short-lived, read-only token for one customer, made by an organization's API key."""

    __tablename__ = "customer_sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    api_key_id: uuid.UUID = Field(foreign_key="api_keys.id", index=True)
    customer_id: str = Field(sa_column=Column(String(128), nullable=False))
    public_id: str = Field(sa_column=Column(String(16), nullable=False, unique=True))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))


class Wallet(SQLModel, table=True):
    __tablename__ = "wallets"
    __table_args__ = (
        UniqueConstraint("organization_id", "customer_id", "currency", name="uq_wallets_owner"),
        CheckConstraint("balance >= 0", name="ck_wallets_balance_non_negative"),
        CheckConstraint("balance <= 9007199254740991", name="ck_wallets_balance_safe_int"),
        Index("ix_wallets_org_seq", "organization_id", "seq"),
        # Only the wallets that have an expiry ahead: the sweeper's. A write of any other
        # wallet leaves the index alone.
        Index(
            "ix_wallets_next_expiry_at",
            "next_expiry_at",
            postgresql_where=text("next_expiry_at IS NOT NULL"),
            sqlite_where=text("next_expiry_at IS NOT NULL"),
        ),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    customer_id: str = Field(sa_column=Column(String(128), nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    balance: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    modified_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # The soonest expiry of its credit blocks with unreserved credits left and of its open
    # holds (null: none), kept by every write: a read compares it with the database's clock in
    # the same SELECT. On PostgreSQL a bound, never later than that (migration 0009).
    next_expiry_at: datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime, nullable=True)
    )
    # What its OPEN holds reserve (their expiry written: see next_expiry_at); the available
    # balance is balance - held_balance, never negative.
    held_balance: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # Webhooks announce when the available balance crosses it (null: only when it reaches 0).
    low_balance_threshold: int | None = Field(default=None, sa_column=Column(BigInteger))


class WalletTransaction(SQLModel, table=True):
    """One ledger entry. Append-only: triggers (created by the migrations) refuse UPDATE and
    DELETE on both databases."""

    __tablename__ = "wallet_transactions"
    __table_args__ = (
        UniqueConstraint("organization_id", "idempotency_key", name="uq_wallet_tx_key"),
        CheckConstraint("amount <> 0", name="ck_wallet_tx_amount_nonzero"),
        CheckConstraint("balance_after >= 0", name="ck_wallet_tx_balance_after"),
        Index("ix_wallet_tx_wallet_seq", "wallet_seq", "seq"),
        # Only refunds and reversals: every other entry's insert leaves the index alone.
        Index(
            "ix_wallet_transactions_reverses_seq",
            "reverses_seq",
            postgresql_where=text("reverses_seq IS NOT NULL"),
            sqlite_where=text("reverses_seq IS NOT NULL"),
        ),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    wallet_seq: int = Field(sa_column=Column(BigSeq, ForeignKey("wallets.seq"), nullable=False))
    type: str = Field(sa_column=Column(String(16), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    balance_after: int = Field(sa_column=Column(BigInteger, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text))
    reference: str | None = Field(default=None, sa_column=Column(String(255)))
    idempotency_key: str = Field(sa_column=Column(String(255), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # A REFUND's charge, a REVERSAL's top-up or grant.
    reverses_seq: int | None = Field(default=None, sa_column=Column(BigSeq, nullable=True))
    # The wallet's held balance right after this entry (with balance_after, its whole state).
    held_after: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # The caller's metadata: canonical JSON of string keys to string values, {} for none.
    metadata_: str = Field(
        default=NO_METADATA,
        sa_column=Column("metadata", Text, nullable=False, server_default=NO_METADATA),
    )


class CreditBlock(SQLModel, table=True):
    """A credit block: what one TOP_UP or GRANT entry (its source) added, and what is left.

    `remaining` is never negative and always `amount` plus the sum of the block's allocations.
    `burn_key` sorts the blocks of a wallet in burn-down order (then `seq`, oldest first); the
    ledger service computes it, so the order is defined in one place.
    """

    __tablename__ = "credit_blocks"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="ck_credit_blocks_amount_non_negative"),
        CheckConstraint("remaining >= 0", name="ck_credit_blocks_remaining_non_negative"),
        # Only blocks with credits left: a wallet's spent blocks are never read again to spend.
        Index(
            "ix_credit_blocks_burn",
            "wallet_seq",
            "burn_key",
            "seq",
            postgresql_where=text("remaining > 0"),
            sqlite_where=text("remaining > 0"),
        ),
        # Every block of a wallet in burn-down order, spent ones included: credits(...) pages.
        Index("ix_credit_blocks_wallet", "wallet_seq", "burn_key", "seq"),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    wallet_seq: int = Field(sa_column=Column(BigSeq, ForeignKey("wallets.seq"), nullable=False))
    source_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("wallet_transactions.seq"), nullable=False, unique=True)
    )
    category: str = Field(sa_column=Column(String(16), nullable=False))
    priority: int = Field(sa_column=Column(Integer, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime, nullable=True))
    burn_key: str = Field(sa_column=Column(String(64), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    remaining: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # What open holds reserve from `remaining`: spendable by their captures only.
    held: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class CreditAllocation(SQLModel, table=True):
    """How much of one block one entry spent (negative) or restored (positive); `ordinal` is
    the order in which the entry touched its blocks."""

    __tablename__ = "credit_allocations"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="ck_credit_allocations_amount_nonzero"),
        Index("ix_credit_allocations_block", "block_seq", "entry_seq"),
    )

    entry_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("wallet_transactions.seq"), primary_key=True)
    )
    ordinal: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    block_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("credit_blocks.seq"), nullable=False)
    )
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))


class WalletHold(SQLModel, table=True):
    """Funds reserved for usage whose price is known later: OPEN until captured, voided or
    expired (an OPEN hold past `expires_at` is EXPIRED by the database's clock, whether or not
    that is written yet). `capture_seq`: its CAPTURE entry."""

    __tablename__ = "wallet_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_wallet_holds_amount_positive"),
        CheckConstraint(
            "captured_amount >= 0 AND captured_amount <= amount",
            name="ck_wallet_holds_captured_within_amount",
        ),
        # A wallet's holds, newest first: holds(...) pages.
        Index("ix_wallet_holds_wallet_seq", "wallet_seq", "seq"),
        # A wallet's open holds by expiry: the next one to expire.
        Index(
            "ix_wallet_holds_open",
            "wallet_seq",
            "expires_at",
            postgresql_where=text("status = 'OPEN'"),
            sqlite_where=text("status = 'OPEN'"),
        ),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    # No foreign keys on organization_id (its wallet's) and capture_seq (the entry the store
    # has just written under the wallet's lock): each would be one more check on every hold.
    organization_id: uuid.UUID
    wallet_seq: int = Field(sa_column=Column(BigSeq, ForeignKey("wallets.seq"), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    captured_amount: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    status: str = Field(sa_column=Column(String(16), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    description: str | None = Field(default=None, sa_column=Column(Text))
    reference: str | None = Field(default=None, sa_column=Column(String(255)))
    idempotency_key: str = Field(sa_column=Column(String(255), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    capture_seq: int | None = Field(default=None, sa_column=Column(BigSeq))
    # The caller's metadata (as an entry's); a capture that is given none takes the hold's.
    metadata_: str = Field(
        default=NO_METADATA,
        sa_column=Column("metadata", Text, nullable=False, server_default=NO_METADATA),
    )


class HoldReservation(SQLModel, table=True):
    """How much of one credit block an open hold reserves, in burn-down order (`ordinal`)."""

    __tablename__ = "hold_reservations"
    __table_args__ = (CheckConstraint("amount > 0", name="ck_hold_reservations_amount_positive"),)

    hold_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("wallet_holds.seq"), primary_key=True)
    )
    ordinal: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    block_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("credit_blocks.seq"), nullable=False)
    )
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))


class IdempotencyKey(SQLModel, table=True):
    """The first outcome of a balance-changing write, replayed for every retry with its key.

    `request` is the normalised input as canonical JSON: a retry matches only if it is equal.
    A success points at its ledger entry; a refusal decided against the ledger keeps its code
    (its message is the ledger service's, by code).
    """

    __tablename__ = "idempotency_keys"

    organization_id: uuid.UUID = Field(foreign_key="organizations.id", primary_key=True)
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    request: str = Field(sa_column=Column(Text, nullable=False))
    transaction_seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, ForeignKey("wallet_transactions.seq"))
    )
    error_code: str | None = Field(default=None, sa_column=Column(String(64)))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # The hold a createHold, captureHold or voidHold wrote or refused on. No foreign key, so
    # that SQLite can drop the column again (downgrade).
    hold_seq: int | None = Field(default=None, sa_column=Column(BigSeq))


metadata = SQLModel.metadata


class WebhookEndpoint(SQLModel, table=True):
    """Where an organization's backend receives events: an https URL, the event types it takes
    (space-separated), and the secret deliveries are signed with (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", index=True)
    url: str = Field(sa_column=Column(Text, nullable=False))
    events: str = Field(sa_column=Column(Text, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text))
    secret: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    modified_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class WebhookOutbox(SQLModel, table=True):
    """A change that webhooks may announce, written by a trigger in the transaction that made
    it (only for organizations with an endpoint): a ledger entry (`entry_seq`), a change of a
    wallet's balance, held balance or threshold (the wallet after it), a hold's expiry
    (`hold_seq`). The dispatcher turns each into
    events and deletes it."""

    __tablename__ = "webhook_outbox"

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    organization_id: uuid.UUID
    wallet_seq: int = Field(sa_column=Column(BigSeq, nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # entry | wallet | hold
    entry_seq: int | None = Field(default=None, sa_column=Column(BigSeq))
    hold_seq: int | None = Field(default=None, sa_column=Column(BigSeq))
    balance: int | None = Field(default=None, sa_column=Column(BigInteger))
    held_balance: int | None = Field(default=None, sa_column=Column(BigInteger))
    threshold: int | None = Field(default=None, sa_column=Column(BigInteger))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class WebhookBalanceState(SQLModel, table=True):
    """What webhooks last said of a wallet's available balance (OK, LOW, DEPLETED): balance
    events are sent when it changes, once per crossing. Written by the dispatcher only."""

    __tablename__ = "webhook_balance_states"

    wallet_seq: int = Field(sa_column=Column(BigSeq, primary_key=True, autoincrement=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))


class WebhookEvent(SQLModel, table=True):
    """One event as its endpoints receive it: `payload` is the JSON body, the same bytes on
    every attempt. `seq` is its `sequence` (increasing within each wallet)."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_created", "created_at"),)

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: str = Field(sa_column=Column(String(40), nullable=False, unique=True))  # evt_...
    organization_id: uuid.UUID
    wallet_seq: int = Field(sa_column=Column(BigSeq, nullable=False))
    type: str = Field(sa_column=Column(String(40), nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: PENDING until an attempt gets a 2xx (SUCCEEDED) or the retry
    schedule runs out (FAILED). A worker claims an attempt by moving `next_attempt_at` past the
    attempt's timeout, so no two processes send the same attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'PENDING'"),
            sqlite_where=text("status = 'PENDING'"),
        ),
        Index("ix_webhook_deliveries_endpoint", "endpoint_seq", "seq"),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigSeq, primary_key=True, autoincrement=True)
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    event_seq: int = Field(
        sa_column=Column(BigSeq, ForeignKey("webhook_events.seq"), nullable=False)
    )
    endpoint_seq: int = Field(
        sa_column=Column(
            BigSeq, ForeignKey("webhook_endpoints.seq", ondelete="CASCADE"), nullable=False
        )
    )
    status: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    last_status_code: int | None = Field(default=None, sa_column=Column(Integer))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    completed_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))


class WebhookAttempt(SQLModel, table=True):
    """One attempt of a delivery: when, the HTTP status (null: no answer) or what failed."""

    __tablename__ = "webhook_attempts"

    delivery_seq: int = Field(
        sa_column=Column(
            BigSeq,
            ForeignKey("webhook_deliveries.seq", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )
    number: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    started_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    error: str | None = Field(default=None, sa_column=Column(Text))
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False))
