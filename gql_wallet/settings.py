"""Every knob of gql_wallet, read from the environment (prefix GQL_WALLET_) and checked at start."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///gql_wallet.db"


class Settings(BaseSettings):
    """Server settings. A bad value stops the process at start with a message naming the field."""

    model_config = SettingsConfigDict(env_prefix="GQL_WALLET_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy-style URL: sqlite:///path.db (default, in the working directory) "
        "or postgresql://user@host/db.",
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=1000, description="Database connections per server process."
    )
    db_pool_timeout_seconds: float = Field(
        default=30.0, gt=0, description="How long a request waits for a pooled connection."
    )
    db_connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long opening a PostgreSQL connection may take."
    )
    db_statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="PostgreSQL statement_timeout for every statement (0 turns it off).",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Run the database migrations when the server starts. Turn off when "
        "migrations run as a separate deploy step (gql-wallet migrate).",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="How long a SQLite writer waits for another writer's lock before failing.",
    )
    graphiql: bool = Field(default=True, description="Serve the GraphiQL page on GET /graphql.")
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest accepted request body (HTTP 413 above)."
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value
