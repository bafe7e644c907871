"""Benchmarks of the platform: ``python -m benchmarks.run [--smoke] [--only NAME]`` (``make bench``).

Every section module exposes ``run(smoke: bool) -> dict`` returning a *section*:
``{"title": str, "tables": {name: [row dict, ...]}, "summary": {...}, "notes": [str, ...]}``.
benchmarks/report.py turns the sections into JSON and Markdown. Helpers shared by the sections
live here; nothing in this package asserts a timing (the machine is shared and noisy).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def load_average() -> list[float]:
    """1/5/15-minute load averages: how busy the (shared) machine was while we measured."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s result and the wall seconds it took (one run)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed runs.

    The median, not the mean: another process grabbing a core for a second spoils one run, not the
    figure.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def paired_times(baseline: Callable[[], Any], candidate: Callable[[], Any], repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``baseline`` and ``candidate`` run alternately (after one untimed run of each).

    On a shared machine whose speed drifts over seconds, back-to-back pairs see the same conditions:
    the median of the per-pair ratios is the robust speedup, where two separate medians are not.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    baseline(), candidate()
    base, cand = [], []
    for _ in range(repeat):
        for fn, out in ((baseline, base), (candidate, cand)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return base, cand


def section(title: str, tables: dict[str, list[dict[str, Any]]] | None = None, summary: dict[str, Any] | None = None,
            notes: list[str] | None = None) -> dict[str, Any]:
    return {"title": title, "tables": tables or {}, "summary": summary or {}, "notes": list(notes or [])}
