"""gql-wallet serve | migrate | api-keys create/list/revoke | export | export-schema | verify."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import enum
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import asyncpg
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from gql_wallet import repository as repo
from gql_wallet.audit import audit
from gql_wallet.auth import (
    API_KEY_PREFIX,
    SCOPE_READ,
    SCOPE_WRITE,
    SCOPES,
    create_api_key,
    revoke_api_key,
)
from gql_wallet.db import Database, create_database
from gql_wallet.logs import configure_logging, logging_config
from gql_wallet.migrate import current_revision, head_revision, upgrade_to_head
from gql_wallet.settings import Settings, from_environment

T = TypeVar("T")

# What opening or migrating a database raises when the server, the network or the file is the
# trouble (asyncpg's own errors when SQLAlchemy does not wrap them, e.g. while connecting).
_DATABASE_ERRORS = (OSError, DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError)


class CommandError(Exception):
    """Why a command cannot go on: one line on stderr, and exit code 1."""


class Access(enum.Enum):
    """What a command needs of the database, and what it may do to it."""

    READ = "read"  # an existing database at the newest schema; never created, migrated or written
    CHANGE = "change"  # an existing gql_wallet database, migrated first
    CREATE = "create"  # created if missing (a new SQLite file is announced), then migrated
    AS_IS = "as is"  # an existing gql_wallet database at whatever revision (serve, not migrating)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _cause(error: BaseException) -> str:
    """The database's, the driver's or the network's own words for what went wrong."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig.__cause__ or error.orig
    if isinstance(error, TimeoutError) and not str(error):
        return "no answer (timed out)"
    said = " ".join(str(error).split()) or type(error).__name__
    if "unsupported startup parameter" in said:
        # PgBouncer's answer to the statement timeout gql_wallet sends a server it talks to
        # directly.
        said += (
            " (behind a pooler in transaction mode, such as PgBouncer, set "
            "GQL_WALLET_DB_TRANSACTION_POOLER=true and GQL_WALLET_LISTEN_DATABASE_URL: "
            "docs/deploy.md)"
        )
    return said


def _sqlite_path(database_url: str) -> Path | None:
    """The absolute path of a SQLite database file; None for PostgreSQL and for a `file:` URI
    (whose options only SQLite reads)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if url.database in (None, "", ":memory:"):
        # Gone when the command ends (and a new, empty one on every connection).
        raise CommandError(
            f"{database_url} is a SQLite database in memory: set GQL_WALLET_DATABASE_URL to a file, "
            "e.g. sqlite:///gql_wallet.db"
        )
    if url.database.startswith("file:"):
        return None
    return Path(os.path.abspath(url.database))


def _with_database(
    settings: Settings, work: Callable[[Database], Awaitable[T]], access: Access
) -> T:
    """`work(database)` on the configured database, once it is there as `access` needs it.

    A database that is missing, unreachable or without the gql_wallet schema is a
    `CommandError` naming it (a PostgreSQL URL without its password); only `Access.CREATE`
    creates a database file or a schema, and says so."""
    path = _sqlite_path(settings.database_url)
    url = make_url(settings.database_url)
    where = str(path) if path else url.render_as_string(hide_password=True)
    no_schema = CommandError(
        f"no gql_wallet schema in the database at {where} (set GQL_WALLET_DATABASE_URL, or "
        "run `gql-wallet migrate` to create it)"
    )
    new_file = path is not None and not path.exists()
    if path is not None and access is not Access.CREATE:
        if new_file:
            raise CommandError(
                f"no database at {path} (set GQL_WALLET_DATABASE_URL, or run "
                "`gql-wallet migrate` to create one)"
            )
        if path.is_file() and path.stat().st_size == 0:  # connecting would write a header
            raise no_schema
    if path is not None and new_file and not path.parent.is_dir():
        raise CommandError(f"cannot create a database at {path}: no folder {path.parent}")

    async def run() -> T:
        database = create_database(settings)
        try:
            try:
                async with database.read_transaction() as conn:
                    revision = await conn.run_sync(current_revision)
            except _DATABASE_ERRORS as error:
                raise CommandError(
                    f"cannot open the database at {where}: {_cause(error)}"
                ) from None
            if revision is None and access is not Access.CREATE:
                raise no_schema
            if access is Access.READ and revision != head_revision():
                raise CommandError(
                    f"the database at {where} is at schema revision {revision}, this gql-wallet "
                    f"reads {head_revision()} (run `gql-wallet migrate`)"
                )
            if access in (Access.CREATE, Access.CHANGE):
                try:
                    await upgrade_to_head(database)
                except _DATABASE_ERRORS as error:
                    raise CommandError(
                        f"cannot migrate the database at {where}: {_cause(error)}"
                    ) from None
            if new_file:
                print(f"Created a new database at {path}", file=sys.stderr)
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    async def key_count(database: Database) -> int:
        async with database.read_transaction() as conn:
            return await repo.count_api_keys(conn)

    delivering = settings.webhook_delivery == "process"
    if (args.workers > 1 or delivering) and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each process writes its metrics under this folder; every scrape sums them all.
        # prometheus_client reads it when imported: a lone server process starts again.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gql-wallet-metrics-")
        if args.workers == 1:
            sys.stdout.flush()
            sys.stderr.flush()
            again = [sys.executable, "-m", "gql_wallet.cli", *sys.argv[1:]]
            os.execv(sys.executable, again)  # noqa: S606 (this command, again)

    # Open (and migrate) once here, before any worker starts: a database that is not there
    # stops the start with one line. Then hint at the first step if needed.
    access = Access.CREATE if settings.migrate_on_start else Access.AS_IS
    if _with_database(settings, key_count, access) == 0:
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
    if settings.metrics_enabled and settings.metrics_port is not None:
        _serve_metrics(args.host, settings.metrics_port)
    deliverers = _Deliverers(settings) if delivering else None
    try:
        _run_uvicorn(settings, args)
    finally:
        if deliverers is not None:
            deliverers.stop(settings.shutdown_timeout_seconds)
    return 0


def _run_uvicorn(settings: Settings, args: argparse.Namespace) -> None:
    uvicorn.run(
        "gql_wallet.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # Ours, applied by uvicorn in each worker process too.
        log_config=logging_config(settings.log_format, settings.log_level),
        access_log=False,  # the request log line (gql_wallet.request) replaces it
        http=http_protocol(settings),
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_max_size=settings.max_body_bytes,
    )


def _deliver(settings: Settings, args: argparse.Namespace) -> int:
    from gql_wallet.webhooks.worker import deliver

    if args.nice:
        os.nice(args.nice)
    if args.idle and hasattr(os, "SCHED_IDLE"):  # Linux only
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with asyncio.Runner(loop_factory=_uvloop()) as runner:
        runner.run(deliver(settings, args.parent))
    return 0


def _uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed, as uvicorn picks it for the server."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Deliverers:
    """The delivery processes of `serve`: in its process group (a signal to the group reaches
    them), niced and idle-scheduled, started again if one ends while serve runs, and gone with
    serve."""

    def __init__(self, settings: Settings) -> None:
        self.command = [sys.executable, "-m", "gql_wallet.cli", "webhooks", "deliver"]
        self.command += ["--nice", str(settings.webhook_delivery_nice)]
        self.command += ["--idle"] if settings.webhook_delivery_idle else []
        self.command += ["--parent", str(os.getpid())]
        self.stopping = threading.Event()
        self.processes = [self._start() for _ in range(settings.webhook_delivery_processes)]
        for slot in range(len(self.processes)):
            threading.Thread(target=self._watch, args=(slot,), daemon=True).start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command)  # noqa: S603 (our own command)

    def _watch(self, slot: int) -> None:
        while True:
            code = self.processes[slot].wait()
            if self.stopping.wait(1.0):
                return
            print(f"gql-wallet: a webhook delivery process ended ({code}); starting another",
                  file=sys.stderr)  # fmt: skip
            self.processes[slot] = self._start()

    def stop(self, seconds: float) -> None:
        self.stopping.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_protocol(settings: Settings) -> str:
    """uvicorn's own protocol unless GQL_WALLET_HTTP_SINGLE_WRITE asks for ours."""
    return "gql_wallet.http_protocol:HttpProtocol" if settings.http_single_write else "auto"


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

    async def create(database: Database) -> str:
        return await create_api_key(database, settings.token_secret_bytes, organization, scopes)

    secret = _with_database(settings, create, Access.CREATE)
    print(
        f"Created an API key ({' '.join(scopes)}) for organization {organization!r}. "
        "It is shown only once:"
    )
    print(secret)
    return 0


def _list_keys(settings: Settings, _args: argparse.Namespace) -> int:
    async def keys(database: Database) -> list[repo.ApiKeyRecord]:
        async with database.read_transaction() as conn:
            return await repo.list_api_keys(conn)

    found = _with_database(settings, keys, Access.READ)
    print(f"{'KEY ID':<14} {'ORGANIZATION':<24} {'SCOPES':<28} {'CREATED':<20} REVOKED")
    for key in found:
        revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
        print(
            f"{key.public_id:<14} {key.organization[:24]:<24} {key.scopes:<28} "
            f"{key.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}"
        )
    return 0


def _revoke_key(settings: Settings, args: argparse.Namespace) -> int:
    # Accept the key id from `list` or the whole key.
    key_id = args.key.removeprefix(API_KEY_PREFIX).split("_")[0]

    async def revoke(database: Database) -> repo.ApiKeyRecord | None:
        return await revoke_api_key(database, key_id)

    key = _with_database(settings, revoke, Access.CHANGE)
    if key is None:
        print(f"no API key {key_id!r}", file=sys.stderr)
        return 1
    if key.revoked_at is not None:
        # The key is revoked, as asked: not an error, but nothing was done now.
        print(
            f"API key {key_id} was already revoked at "
            f"{key.revoked_at.strftime('%Y-%m-%d %H:%M:%S')} UTC; nothing changed"
        )
        return 0
    print(f"revoked API key {key_id} and every customer session it made")
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def done(_database: Database) -> None:
        return None

    _with_database(settings, done, Access.CREATE)
    print(f"database schema is at revision {head_revision()}")
    return 0


def _export_schema(_settings: Settings, _args: argparse.Namespace) -> int:
    from gql_wallet.graphql.schema import schema

    sys.stdout.write(schema.as_str() + "\n")
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    """An organization's ledger for a period, streamed to --output or stdout, with a progress
    bar on stderr when it is a terminal and the export does not go to it or into a pipe."""
    from gql_wallet.ledger import exports

    start, end = exports.parse_instant(args.from_), exports.parse_instant(args.to)
    errors = exports.check_export(start, end, args.format, settings.export_max_days)
    if errors:
        raise CommandError(f"--{(errors[0].field or ('?',))[-1]}: {errors[0].message}")
    assert isinstance(start, datetime)  # checked
    assert isinstance(end, datetime)

    async def run(database: Database) -> int:
        async with database.read_connection() as conn:
            organization_id = await repo.statements.organization_named(conn, args.organization)
        if organization_id is None:
            raise CommandError(f"no organization named {args.organization!r}")
        out = sys.stdout if args.output is None else args.output.open("w", newline="")
        try:
            async with exports.Export(database, organization_id, start, end, args.format) as job:
                total = await job.count() if _shows_progress(args.output) else None
                with _progress(total) as advance:
                    async for chunk in job.chunks():
                        out.write(chunk)
                        advance(job.exported)
                if args.statement is not None:
                    args.statement.write_text(await job.statement(), newline="")
                return job.exported
        finally:
            if out is not sys.stdout:
                out.close()

    count = _with_database(settings, run, Access.READ)
    print(f"exported {count} {'entry' if count == 1 else 'entries'}", file=sys.stderr)
    return 0


def _shows_progress(output: Path | None) -> bool:
    """A progress bar goes to a terminal's stderr, unless the export is written to that
    terminal or into a pipe."""
    to_file = output is not None or stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode)
    return sys.stderr.isatty() and to_file


@contextlib.contextmanager
def _progress(total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar of `total` rows on stderr; None: nothing."""
    if total is None:
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("exporting", total=total)
        yield lambda done: bar.update(task, completed=done)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    if args.statement is not None:
        return _verify_statement(settings, args.statement)
    report = _with_database(settings, audit, Access.READ)
    for problem in report.problems:
        print(f"INCONSISTENT {problem}")
    print(
        f"verified {_plural(report.wallets, 'wallet')} and "
        f"{_plural(report.transactions, 'transaction')}: {_plural(len(report.problems), 'problem')}"
    )
    return 1 if report.problems else 0


def _verify_statement(settings: Settings, path: Path) -> int:
    from gql_wallet.ledger import exports

    try:
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CommandError(f"cannot read {path}: {error}") from None

    async def check(database: Database) -> list[str]:
        return await exports.check_statement(database, rows)

    problems = _with_database(settings, check, Access.READ)
    for problem in problems:
        print(f"MISMATCH {problem}")
    print(
        f"verified {_plural(len(rows), 'statement row')} against the ledger: "
        f"{_plural(len(problems), 'problem')}"
    )
    return 1 if problems else 0


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

    webhooks = commands.add_parser("webhooks", help="webhook delivery")
    webhook_commands = webhooks.add_subparsers(dest="webhook_command", required=True)
    deliver = webhook_commands.add_parser(
        "deliver",
        help="send webhooks until stopped (SIGTERM); as many as wanted, on any hosts, may run "
        "at once. `gql-wallet serve` starts its own unless GQL_WALLET_WEBHOOK_DELIVERY says not",
    )
    deliver.add_argument("--nice", type=int, default=0, help=argparse.SUPPRESS)
    deliver.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    deliver.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    deliver.set_defaults(run=_deliver)

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
        "migrate",
        help="bring the database schema to the newest revision",
        description="Bring the database schema to the newest revision: creates the schema in "
        "an empty database, and the SQLite file if there is none (saying so). Safe to run "
        "while servers run, and from several processes at once (they migrate once). Exits 0 "
        "with the revision reached, 1 if the database cannot be opened or migrated.",
    )
    migrate.set_defaults(run=_migrate)

    export = commands.add_parser(
        "export-schema",
        help="print the GraphQL SDL",
        description="Print the GraphQL schema (SDL) the server serves, identical to the "
        "committed schema.graphql. Needs no database. Exits 0.",
    )
    export.set_defaults(run=_export_schema)

    ledger = commands.add_parser(
        "export",
        help="stream an organization's ledger for a period as CSV or NDJSON",
        description="Write every entry of an organization created after --from and at or "
        "before --to, in ledger order, from one snapshot of the database, as CSV (a header "
        "row; times in ISO 8601; amounts in minor units and, in *Decimal columns, in the "
        "currency's major unit) or NDJSON. Memory stays flat however long the ledger. A "
        "progress bar shows on a terminal. Only reads. Exits 0, or 1 with the reason.",
    )
    ledger.add_argument("--organization", required=True, help="organization name")
    ledger.add_argument("--from", dest="from_", required=True, metavar="TIME",
                        help="start, exclusive: ISO 8601 with its UTC offset")  # fmt: skip
    ledger.add_argument("--to", required=True, metavar="TIME",
                        help="end, inclusive: ISO 8601 with its UTC offset")  # fmt: skip
    ledger.add_argument("--format", default="csv", help="csv (default) or ndjson")
    ledger.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    ledger.add_argument(
        "--statement", type=Path, default=None, metavar="FILE",
        help="also write each wallet's opening balance, total and closing balance for the "
        "period (CSV, same snapshot), for `gql-wallet verify --statement FILE`",
    )  # fmt: skip
    ledger.set_defaults(run=_export)

    verify = commands.add_parser(
        "verify",
        help="audit every wallet's ledger; non-zero on problems",
        description="Audit every wallet in one snapshot: its balance equals the sum of its "
        "entries, the balanceAfter chain is unbroken, and no balance is negative. Only "
        "reads: never creates or migrates a database. Exits 0 when all is consistent, 1 "
        "naming each bad wallet (INCONSISTENT lines), or when there is no database, it "
        "cannot be opened, or its schema is not at the newest revision.",
    )
    verify.add_argument(
        "--statement", type=Path, default=None, metavar="FILE",
        help="instead, check a statement file of `gql-wallet export --statement` against the "
        "ledger (MISMATCH lines; exit 1 on any)",
    )  # fmt: skip
    verify.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = from_environment()
    configure_logging(settings.log_format, settings.log_level)
    try:
        result: int = args.run(settings, args)
    except CommandError as error:
        print(f"gql-wallet: {error}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
