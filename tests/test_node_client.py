"""The suite installs the npm client it drives (tests/node) itself, once, from its lock file."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import NODE_CLIENT, install_node_client

ROOT = Path(__file__).resolve().parents[1]


def client_copy(tmp_path: Path) -> Path:
    """tests/node's manifest and lock file, without node_modules."""
    directory = tmp_path / "node"
    directory.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_CLIENT / name, directory / name)
    return directory


def installed_version(directory: Path, package: str) -> str:
    manifest = directory / "node_modules" / package / "package.json"
    return str(json.loads(manifest.read_text())["version"])


def locked_version(directory: Path, package: str) -> str:
    lock = json.loads((directory / "package-lock.json").read_text())
    return str(lock["packages"][f"node_modules/{package}"]["version"])


def waiters_on(lock: Path) -> int:
    """Processes blocked on an flock of `lock` (Linux's /proc/locks marks them with ->)."""
    inode = f":{os.stat(lock).st_ino} "
    return sum(
        1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line
    )


def test_concurrent_test_processes_run_npm_ci_once(tmp_path: Path) -> None:
    """Two pytest processes (xdist workers) that start together: one installs, the other waits
    for it and then finds node_modules current."""
    directory = client_copy(tmp_path)
    lock = directory / ".npm-ci.lock"
    script = (
        "import sys; from pathlib import Path; from tests.conftest import install_node_client; "
        "print(install_node_client(Path(sys.argv[1])))"
    )
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # both start while this one holds the lock
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(directory)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while waiters_on(lock) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiters_on(lock) == 2, "the installs did not wait for the lock"
        assert not (directory / "node_modules").exists()
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(stdout.strip() for stdout, _ in outputs) == ["False", "True"]
    assert installed_version(directory, "graphql-ws") == locked_version(directory, "graphql-ws")


def test_missing_or_stale_node_modules_are_installed_from_the_lock_file(tmp_path: Path) -> None:
    directory = client_copy(tmp_path)
    assert install_node_client(directory) is True  # none installed
    assert install_node_client(directory) is False  # current: nothing to do
    manifest = directory / "node_modules" / "ws" / "package.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": "0.0.1"}))
    assert install_node_client(directory) is True  # stale
    for package in ("graphql", "graphql-ws", "ws"):
        assert installed_version(directory, package) == locked_version(directory, package)


def test_missing_node_fails_the_run_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither node nor npm on it
    with pytest.raises(pytest.fail.Exception, match=r"node and npm not found.*Node\.js 20\+"):
        install_node_client(client_copy(tmp_path))
    assert not (tmp_path / "node" / "node_modules").exists()
