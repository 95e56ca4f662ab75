"""gql-wallet serve | api-keys create | export-schema | verify."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvicorn
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from gql_wallet import repository as repo
from gql_wallet.audit import audit
from gql_wallet.auth import API_KEY_PREFIX, SCOPE_READ, SCOPE_WRITE, SCOPES, create_api_key
from gql_wallet.db import create_engine, dispose, read_transaction, write_transaction
from gql_wallet.logs import configure_logging, logging_config
from gql_wallet.migrate import head_revision, upgrade_to_head
from gql_wallet.settings import Settings

T = TypeVar("T")


def _with_engine(
    settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], *, migrate: bool = True
) -> T:
    async def run() -> T:
        engine = create_engine(settings)
        try:
            if migrate:
                await upgrade_to_head(engine)
            return await work(engine)
        finally:
            await dispose(engine)

    return asyncio.run(run())


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    async def key_count(engine: AsyncEngine) -> int:
        async with read_transaction(engine) as conn:
            return await repo.count_api_keys(conn)

    # Migrate once here, before any worker starts, then hint at the first step if needed.
    if _with_engine(settings, key_count, migrate=settings.migrate_on_start) == 0:
        print(
            "No API keys yet. Create one with: gql-wallet api-keys create --organization NAME",
            file=sys.stderr,
        )
    if settings.development:
        print(
            "Development mode: built-in token secret, GraphiQL, introspection and localhost "
            "CORS. In production set GQL_WALLET_ENVIRONMENT=production and "
            "GQL_WALLET_TOKEN_SECRET (see docs/security.md).",
            file=sys.stderr,
        )
    if settings.graphiql_enabled:
        print(f"GraphiQL: http://{args.host}:{args.port}/graphql", file=sys.stderr)
    if args.workers > 1:
        # Each worker writes its metrics under this folder; every scrape sums them all.
        metrics_dir = tempfile.mkdtemp(prefix="gql-wallet-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if settings.metrics_enabled and settings.metrics_port is not None:
        _serve_metrics(args.host, settings.metrics_port)
    uvicorn.run(
        "gql_wallet.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # Ours, applied by uvicorn in each worker process too.
        log_config=logging_config(settings.log_format, settings.log_level),
        access_log=False,  # the request log line (gql_wallet.request) replaces it
        http="gql_wallet.http_protocol:HttpProtocol",  # httptools; a response in one write
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_max_size=settings.max_body_bytes,
    )
    return 0


def _serve_metrics(host: str, port: int) -> None:
    """/metrics on its own port, served by this (supervising) process for all workers."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)
    print(f"Metrics: http://{host}:{port}/metrics", file=sys.stderr)


def _settings_help() -> str:
    """Every setting, for `gql-wallet serve --help`."""
    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = "(unset)" if default is None else repr(default)
        lines.append(f"  GQL_WALLET_{name.upper()} = {shown}")
        lines.append(f"      {field.description}")
    return "\n".join(lines)


def _create_key(settings: Settings, args: argparse.Namespace) -> int:
    organization = args.organization.strip()
    if not organization or len(organization) > 200:
        print("--organization must be 1-200 characters", file=sys.stderr)
        return 2

    # wallets:write implies wallets:read: a key that changes wallets can read them.
    scopes = SCOPES if args.scope == SCOPE_WRITE else (SCOPE_READ,)

    async def create(engine: AsyncEngine) -> str:
        return await create_api_key(engine, settings.token_secret_bytes, organization, scopes)

    secret = _with_engine(settings, create)
    print(
        f"Created an API key ({' '.join(scopes)}) for organization {organization!r}. "
        "It is shown only once:"
    )
    print(secret)
    return 0


def _list_keys(settings: Settings, _args: argparse.Namespace) -> int:
    async def keys(engine: AsyncEngine) -> list[repo.ApiKeyRecord]:
        async with read_transaction(engine) as conn:
            return await repo.list_api_keys(conn)

    print(f"{'KEY ID':<14} {'ORGANIZATION':<24} {'SCOPES':<28} {'CREATED':<20} REVOKED")
    for key in _with_engine(settings, keys):
        revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
        print(
            f"{key.public_id:<14} {key.organization[:24]:<24} {key.scopes:<28} "
            f"{key.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}"
        )
    return 0


def _revoke_key(settings: Settings, args: argparse.Namespace) -> int:
    # Accept the key id from `list` or the whole key.
    key_id = args.key.removeprefix(API_KEY_PREFIX).split("_")[0]

    async def revoke(engine: AsyncEngine) -> bool:
        async with write_transaction(engine) as conn:
            return await repo.revoke_api_key(conn, key_id, repo.now_utc())

    if not _with_engine(settings, revoke):
        print(f"no API key {key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked API key {key_id} and every customer session it made")
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def done(_engine: AsyncEngine) -> None:
        return None

    _with_engine(settings, done)
    print(f"database schema is at revision {head_revision()}")
    return 0


def _export_schema(_settings: Settings, _args: argparse.Namespace) -> int:
    from gql_wallet.graphql.schema import schema

    sys.stdout.write(schema.as_str() + "\n")
    return 0


def _verify(settings: Settings, _args: argparse.Namespace) -> int:
    report = _with_engine(settings, audit)
    for problem in report.problems:
        print(f"INCONSISTENT {problem}")
    print(
        f"verified {report.wallets} wallets and {report.transactions} transactions: "
        f"{len(report.problems)} problems"
    )
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gql-wallet",
        description="GraphQL API server for customer wallets. The database comes from "
        "GQL_WALLET_DATABASE_URL (default: sqlite:///gql_wallet.db in the working directory).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server (GraphiQL at /graphql)",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("api-keys", help="manage organization API keys")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser(
        "create", help="create a key (and the organization if needed); prints the key last"
    )
    create.add_argument("--organization", required=True, help="organization name")
    create.add_argument(
        "--scope",
        choices=[SCOPE_WRITE, SCOPE_READ],
        default=SCOPE_WRITE,
        help="wallets:write (default; reads too) or wallets:read (read-only)",
    )
    create.set_defaults(run=_create_key)
    list_keys = key_commands.add_parser("list", help="list keys (never their secrets)")
    list_keys.set_defaults(run=_list_keys)
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key at once, with every customer session it made"
    )
    revoke.add_argument("key", help="the KEY ID shown by `api-keys list` (or the whole key)")
    revoke.set_defaults(run=_revoke_key)

    migrate = commands.add_parser(
        "migrate", help="bring the database schema to the newest revision"
    )
    migrate.set_defaults(run=_migrate)

    export = commands.add_parser("export-schema", help="print the GraphQL SDL")
    export.set_defaults(run=_export_schema)

    verify = commands.add_parser("verify", help="audit every wallet's ledger; non-zero on problems")
    verify.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"gql-wallet: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    result: int = args.run(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
