"""Validation rules of the platform's own config sections: ``sweep``, ``launcher``, ``paths``.

``platform.validate.validate`` runs them (``check_platform_sections``) on every config, before the
app's rules (``App.rules``). They know no science: the one field outside these sections they look
at is whichever one a search-space entry names, and only to check that it exists. ``paths`` has no
rule yet beyond its schema.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from platform.checks import in_range, one_of, schema_field

_MISSING = "__missing__"


def _ranges(cfg: DictConfig) -> list[str]:
    p: list[str] = []
    p += in_range(cfg, "sweep.n_trials", 1)
    p += in_range(cfg, "sweep.parallel", 1)
    p += in_range(cfg, "launcher.max_parallel_jobs", 1)
    p += in_range(cfg, "launcher.max_num_timeout", 0)
    return p


def _choices(cfg: DictConfig) -> list[str]:
    p: list[str] = []
    p += one_of(cfg, "launcher.name", ("debug", "local", "slurm"))
    p += one_of(cfg, "sweep.sampler", ("tpe", "random", "grid", "nsga2"))
    p += one_of(cfg, "sweep.pruner", ("median", "none"))
    for i, _ in enumerate(OmegaConf.select(cfg, "sweep.objectives") or []):
        p += one_of(cfg, f"sweep.objectives.{i}.direction", ("maximize", "minimize"))
    return p


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
    return [*_ranges(cfg), *_choices(cfg), *_space(cfg, schema)]
