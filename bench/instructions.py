"""Instructions per request of the app itself: `.venv/bin/python -m bench.instructions`.

`python -m bench.cpu` under valgrind's callgrind, twice (`--fewer` and `--more` requests), and
the difference of the two totals divided by the difference of the requests: start-up, imports
and the warm-up cancel out. Instructions are counted, not timed, so a busy, shared machine
moves them little (about 1% between runs of the same code), where CPU time moves 10-20%: use it
to compare two versions of the code, alternately. It needs valgrind (`apt-get install
valgrind`) and the profile database of `python -m bench.profile`, and takes about a minute per
300 requests. Leaves out uvicorn, wrk and the database server, as `bench.cpu` does.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from bench.cpu import scenario_arguments

_COLLECTED = re.compile(r"Collected : (\d+)")


def _instructions(scenario: str, requests: int, database_url: str) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.cpu", "--scenario", scenario]
    command += ["--requests", str(requests), "--database-url", database_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    scenario_arguments(parser)
    parser.add_argument("--fewer", type=int, default=300)
    parser.add_argument("--more", type=int, default=900)
    args = parser.parse_args(argv)
    if not 0 < args.fewer < args.more:
        parser.error("--fewer must be above 0 and below --more")
    fewer = _instructions(args.scenario, args.fewer, args.database_url)
    more = _instructions(args.scenario, args.more, args.database_url)
    per_request = (more - fewer) / (args.more - args.fewer)
    print(f"{args.scenario}: {per_request / 1000:,.0f}k instructions per request (in-process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
