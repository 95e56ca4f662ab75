"""Every knob of gql_wallet, read from the environment (prefix GQL_WALLET_) and checked at start."""

from __future__ import annotations

import logging
import sys
import types
from contextlib import suppress
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite:///gql_wallet.db"
# Only for development: production refuses to start without its own secret.
DEVELOPMENT_TOKEN_SECRET = "gql-wallet-development-secret-never-use-in-production"  # noqa: S105
DEVELOPMENT_CORS_ORIGIN_REGEX = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"

logger = logging.getLogger("gql_wallet")


class Settings(BaseSettings):
    """Server settings. A bad value stops the process at start with a message naming its
    environment variable (`from_environment`)."""

    model_config = SettingsConfigDict(env_prefix="GQL_WALLET_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="development: GraphiQL, introspection and localhost CORS on, a built-in "
        "token secret. production: all of that off unless set, and a token secret required.",
    )
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="sqlite:///path.db (default, in the working directory) or "
        "postgresql://user@host/db.",
    )
    db_transaction_pooler: bool = Field(
        default=False,
        description="database_url is a connection pooler in transaction mode (PgBouncer's "
        "pool_mode = transaction): no startup parameters, no named prepared statements, no "
        "session state; the statement timeout is set per transaction (SET LOCAL).",
    )
    listen_database_url: str | None = Field(
        default=None,
        description="PostgreSQL: where the subscription listener connects (LISTEN needs a "
        "session of its own): the database itself or a session-mode pool. Default: "
        "database_url, which behind a transaction pooler must be set apart.",
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
    sqlite_busy_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="How long a SQLite writer waits for another writer's lock before failing.",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Run the database migrations when the server starts. Turn off when "
        "migrations run as a separate deploy step (gql-wallet migrate).",
    )
    token_secret: SecretStr | None = Field(
        default=None,
        description="Server secret keying the HMAC under which API keys and customer session "
        "tokens are stored (at least 32 characters). Changing it invalidates every token.",
    )
    graphiql: bool | None = Field(
        default=None,
        description="Serve the GraphiQL page on GET /graphql (default: on in development).",
    )
    introspection: bool | None = Field(
        default=None, description="Allow schema introspection (default: on in development)."
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins allowed to call the API "
        "(e.g. https://app.example.com). Default: none (localhost in development).",
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest accepted request body (HTTP 413 above)."
    )
    max_query_depth: int = Field(default=12, ge=1, description="Deepest allowed field nesting.")
    max_aliases: int = Field(default=30, ge=0, description="Most aliases in one document.")
    max_tokens: int = Field(default=2_000, ge=10, description="Most lexical tokens in a document.")
    max_directives: int = Field(default=20, ge=0, description="Most directives in a document.")
    max_cost: int = Field(
        default=10_000,
        ge=1,
        description="Most objects one operation may ask for: each connection multiplies what it "
        "contains by its page size (`first`).",
    )
    http_single_write: bool = Field(
        default=False,
        description="Serve HTTP with gql_wallet's variant of uvicorn's httptools protocol, "
        "which sends each response in one write instead of two. It builds on uvicorn's "
        "private httptools_impl and is tested against the pinned uvicorn only; off: uvicorn's "
        "stock protocol.",
    )
    rate_limit_api_key: str = Field(
        default="1000/second",
        description="Requests allowed per organization API key, in the `limits` notation "
        "(1000/second, 50000/minute); empty turns the limit off.",
    )
    rate_limit_customer_session: str = Field(
        default="20/second",
        description="Requests allowed per customer session token; empty turns the limit off.",
    )
    rate_limit_storage_uri: str = Field(
        default="memory://",
        description="Where rate-limit counters live: memory:// (per process) or a shared store "
        "such as redis://host:6379 so that all processes share one budget per key.",
    )
    expiry_sweep_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between expiry sweeps in each process: due credit expiries are "
        "written within this long even if nobody reads or writes the wallet (every read and "
        "write writes them first anyway).",
    )
    webhook_retry_delays: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        pattern=r"^\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*)*$",
        description="Seconds to wait before each retry of a webhook delivery, comma-separated; "
        "each wait varies by up to 10% (jitter). After the last one fails the delivery is "
        "FAILED. The default retries 7 times over 27.6 hours.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds one webhook delivery attempt may take, connecting included.",
    )
    webhooks_allow_loopback_http: bool = Field(
        default=False,
        description="Development only: accept endpoint URLs on loopback addresses (127.0.0.1, "
        "::1, localhost), over http too. Otherwise an endpoint must be https and resolve to "
        "public addresses only.",
    )
    webhook_max_in_flight: int = Field(
        default=128,
        ge=1,
        le=1000,
        description="Webhook deliveries one process sends at once, over all endpoints.",
    )
    webhook_max_in_flight_per_endpoint: int = Field(
        default=16,
        ge=1,
        le=100,
        description="Webhook deliveries one process sends at once to one endpoint: a slow "
        "endpoint ties up at most this many, never the others' share.",
    )
    webhook_delivery: Literal["process", "app", "none"] = Field(
        default="process",
        description="Who sends webhooks. process: `gql-wallet serve` starts delivery processes "
        "beside its server processes, at a lower CPU priority, so that deliveries never slow "
        "the writes they report; app: every app process delivers too (one process, no other; "
        "for an app served by other means); none: not this host (another runs `gql-wallet "
        "webhooks deliver`).",
    )
    webhook_delivery_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Delivery processes `gql-wallet serve` starts (webhook_delivery=process).",
    )
    webhook_delivery_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="The niceness of delivery processes started by `gql-wallet serve`: when the "
        "machine is busy, the server processes get the CPU first and deliveries catch up after "
        "(19: deliveries take the CPU the server leaves; 0: they share it evenly).",
    )
    webhook_delivery_idle: bool = Field(
        default=True,
        description="Linux: delivery processes started by `gql-wallet serve` run under the "
        "SCHED_IDLE policy, on CPU time no other process wants. A niceness alone still gives "
        "them slices of the moments the server processes wait for the database; false: the "
        "niceness only.",
    )
    export_max_days: int = Field(
        default=366,
        ge=1,
        le=36_600,
        description="The longest period one export of a ledger may cover, in days (`gql-wallet "
        "export`, GET /exports/transactions); a longer one is refused: split it.",
    )
    webhook_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds between looks for new webhook events and due deliveries when "
        "there was nothing to do.",
    )
    subscription_max_connections: int = Field(
        default=2_000, ge=1, description="Most WebSocket connections one server process accepts."
    )
    subscription_max_per_connection: int = Field(
        default=20, ge=1, description="Most subscriptions one WebSocket connection may run."
    )
    subscription_queue_size: int = Field(
        default=1_000,
        ge=1,
        description="Events a subscriber may fall behind by before it is closed as a slow "
        "consumer (WebSocket close code 4008); bounds memory per subscriber.",
    )
    ws_ping_interval_seconds: float = Field(
        default=20.0, gt=0, description="WebSocket keepalive: seconds between pings."
    )
    ws_ping_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="WebSocket keepalive: a connection that does not answer "
        "a ping within this many seconds is closed.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: for reading by eye."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The lowest level logged."
    )
    log_variables: bool = Field(
        default=False,
        description="Log each request's GraphQL variables (they hold customer data: off "
        "unless you need them).",
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus metrics.")
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that /metrics on the API port requires. Without it /metrics "
        "there is open in development and off in production (use metrics_port).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics on this separate port (same host), e.g. one only the "
        "Prometheus network reaches.",
    )
    shutdown_timeout_seconds: int = Field(
        default=30,
        ge=1,
        description="On SIGTERM: how long in-flight requests may take to finish before the "
        "server stops anyway.",
    )
    keep_alive_seconds: int = Field(
        default=65,
        ge=1,
        description="How long an idle HTTP keep-alive connection stays open; keep it above your "
        "load balancer's idle timeout (often 60 s) so it never reuses a closing connection.",
    )
    customer_session_default_seconds: int = Field(
        default=3_600, ge=60, description="Lifetime of a customer session when none is asked for."
    )
    customer_session_max_seconds: int = Field(
        default=86_400, ge=60, description="Longest lifetime a customer session may be given."
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("listen_database_url")
    @classmethod
    def _postgresql_listener(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("rate_limit_api_key", "rate_limit_customer_session")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        if value.strip():
            from limits import parse

            try:
                parse(value)
            except ValueError:
                raise ValueError(
                    "must be a rate such as 1000/second or 50000/minute, or empty for no limit"
                ) from None
        return value.strip()

    @field_validator("token_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _listener_apart_from_a_transaction_pooler(self) -> Self:
        if self.db_transaction_pooler and self.listen_database_url is None:
            raise ValueError(
                "GQL_WALLET_LISTEN_DATABASE_URL is required with GQL_WALLET_DB_TRANSACTION_POOLER: "
                "LISTEN needs a session of its own (PostgreSQL itself, or a session-mode pool)"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_its_own_secret(self) -> Self:
        if self.environment == "production" and self.token_secret is None:
            raise ValueError(
                "GQL_WALLET_TOKEN_SECRET is required in production (32+ random characters, "
                "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return self

    @property
    def listen_url(self) -> str:
        """Where the subscription listener's session connects (PostgreSQL)."""
        return self.listen_database_url or self.database_url

    @property
    def development(self) -> bool:
        return self.environment == "development"

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.webhook_retry_delays.split(","))

    @property
    def token_secret_bytes(self) -> bytes:
        if self.token_secret is None:
            return DEVELOPMENT_TOKEN_SECRET.encode()
        return self.token_secret.get_secret_value().encode()

    @property
    def graphiql_enabled(self) -> bool:
        return self.development if self.graphiql is None else self.graphiql

    @property
    def introspection_enabled(self) -> bool:
        return self.development if self.introspection is None else self.introspection

    @property
    def cors_origin_regex(self) -> str | None:
        """Localhost on any port, in development, when no origins are configured."""
        return (
            DEVELOPMENT_CORS_ORIGIN_REGEX
            if self.development and not self.cors_allow_origins
            else None
        )


def from_environment() -> Settings:
    """The settings of a process, from its environment. A bad setting ends the process with exit
    code 2 and one line per bad setting on stderr, instead of pydantic's report."""
    try:
        return Settings()
    except ValidationError as error:
        for line in describe_invalid_settings(error):
            print(f"gql-wallet: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_invalid_settings(error: ValidationError) -> list[str]:
    """One line per bad setting in `error` (from building Settings): its environment variable,
    the value it had and what it may be."""
    prefix = Settings.model_config.get("env_prefix", "")
    lines: dict[str, str] = {}  # by setting: `int | None` fails once per alternative
    for problem in error.errors(include_url=False):
        cause = problem.get("ctx", {}).get("error")
        reason = str(cause) if problem["type"] == "value_error" and cause else None
        if not problem["loc"]:  # a rule across settings: its message names the variables
            lines.setdefault(str(reason or problem["msg"]), str(reason or problem["msg"]))
            continue
        name = str(problem["loc"][0])
        field = Settings.model_fields[name]
        allowed = reason or f"must be {_allowed_values(field)}"
        shown = _shown_value(name, field, problem["input"])
        lines.setdefault(name, f"invalid {prefix.upper()}{name.upper()}{shown}: {allowed}")
    return list(lines.values())


def _shown_value(name: str, field: FieldInfo, value: Any) -> str:
    """`=<value>` as set, for the message; never a secret, nor a password in a database URL."""
    if SecretStr in _alternatives(field.annotation):
        return " (value hidden)"
    if name in ("database_url", "listen_database_url") and isinstance(value, str):
        with suppress(ArgumentError, ValueError):  # not URL-shaped: no password to find in it
            value = make_url(value).render_as_string(hide_password=True)
    return f"={value!r}"


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _allowed_values(field: FieldInfo) -> str:
    """What a setting may be, from its type and bounds, e.g. "an integer from 1 to 1000"."""
    kinds = [kind for kind in _alternatives(field.annotation) if kind is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else None
    if get_origin(kind) is Literal:
        allowed = "one of: " + ", ".join(str(choice) for choice in get_args(kind))
    elif kind is bool:
        allowed = "true or false"
    elif kind in (int, float):
        allowed = ("an integer" if kind is int else "a number") + _bounds(field)
    else:
        allowed = "text"
    return allowed + (" (or unset)" if type(None) in _alternatives(field.annotation) else "")


def _bounds(field: FieldInfo) -> str:
    low = next((m for m in field.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m for m in field.metadata if isinstance(m, Le | Lt)), None)
    if isinstance(low, Ge) and isinstance(high, Le):
        return f" from {low.ge} to {high.le}"
    parts = []
    if low is not None:
        parts.append(f">= {low.ge}" if isinstance(low, Ge) else f"> {low.gt}")
    if high is not None:
        parts.append(f"<= {high.le}" if isinstance(high, Le) else f"< {high.lt}")
    return (" " + " and ".join(parts)) if parts else ""
