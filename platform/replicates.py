"""Seeds as replicates: one Optuna trial runs its params once per seed (``sweep.seeds``).

Optuna has no repeated-seeds-per-trial (optuna #433, #6406), so a sweep over single-seed trials
optimizes noise. Here a trial's objective is the mean over its seeds and the standard error is
stored beside it; the value reported for pruning at iteration t is the mean over seeds of
iteration t, reported once every seed has reached it. Seeds of one trial share every stage whose
input does not involve the seed (the corpus, the oracle teacher's thoughts), through the cache.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import optuna

from platform.orchestrator import ReportFn


def mean_and_se(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and standard error of the mean (sample std / sqrt(n)); no error from one value."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass
class SeedReports:
    """Collects each seed's evaluations; reports the mean over seeds to the trial, prunes all seeds."""

    trial: optuna.Trial
    objectives: list[str]
    seeds: list[int]
    values: dict[int, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    pruned_at: Optional[int] = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_seed(self, seed: int) -> ReportFn:
        def report(stage: Any, metrics: dict[str, float], last: bool) -> None:
            self._record(seed, stage.iteration, metrics, last)
            if self.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned after iteration {self.pruned_at} (mean over seeds {self.seeds})")

        return report

    def _record(self, seed: int, iteration: Optional[int], metrics: dict[str, float], last: bool) -> None:
        if len(self.objectives) != 1 or self.objectives[0] not in metrics or iteration is None:
            return  # Optuna prunes single-objective studies only
        with self.lock:
            self.values[iteration][seed] = metrics[self.objectives[0]]
            if len(self.values[iteration]) < len(self.seeds) or self.pruned_at is not None:
                return
            self.trial.report(mean_and_se(list(self.values[iteration].values()))[0], iteration)
            if not last and self.trial.should_prune():
                self.pruned_at = iteration


def aggregate(objectives: list[str], per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The trial's values (means over seeds, in objective order) and the user attributes that keep
    the standard errors and every seed's value beside them."""
    values, attrs = [], {}
    for name in objectives:
        mean, se = mean_and_se([per_seed[s][name] for s in sorted(per_seed)])
        values.append(mean)
        attrs[f"{name}_se"] = se
        attrs[f"{name}_per_seed"] = {str(s): per_seed[s][name] for s in sorted(per_seed)}
    return {"values": values, "user_attrs": attrs}
