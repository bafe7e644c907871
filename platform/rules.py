"""Validation rules of the platform's own config sections: ``sweep``, ``launcher``, ``paths``.

``platform.validate.validate`` runs them (``check_platform_sections``) on every config, before the
app's rules (``App.rules``). They know no science: the one field outside these sections they look
at is whichever one a search-space entry names, and only to check that it exists. ``paths`` has no
rule yet beyond its schema.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from platform.checks import check_table, one_of, schema_field

_MISSING = "__missing__"


RANGES = {"sweep.n_trials": (1, None), "sweep.parallel": (1, None), "launcher.max_parallel_jobs": (1, None),
          "launcher.max_num_timeout": (0, None), "sweep.budget.flops": (0.0, None), "sweep.budget.gpu_hours": (0.0, None),
          "sweep.budget.wall_clock_h": (0.0, None), "sweep.heartbeat_interval": (1, None), "sweep.grace_period": (1, None)}
CHOICES = {"launcher.name": ("debug", "local", "slurm"), "sweep.sampler": ("tpe", "random", "grid", "nsga2"),
           "sweep.pruner": ("median", "none"), "sweep.budget.on_cap": ("finish", "stop")}


def _table(cfg: DictConfig) -> list[str]:
    p = check_table(cfg, RANGES, CHOICES)
    if OmegaConf.select(cfg, "sweep.seeds") and "seed" in (OmegaConf.select(cfg, "sweep.search_space") or {}):
        p.append("sweep.seeds: replicate seeds set the run seed of every trial, so sweep.search_space.seed cannot "
                 "also draw it; drop one of them")
    for i, _ in enumerate(OmegaConf.select(cfg, "sweep.objectives") or []):
        p += one_of(cfg, f"sweep.objectives.{i}.direction", ("maximize", "minimize"))
    return p + _heartbeat(cfg)


def _heartbeat(cfg: DictConfig) -> list[str]:
    from platform.config import SweepConfig

    default = SweepConfig()  # a field no YAML sets is absent here: its default holds
    beat = OmegaConf.select(cfg, "sweep.heartbeat_interval", default=default.heartbeat_interval)
    grace = OmegaConf.select(cfg, "sweep.grace_period", default=default.grace_period)
    if isinstance(beat, int) and isinstance(grace, int) and 1 <= beat and grace <= beat:
        # a heartbeat recorded a little late must not make a live driver's trial look dead
        return [f"sweep.grace_period: must exceed sweep.heartbeat_interval ({beat}), got {grace}"]
    return []


def _space(cfg: DictConfig, schema: type) -> list[str]:
    """Each search-space entry is a well-formed dimension and names a field of the config: one the
    composed config holds, or one of the schema's (a field no YAML sets still has its default)."""
    from platform.config import ParamSpec
    from platform.study import check_space

    entries = OmegaConf.select(cfg, "sweep.search_space") or {}
    space = {k: ParamSpec(**OmegaConf.to_container(v)) for k, v in entries.items()}
    problems = check_space(space)
    for name in space:
        if OmegaConf.select(cfg, name, default=_MISSING) == _MISSING and not schema_field(schema, name)[0]:
            problems.append(f"sweep.search_space.{name}: names no config field")
    return problems


def check_platform_sections(cfg: DictConfig, schema: type) -> list[str]:
    """Every problem of the platform's own sections of ``cfg`` (a composed config of ``schema``)."""
    return [*_table(cfg), *_space(cfg, schema)]
