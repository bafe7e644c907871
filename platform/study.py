"""Optuna study: storage, sampler, pruner, search space. Driven through ask/tell.

hydra-optuna-sweeper requires optuna<3, so we drive Optuna directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from platform.config import ParamSpec, SweepConfig


def storage_for(sweep: SweepConfig, results: Path, study_name: str) -> Any:
    if sweep.storage:
        return sweep.storage  # any Optuna storage URL, e.g. postgresql://... on a cluster
    path = Path(results) / "optuna" / f"{study_name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def grid_of(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    grid = {}
    for name, spec in space.items():
        if spec.type != "categorical" or not spec.choices:
            raise ValueError(f"sweep.search_space.{name}: the grid sampler needs categorical choices")
        grid[name] = list(spec.choices)
    return grid


def build_sampler(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.seed, multivariate=True)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(sweep.search_space), seed=sweep.seed)
    if sweep.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=max(2, sweep.parallel * 2))
    raise ValueError(f"sweep.sampler: must be one of tpe, random, grid, nsga2; got {sweep.sampler!r}")


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "median" and len(sweep.objectives) == 1:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies


def open_study(sweep: SweepConfig, results: Path, study_name: str) -> optuna.Study:
    """Create the study, or load it when it exists: running the same command resumes it."""
    return optuna.create_study(
        study_name=study_name,
        storage=storage_for(sweep, results, study_name),
        sampler=build_sampler(sweep),
        pruner=build_pruner(sweep),
        directions=[o.direction for o in sweep.objectives],
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec.choices or []))
        elif spec.type == "int":
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        elif spec.type == "float":
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            raise ValueError(f"sweep.search_space.{name}.type: must be int, float or categorical; got {spec.type!r}")
    return params


def check_space(space: dict[str, ParamSpec]) -> list[str]:
    problems = []
    for name, spec in space.items():
        where = f"sweep.search_space.{name}"
        if spec.type == "categorical" and not spec.choices:
            problems.append(f"{where}.choices: a categorical parameter needs a non-empty list")
        elif spec.type in ("int", "float"):
            if spec.low is None or spec.high is None or spec.low > spec.high:
                problems.append(f"{where}: needs low <= high, got low={spec.low} high={spec.high}")
            elif spec.log and spec.low <= 0:
                problems.append(f"{where}.low: must be > 0 with log=true, got {spec.low}")
        elif spec.type not in ("categorical", "int", "float"):
            problems.append(f"{where}.type: must be int, float or categorical; got {spec.type!r}")
    return problems
