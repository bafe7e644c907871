"""Generic, science-free config sections: paths, sweep, launcher.

Schemas are dataclasses; YAML under ``conf/`` only overrides them. ``experiments.config`` composes
these into the root ``Config`` and registers it with Hydra's ConfigStore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class PathsConfig:
    results: str = "results"


@dataclass
class ParamSpec:
    """One search-space dimension declared in an experiment YAML."""

    type: str = "categorical"  # int | float | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None


@dataclass
class ObjectiveSpec:
    metric: str = "accuracy"  # a metric name reported by the trial
    direction: str = "maximize"  # maximize | minimize


@dataclass
class BudgetConfig:
    """Caps on what a sweep computes (platform/budget.py); None: no cap."""

    flops: Optional[float] = None
    gpu_hours: Optional[float] = None
    wall_clock_h: Optional[float] = None
    on_cap: str = "finish"  # finish: running trials finish | stop: they stop at their next stage, jobs cancelled


@dataclass
class SweepConfig:
    study_name: Optional[str] = None  # default: the experiment's name
    storage: Optional[str] = None  # Optuna storage URL; default: journal file under paths.results
    # With a storage URL (an RDB: postgresql://...), several drivers may run one study at once
    # (README "Several drivers on one study"). Each driver records a heartbeat for its trials in
    # flight every heartbeat_interval seconds; a RUNNING trial whose heartbeat is grace_period
    # seconds old (its driver died) is marked FAIL and re-enqueued with its params by a live one.
    heartbeat_interval: int = 60
    grace_period: int = 180
    n_trials: int = 4
    parallel: int = 2
    sampler: str = "tpe"  # tpe | random | grid | nsga2
    pruner: str = "median"  # median | none
    seed: int = 0  # the Optuna sampler's
    # replicate seeds: each trial runs its params once per seed (the run's `seed`); its value is the
    # mean over them, the standard error a user attribute beside it (platform/replicates.py). [] = one run
    seeds: list[int] = field(default_factory=list)
    objectives: list[ObjectiveSpec] = field(default_factory=lambda: [ObjectiveSpec()])
    # Optuna params land at these dotted config paths, e.g. "estep.num_samples".
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    # runs the trials are compared with, each an override list (platform/references.py)
    references: list[list[str]] = field(default_factory=list)
    live_interval_s: float = 5.0
    budget: BudgetConfig = field(default_factory=BudgetConfig)


@dataclass
class ResourceProfile:
    """Resources of one kind of job; mapped onto submitit parameters by the launcher."""

    gpus_per_task: int = 0
    cpus_per_task: int = 1
    tasks_per_node: int = 1
    nodes: int = 1
    mem_gb: Optional[float] = None
    timeout_min: int = 60


@dataclass
class LauncherConfig:
    name: str = "local"  # debug | local | slurm
    max_parallel_jobs: int = 2  # jobs at once: local subprocesses, debug in-driver jobs, a slurm array's limit
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch flags
    setup: list[str] = field(default_factory=list)  # shell lines run before each job
    poll_interval_s: float = 0.2
    # requeues of a checkpointable job after it hits its time limit (preemptions do not count)
    max_num_timeout: int = 3
    profiles: dict[str, ResourceProfile] = field(
        default_factory=lambda: {
            "default": ResourceProfile(),
            "estep": ResourceProfile(gpus_per_task=0),
            "mstep": ResourceProfile(),
            "eval": ResourceProfile(),
        }
    )
