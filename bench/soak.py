"""Memory soak: mixed load on one server for minutes while sampling the RSS of its processes.

Memory is flat when the total RSS of the server's processes (the uvicorn supervisor and its
workers) at the end is within 10% of what it was just after the warm-up.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.load import Measurement, run_wrk
from bench.peers import Peer, serving
from bench.seed import Tenants

MAX_GROWTH = 0.10
# Baseline and end are each the median of this many samples, so one spike does not decide.
WINDOW = 3


@dataclass(frozen=True)
class SoakResult:
    peer: str
    seconds: int
    warmup_seconds: int
    concurrency: int
    top_up_share: float
    samples: tuple[tuple[float, int], ...]
    load: Measurement

    def _after_warmup(self) -> list[int]:
        return [rss for t, rss in self.samples if t >= self.warmup_seconds]

    @property
    def baseline_bytes(self) -> int:
        return int(statistics.median(self._after_warmup()[:WINDOW]))

    @property
    def final_bytes(self) -> int:
        return int(statistics.median(self._after_warmup()[-WINDOW:]))

    @property
    def growth(self) -> float:
        return self.final_bytes / self.baseline_bytes - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "seconds": self.seconds,
            "warmup_seconds": self.warmup_seconds,
            "concurrency": self.concurrency,
            "top_up_share": self.top_up_share,
            "baseline_mib": round(self.baseline_bytes / 2**20, 1),
            "final_mib": round(self.final_bytes / 2**20, 1),
            "peak_mib": round(max(rss for _, rss in self.samples) / 2**20, 1),
            "growth": round(self.growth, 4),
            "load": self.load.to_json(),
            "samples": [[round(t, 1), rss] for t, rss in self.samples],
        }


def _server_rss(root: psutil.Process) -> int:
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_soak(
    peer: Peer,
    tenants: Tenants,
    *,
    seconds: int,
    warmup_seconds: int,
    interval: float,
    concurrency: int,
    top_up_share: float,
    log_dir: Path,
) -> SoakResult:
    if seconds <= warmup_seconds + WINDOW * interval:
        raise ValueError("the soak must outlast its warm-up by a few samples")
    samples: list[tuple[float, int]] = []
    with serving(peer, tenants, log_dir) as root, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        load = pool.submit(
            run_wrk,
            peer,
            tenants,
            mix={"lookup": 1 - top_up_share, "top_up": top_up_share},
            concurrency=concurrency,
            seconds=seconds,
            key_prefix=f"soak-{peer.name}-{time.time_ns()}",
        )
        while not load.done():
            samples.append((time.monotonic() - started, _server_rss(root)))
            time.sleep(interval)
        measurement = load.result()
    return SoakResult(
        peer=peer.name,
        seconds=seconds,
        warmup_seconds=warmup_seconds,
        concurrency=concurrency,
        top_up_share=top_up_share,
        samples=tuple(samples),
        load=measurement,
    )
