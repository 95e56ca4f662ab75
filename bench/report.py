"""Targets, machine facts and the outputs of a run: latest.json, latest.md and latest.png."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.load import SCENARIOS, Cell
from bench.soak import MAX_GROWTH, SoakResult

TARGET_CONCURRENCY = 32
MAX_P99_MS = 50.0


@dataclass(frozen=True)
class Target:
    """`passed` is None when the run did not measure what the target needs (a run of a subset
    of the peers or scenarios): neither a pass nor a fail."""

    name: str
    measured: float | None
    needed: str
    passed: bool | None

    @property
    def result(self) -> str:
        return "NOT RUN" if self.passed is None else "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "needed": self.needed,
            "passed": self.passed,
        }


def _cell(cells: list[Cell], peer: str, scenario: str) -> Cell | None:
    for cell in cells:
        if (cell.peer, cell.scenario, cell.concurrency) == (peer, scenario, TARGET_CONCURRENCY):
            return cell
    return None


def _ratio_target(
    cells: list[Cell], name: str, scenario: str, ours: str, theirs: str, at_least: float
) -> Target:
    mine, peer = _cell(cells, ours, scenario), _cell(cells, theirs, scenario)
    if mine is None or peer is None:
        return Target(name, None, f">= {at_least:.2f}x", None)
    if peer.throughput == 0:
        return Target(name, None, f">= {at_least:.2f}x", False)
    ratio = mine.throughput / peer.throughput
    return Target(name, round(ratio, 3), f">= {at_least:.2f}x", ratio >= at_least)


def _p99_target(cells: list[Cell], peer: str, scenario: str) -> Target:
    cell = _cell(cells, peer, scenario)
    name = f"p99 {scenario}, {peer}, c={TARGET_CONCURRENCY} (ms)"
    needed = f"<= {MAX_P99_MS:.0f} ms"
    if cell is None:
        return Target(name, None, needed, None)
    return Target(name, round(cell.p99_ms, 2), needed, cell.p99_ms <= MAX_P99_MS)


# Not targets: where the gap is. ours / theirs, throughput at the target concurrency.
REFERENCE_RATIOS = (
    (
        "gql_wallet pg 2w / bare Starlette + asyncpg same SQL (the GraphQL + ORM layers)",
        "gql_pg_w2",
        "bare_pg_w2",
    ),
    (
        "bare Starlette + asyncpg 2w / PostGraphile (the Python web stack alone)",
        "bare_pg_w2",
        "postgraphile",
    ),
)


def reference_ratios(cells: list[Cell]) -> list[tuple[str, str, float | None]]:
    """(what, scenario, ratio) for each REFERENCE_RATIOS pair and scenario both measured."""
    found = []
    for name, ours, theirs in REFERENCE_RATIOS:
        for scenario in SCENARIOS:
            mine, peer = _cell(cells, ours, scenario), _cell(cells, theirs, scenario)
            if mine is None or peer is None:
                continue
            ratio = round(mine.throughput / peer.throughput, 3) if peer.throughput else None
            found.append((name, scenario, ratio))
    return found


# Issue 16: the documents a client writes (bench/peers.py), against PostGraphile's equivalents.
ISSUE_16_TARGETS = (
    ("wallet pages/s (wallet + last 10 entries)", "wallet_page"),
    ("charges/s (full payload)", "charge"),
    ("100-wallet pages/s", "wallets_page"),
)


def check_targets(cells: list[Cell], soak: SoakResult | None) -> list[Target]:
    """The targets of issues 7 and 16, each a ratio or a bound from this same run, at c=32."""
    c = TARGET_CONCURRENCY
    targets = [
        _ratio_target(
            cells,
            f"lookups/s, gql_wallet pg 2w / PostGraphile, c={c}",
            "lookup",
            "gql_pg_w2",
            "postgraphile",
            1.0,
        ),
        _ratio_target(
            cells,
            f"top-ups/s, gql_wallet pg 2w / PostGraphile, c={c}",
            "top_up",
            "gql_pg_w2",
            "postgraphile",
            1.0,
        ),
        _ratio_target(
            cells,
            f"top-ups/s, gql_wallet pg 2w / pgbench same transaction, c={c}",
            "top_up",
            "gql_pg_w2",
            "pgbench",
            0.5,
        ),
    ]
    for scenario in ("lookup", "top_up"):
        targets.append(
            _ratio_target(
                cells,
                f"{scenario} req/s, gql_wallet sqlite 2w / bare Starlette same SQL, c={c}",
                scenario,
                "gql_sqlite_w2",
                "bare_sqlite_w2",
                1 / 1.5,
            )
        )
    for peer in ("gql_pg_w2", "gql_sqlite_w2"):
        for scenario in ("lookup", "top_up"):
            targets.append(_p99_target(cells, peer, scenario))
    for what, scenario in ISSUE_16_TARGETS:
        targets.append(
            _ratio_target(
                cells,
                f"{what}, gql_wallet pg 2w / PostGraphile, c={c}",
                scenario,
                "gql_pg_w2",
                "postgraphile",
                1.0,
            )
        )
        targets.append(_p99_target(cells, "gql_pg_w2", scenario))
    if soak is not None:
        targets.append(
            Target(
                f"RSS growth after warm-up, {soak.peer}, {soak.seconds}s soak",
                round(soak.growth, 4),
                f"<= {MAX_GROWTH:.0%}",
                soak.growth <= MAX_GROWTH,
            )
        )
    failures = sum(cell.failures for cell in cells) + (soak.load.failures if soak else 0)
    targets.append(Target("failed requests in the whole run", failures, "0", failures == 0))
    return targets


# --- machine -------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    """The first line a version command prints, or "missing"."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return "missing"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine_facts(postgres_version: str, node: Path) -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "postgresql": postgres_version,
        "python": platform.python_version(),
        "node": _first_line([str(node), "--version"]),
        "wrk": _first_line(["wrk", "--version"]),
        "pgbench": _first_line(["pgbench", "--version"]),
    }


# --- outputs -------------------------------------------------------------------------------


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def markdown(
    cells: list[Cell], targets: list[Target], soak: SoakResult | None, meta: dict[str, Any]
) -> str:
    machine = meta["machine"]
    config = meta["config"]
    lines = [
        f"Run of {meta['finished_at']} on {machine['nproc']} x {machine['cpu_model']}, "
        f"{machine['ram_gib']} GiB RAM, {machine['postgresql'].split(' on ')[0]}, "
        f"load average {machine['load_average_at_start']} at start and "
        f"{machine['load_average_at_end']} at the end (the machine is shared). "
        f"{config['rounds']} rounds x {config['seconds']} s per cell, medians; "
        f"{config['wallets']:,} wallets in {config['organizations']} organizations.",
        "",
        "| peer | scenario | c | req/s (median) | p50 ms | p99 ms | failed / requests |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell.label} | {cell.scenario} | {cell.concurrency} | {cell.throughput:,.0f} | "
            f"{cell.p50_ms:.2f} | {cell.p99_ms:.2f} | {cell.failures} / {cell.requests:,} |"
        )
    lines += ["", "| target | measured | needed | result |", "|---|---:|---|---|"]
    for target in targets:
        measured = "n/a" if target.measured is None else f"{target.measured:g}"
        lines.append(f"| {target.name} | {measured} | {target.needed} | {target.result} |")
    if references := reference_ratios(cells):
        lines += ["", "| where the gap is (not a target) | scenario | ratio |", "|---|---|---:|"]
        for name, scenario, ratio in references:
            lines.append(f"| {name} | {scenario} | {'n/a' if ratio is None else f'{ratio:g}'} |")
    if soak is not None:
        lines += [
            "",
            f"Soak: {soak.peer}, {soak.seconds} s at c={soak.concurrency}, "
            f"{soak.top_up_share:.0%} top-ups, {soak.load.throughput:,.0f} req/s, "
            f"{soak.load.failures} failed. Server RSS (all processes) "
            f"{soak.baseline_bytes / 2**20:.1f} MiB after the {soak.warmup_seconds} s warm-up, "
            f"{soak.final_bytes / 2**20:.1f} MiB at the end ({soak.growth:+.1%}).",
        ]
    return "\n".join(lines) + "\n"


def chart(path: Path, cells: list[Cell], soak: SoakResult | None, title: str) -> None:
    scenarios = [s for s in SCENARIOS if any(cell.scenario == s for cell in cells)]
    panels = len(scenarios) + (1 if soak else 0)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(6 * columns, 5.5 * rows), squeeze=False)
    axes = list(grid.flat)
    for unused in axes[panels:]:
        unused.set_visible(False)
    concurrencies = sorted({cell.concurrency for cell in cells})
    width = 0.8 / len(concurrencies)
    for axis, scenario in zip(axes, scenarios, strict=False):
        peers = list(dict.fromkeys(cell.peer for cell in cells if cell.scenario == scenario))
        for offset, concurrency in enumerate(concurrencies):
            values = [
                next(
                    (
                        cell.throughput
                        for cell in cells
                        if (cell.peer, cell.scenario, cell.concurrency)
                        == (peer, scenario, concurrency)
                    ),
                    0.0,
                )
                for peer in peers
            ]
            positions = [
                i + (offset - (len(concurrencies) - 1) / 2) * width for i in range(len(peers))
            ]
            bars = axis.bar(positions, values, width, label=f"c={concurrency}")
            axis.bar_label(
                bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, rotation=90, padding=2
            )
        axis.set_xticks(range(len(peers)), peers, rotation=30, ha="right", fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("successful requests/s (median, log scale)")
        axis.set_title(scenario.replace("_", "-"))
        axis.legend()
        axis.margins(y=0.25)
    if soak is not None:
        axis = axes[panels - 1]
        axis.plot(
            [t for t, _ in soak.samples], [rss / 2**20 for _, rss in soak.samples], marker="."
        )
        axis.axvline(soak.warmup_seconds, color="grey", linestyle="--", label="end of warm-up")
        axis.axhline(
            soak.baseline_bytes * (1 + MAX_GROWTH) / 2**20,
            color="red",
            linestyle=":",
            label="+10% of baseline",
        )
        axis.set_xlabel("seconds")
        axis.set_ylabel("server RSS, all processes (MiB)")
        axis.set_title(f"memory soak, {soak.peer}")
        peak = max(rss for _, rss in soak.samples)
        axis.set_ylim(0, max(peak, soak.baseline_bytes * (1 + MAX_GROWTH)) * 1.08 / 2**20)
        axis.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
