"""Vendor GraphiQL's browser assets into the package, or check that the vendored ones are exact.

The GraphiQL page must work offline, so React, ReactDOM and GraphiQL ship inside the package
(gql_wallet/static/graphiql/). This script is how they get there:

    python3 .ci/vendor_graphiql.py           # fetch the pinned versions, (re)write the assets
    python3 .ci/vendor_graphiql.py --check   # CI: the committed assets are the pinned ones

Each package is fetched with `npm pack NAME@VERSION` (the npm registry, nothing else). The
tarball's sha512 is compared with the one recorded in manifest.json (like a package-lock entry),
then the files are compared byte for byte with the committed copies. manifest.json also records
the SRI sha384 of every asset the page loads; the page puts them in `integrity` attributes and
tests/test_graphiql.py checks them against the files. To upgrade, change a version below, run
the script without --check, and commit the result.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "gql_wallet" / "static" / "graphiql"
MANIFEST = ASSETS / "manifest.json"

# (package, exact version, {file in the tarball: file name in ASSETS}).
# GraphiQL 4.1 is the last release with a UMD build; its UMD bundle needs React 18's UMD builds
# (React 19 ships none).
PINS: list[tuple[str, str, dict[str, str]]] = [
    (
        "react",
        "18.3.1",
        {"umd/react.production.min.js": "react.production.min.js", "LICENSE": "LICENSE.react"},
    ),
    (
        "react-dom",
        "18.3.1",
        {
            "umd/react-dom.production.min.js": "react-dom.production.min.js",
            "LICENSE": "LICENSE.react-dom",
        },
    ),
    (
        "graphiql",
        "4.1.2",
        {
            "graphiql.min.js": "graphiql.min.js",
            "graphiql.min.css": "graphiql.min.css",
            "LICENSE": "LICENSE.graphiql",
        },
    ),
]

# Our own files, loaded by the page next to the vendored ones: they get an SRI hash too.
OWN_ASSETS = ["page.js", "page.css"]


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def npm_pack(spec: str, directory: Path) -> tuple[bytes, str]:
    """The tarball of an exact package version, and the integrity npm reports for it."""
    result = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    (info,) = json.loads(result.stdout)
    tarball = (directory / info["filename"]).read_bytes()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if integrity != info["integrity"]:
        raise SystemExit(f"{spec}: the downloaded tarball does not match npm's integrity")
    return tarball, integrity


def extract(tarball: bytes, files: dict[str, str]) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        out = {}
        for source, target in files.items():
            member = archive.extractfile(f"package/{source}")
            if member is None:
                raise SystemExit(f"{source} is not a file in the tarball")
            out[target] = member.read()
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify, write nothing")
    check = parser.parse_args().check
    recorded = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"packages": {}}
    problems: list[str] = []
    packages: dict[str, dict[str, object]] = {}
    assets: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, files in PINS:
            tarball, integrity = npm_pack(f"{name}@{version}", Path(tmp))
            pinned = recorded["packages"].get(name, {})
            if check and (pinned.get("version"), pinned.get("integrity")) != (version, integrity):
                problems.append(f"{name}@{version}: tarball integrity differs from manifest.json")
            packages[name] = {"version": version, "integrity": integrity, "files": files}
            for target, data in extract(tarball, files).items():
                path = ASSETS / target
                if check:
                    if not path.exists() or path.read_bytes() != data:
                        problems.append(f"{target} differs from {name}@{version}'s {target}")
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                if not target.startswith("LICENSE"):
                    assets[target] = sri(data)
    for own in OWN_ASSETS:
        assets[own] = sri((ASSETS / own).read_bytes())
    manifest = {"packages": packages, "assets": assets}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if check:
        if MANIFEST.read_text() != text:
            problems.append("manifest.json is stale: run python3 .ci/vendor_graphiql.py")
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"GraphiQL assets match their pins: {', '.join(f'{n}@{v}' for n, v, _ in PINS)}")
        return 0
    MANIFEST.write_text(text)
    print(f"wrote {len(assets)} assets and {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
