"""Optuna study: storage, sampler, pruner, search space. Driven through ask/tell.

hydra-optuna-sweeper requires optuna<3, so we drive Optuna directly.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from platform.config import ParamSpec, SweepConfig

# A finite space up to this many points is enumerated, so that no trial repeats another's params.
MAX_ENUMERATED_POINTS = 100_000


def _rdb_storage(sweep: SweepConfig, attempts: int = 5) -> RDBStorage:
    """Optuna's RDB storage with heartbeats. Drivers started together on an empty database race to
    create Optuna's tables (PostgreSQL: duplicate key in pg_type); the losers try again and find
    them made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(sweep.storage, engine_kwargs={"pool_pre_ping": True},
                                  heartbeat_interval=sweep.heartbeat_interval, grace_period=sweep.grace_period)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def storage_for(sweep: SweepConfig, results: Path, study_name: str) -> Any:
    if sweep.storage:
        # any Optuna RDB URL, e.g. postgresql://... on a cluster: several drivers may share it, each
        # beating for its trials in flight (platform/multidriver.py)
        return _rdb_storage(sweep)
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
    if sweep.sampler == "grid":  # visits each point once by itself
        return optuna.samplers.GridSampler(grid_of(sweep.search_space), seed=sweep.seed)
    if sweep.sampler == "tpe":
        base: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=sweep.seed, multivariate=True)
    elif sweep.sampler == "random":
        base = optuna.samplers.RandomSampler(seed=sweep.seed)
    elif sweep.sampler == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=max(2, sweep.parallel * 2))
    else:
        raise ValueError(f"sweep.sampler: must be one of tpe, random, grid, nsga2; got {sweep.sampler!r}")
    dists = finite_distributions(sweep.search_space)
    return base if dists is None else UnvisitedSampler(base, dists)


def distribution_of(spec: ParamSpec) -> BaseDistribution:
    """The distribution ``suggest`` asks for (so a value sampled against it is accepted there)."""
    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.choices or []))
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return optuna.distributions.FloatDistribution(spec.low, spec.high, step=spec.step, log=spec.log)


def finite_distributions(space: dict[str, ParamSpec]) -> Optional[dict[str, BaseDistribution]]:
    """The space's distributions when it is a finite set of points (categorical and int params, at
    most MAX_ENUMERATED_POINTS of them); None otherwise."""
    if not space or any(spec.type not in ("categorical", "int") or (spec.type == "int" and spec.log)
                        for spec in space.values()):
        return None
    dists = {name: distribution_of(spec) for name, spec in space.items()}
    if math.prod(len(_values(d)) for d in dists.values()) > MAX_ENUMERATED_POINTS:
        return None
    return dists


def _values(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    assert isinstance(dist, IntDistribution)
    return list(range(dist.low, dist.high + 1, dist.step))


class UnvisitedSampler(optuna.samplers.BaseSampler):
    """A sampler over a finite space that never proposes a point another trial of the study holds
    (finished, running, or waiting in the queue) while an unvisited one remains.

    The wrapped sampler proposes the whole point at once (its relative params, then independent
    draws for the rest); a proposal that repeats a visited point is replaced by the nearest
    unvisited point (fewest params changed, ints by distance, ties in grid order), so the result is
    deterministic given the proposal. Trials enqueued with fixed params (a re-enqueued interrupted
    trial) keep them. Once every point is visited, proposals pass through unchanged.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, distributions: dict[str, BaseDistribution]):
        self.base = base
        self._dists = dict(distributions)
        self._names = list(self._dists)
        points = itertools.product(*(_values(self._dists[n]) for n in self._names))
        self._points = [(dict(zip(self._names, p)), self._key(dict(zip(self._names, p)))) for p in points]

    def _key(self, params: dict[str, Any]) -> Optional[tuple]:
        """The point as internal reprs (categorical: index), None when outside the space."""
        try:
            return tuple(self._dists[n].to_internal_repr(params[n]) for n in self._names)
        except (KeyError, ValueError):
            return None

    def _visited(self, study: optuna.Study, current: FrozenTrial) -> set[tuple]:
        seen = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == current.number:
                continue
            params = t.params if t.state != TrialState.WAITING else (t.system_attrs.get("fixed_params") or {})
            key = self._key(params)
            if key is not None:
                seen.add(key)
        return seen

    def _distance(self, a: tuple, b: tuple) -> float:
        d = 0.0
        for name, x, y in zip(self._names, a, b):
            dist = self._dists[name]
            if isinstance(dist, IntDistribution):
                d += abs(x - y) / max(1, dist.high - dist.low)
            else:
                d += float(x != y)
        return d

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        # every param is sampled here, at once, so that the whole point can be checked
        return {**self.base.infer_relative_search_space(study, trial), **self._dists}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = dict(self.base.sample_relative(study, trial, self.base.infer_relative_search_space(study, trial)))
        if trial.system_attrs.get("fixed_params"):
            return params  # an enqueued trial: its params are given
        for name, dist in self._dists.items():
            if name not in params and not dist.single():
                params[name] = self.base.sample_independent(study, trial, name, dist)
        key = self._key(params)
        visited = self._visited(study, trial)
        if key is None or key not in visited:
            return params
        free = [(point, k) for point, k in self._points if k not in visited]
        if not free:
            return params  # every point visited: the repeat goes ahead (the driver records it)
        return dict(min(free, key=lambda pk: self._distance(pk[1], key))[0])

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Optional[Sequence[float]]) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "median" and len(sweep.objectives) == 1:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies


def open_study(sweep: SweepConfig, results: Path, study_name: str) -> optuna.Study:
    """Create the study, or load it when it exists: running the same command resumes it."""
    study = optuna.create_study(
        study_name=study_name,
        storage=storage_for(sweep, results, study_name),
        sampler=build_sampler(sweep),
        pruner=build_pruner(sweep),
        directions=[o.direction for o in sweep.objectives],
        load_if_exists=True,
    )
    name_metrics(study, sweep)
    return study


def name_metrics(study: optuna.Study, sweep: SweepConfig) -> None:
    """Name the study's values after the objectives' metrics (accuracy, estep_flops), so Optuna's
    plots and the dashboard label them; written only when they differ from what is stored."""
    names = [o.metric for o in sweep.objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


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
