"""Compute budgets for a sweep (``sweep.budget``): researchers plan in FLOPs and GPU-hours, not trials.

The spend counts what this study's drivers computed: every stage that ran rather than came from
the cache, whichever trial asked for it and however that trial ended (pruned, failed, stopped).
It is kept in the study's user attributes, so a resumed sweep goes on from what it had spent.
When a cap is reached the driver starts no new trial; running trials finish (``on_cap: finish``)
or are stopped at their next stage with their jobs cancelled (``on_cap: stop``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from platform.stage import MARKER, Stage, shard_dir

SPEND_ATTR = "spend"
STOP_ATTR = "stopped_by_budget"


def stage_gpu_hours(stage: Stage, results: Path, record: dict[str, Any], gpus: int) -> float:
    """GPU-hours of a computed stage: its GPUs times its jobs' wall time (every shard's, for an array)."""
    wall = float(record.get("wall_s") or 0.0)
    for i in range(stage.num_shards if stage.num_shards > 1 else 0):
        marker = shard_dir(stage.out_dir(results), i, stage.num_shards) / MARKER
        if marker.exists():
            wall += float(json.loads(marker.read_text()).get("wall_s") or 0.0)
    return gpus * wall / 3600.0


@dataclass
class Spend:
    """What the study has spent; thread-safe (trials run in threads)."""

    flops: float = 0.0
    gpu_hours: float = 0.0
    stages: int = 0
    earlier_wall_s: float = 0.0  # wall-clock of earlier drivers of this study
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def resumed(cls, attrs: dict[str, Any]) -> "Spend":
        saved = attrs.get(SPEND_ATTR) or {}
        return cls(float(saved.get("flops", 0.0)), float(saved.get("gpu_hours", 0.0)), int(saved.get("stages", 0)),
                   float(saved.get("wall_s", 0.0)))

    def add(self, flops: float, gpu_hours: float) -> None:
        with self.lock:
            self.flops += flops
            self.gpu_hours += gpu_hours
            self.stages += 1

    @property
    def wall_s(self) -> float:
        return self.earlier_wall_s + time.time() - self.started

    def as_dict(self) -> dict[str, float]:
        with self.lock:
            return {"flops": self.flops, "gpu_hours": self.gpu_hours, "wall_s": self.wall_s, "stages": self.stages}

    def text(self) -> str:
        d = self.as_dict()
        return (f"{d['flops']:.3g} FLOPs, {d['gpu_hours']:.3g} GPU-hours, {d['wall_s'] / 3600:.3g} h wall-clock "
                f"over {d['stages']} computed stage(s)")


def exceeded(spend: Spend, budget: Any) -> Optional[str]:
    """Why the budget is spent (the first cap reached), or None."""
    if budget is None:
        return None
    d = spend.as_dict()
    caps = (("flops", budget.flops, d["flops"], "FLOPs"), ("gpu_hours", budget.gpu_hours, d["gpu_hours"], "GPU-hours"),
            ("wall_clock_h", budget.wall_clock_h, d["wall_s"] / 3600.0, "h wall-clock"))
    for name, cap, value, unit in caps:
        if cap is not None and value >= cap:
            return f"sweep.budget.{name}: spent {value:.3g} {unit} of {cap:.3g}"
    return None
