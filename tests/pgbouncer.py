"""A real PgBouncer for the tests and the benchmarks: Debian's package, in transaction pooling
mode, on the loopback address, in front of a PostgreSQL with trust authentication."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def missing() -> str | None:
    """Why PgBouncer cannot run here, or None."""
    if Path(PGBOUNCER).exists():
        return None
    return f"PgBouncer not found at {PGBOUNCER} (apt-get install pgbouncer)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Bouncer:
    """A real PgBouncer in transaction pooling mode in front of the test PostgreSQL."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    postgres_server: str  # the URL of the PostgreSQL behind it

    def url(self, database: str) -> str:
        return (
            make_url(self.postgres_server)
            .set(port=self.port, database=database)
            .render_as_string(hide_password=False)
        )

    def show(self, what: str) -> list[dict[str, str]]:
        """SHOW `what` on PgBouncer's admin console (POOLS, STATS, ...), by psql: the console
        speaks only the simple query protocol."""
        answer = subprocess.run(
            ["psql", "-X", "-A", "-F", "\t", "-d", self.url("pgbouncer"), "-c", f"SHOW {what}"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        header, *rows = answer.stdout.splitlines()[:-1]  # the last line counts the rows
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]


@contextmanager
def run_pgbouncer(
    directory: Path,
    postgres_server: str,
    *,
    pool_size: int = 20,
    max_client_conn: int = 1000,
    configure: Callable[[str, int], str] | None = None,
) -> Iterator[Bouncer]:
    """PgBouncer (Debian's package) with its defaults but for transaction pooling, the usual
    ignore_startup_parameters, `pool_size` server connections per database and user, and room
    for `max_client_conn` clients, in front of the PostgreSQL of the URL `postgres_server`
    (trust authentication, as there); or `configure(directory_path, port)`'s pgbouncer.ini. It
    refuses to run as root: as root it runs as `postgres`."""
    if (why := missing()) is not None:
        raise RuntimeError(why)
    server = make_url(postgres_server)
    user = server.username or "postgres"
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    ini = (
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\nadmin_users = {user}\n"
        "pool_mode = transaction\nignore_startup_parameters = extra_float_digits\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = {max_client_conn}\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
    )
    if configure is not None:
        ini = configure(str(directory), port)
    (directory / "pgbouncer.ini").write_text(ini)
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        directory.chmod(0o777)
        for name in ("users.txt", "pgbouncer.ini"):
            (directory / name).chmod(0o644)
        command = ["runuser", "-u", "postgres", "--", *command]
    with (directory / "stderr.txt").open("wb") as stderr:
        process = subprocess.Popen(
            command, stdout=stderr, stderr=subprocess.STDOUT, start_new_session=True
        )
    bouncer = Bouncer(port, directory, process, postgres_server)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                said = [(directory / name) for name in ("stderr.txt", "pgbouncer.log")]
                raise RuntimeError(
                    "pgbouncer exited: " + " ".join(p.read_text() for p in said if p.exists())
                )
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("pgbouncer did not start")
            time.sleep(0.05)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def pgbouncer_directory() -> Iterator[Path]:
    """A folder PgBouncer can read and write in when it runs as another user (pytest's own
    temporary folders are private to this one)."""
    directory = Path(tempfile.mkdtemp(prefix="gqlw-pgbouncer-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
