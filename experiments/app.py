"""What the platform needs from the science: the schema, its validation rules and the plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import Config, register_configs  # noqa: F401 - used by platform.app
from experiments.plans import build_plan  # noqa: F401
from platform.study import check_space
from platform.validate import in_range, one_of


def schema_instance() -> Config:
    return Config()


def _ranges(cfg: DictConfig) -> list[str]:
    p: list[str] = []
    p += in_range(cfg, "estep.num_samples", 1)
    p += in_range(cfg, "estep.max_thought_tokens", 1)
    p += in_range(cfg, "estep.num_shards", 1)
    p += in_range(cfg, "estep.context_chunks", 0)
    p += in_range(cfg, "estep.top_p", 1.0, 1.0)  # top-p distorts log q (PAPER.md)
    if (OmegaConf.select(cfg, "estep.temperature") or 1.0) <= 0:
        p.append(f"estep.temperature: must be > 0, got {cfg.estep.temperature}")
    p += in_range(cfg, "data.raw_mix_ratio", 0.0, 1.0)
    p += in_range(cfg, "data.warm_start_fraction", 0.0, 1.0)
    p += in_range(cfg, "data.num_train_docs", 1)
    p += in_range(cfg, "data.window", 8)
    p += in_range(cfg, "em.iterations", 0)
    p += in_range(cfg, "sweep.n_trials", 1)
    p += in_range(cfg, "sweep.parallel", 1)
    p += in_range(cfg, "mstep.batch_size", 1)
    p += in_range(cfg, "mstep.epochs", 0.0)
    p += in_range(cfg, "mstep.grad_clip", 0.0)
    p += in_range(cfg, "launcher.max_parallel_jobs", 1)
    p += in_range(cfg, "launcher.max_num_timeout", 0)
    if (OmegaConf.select(cfg, "mstep.lr") or 0) <= 0:
        p.append(f"mstep.lr: must be > 0, got {OmegaConf.select(cfg, 'mstep.lr')}")
    return p


def _choices(cfg: DictConfig) -> list[str]:
    p: list[str] = []
    p += one_of(cfg, "experiment.kind", ("raw", "synthetic", "bootstrap"))
    p += one_of(cfg, "experiment.baseline", ("none", "token_match", "flop_match"))
    p += one_of(cfg, "data.name", ("embedded", "jsonl", "parquet"))
    p += one_of(cfg, "data.format", ("random", "prior_only", "posterior_only", "raw"))
    p += one_of(cfg, "teacher.kind", ("oracle", "lm", "openai_compatible"))
    p += one_of(cfg, "sampler.backend", ("hf", "vllm"))
    p += one_of(cfg, "sampler.fan_out", ("n", "repeat"))
    p += one_of(cfg, "mstep.init", ("base", "previous"))
    p += one_of(cfg, "launcher.name", ("debug", "local", "slurm"))
    p += one_of(cfg, "sweep.sampler", ("tpe", "random", "grid", "nsga2"))
    p += one_of(cfg, "sweep.pruner", ("median", "none"))
    p += one_of(cfg, "model.dtype", ("float32", "bfloat16", "float16"))
    for i, obj in enumerate(cfg.sweep.objectives or []):
        p += one_of(cfg, f"sweep.objectives.{i}.direction", ("maximize", "minimize"))
    if cfg.experiment.kind == "raw" and cfg.data.format != "raw":
        p.append(f"data.format: a raw experiment trains on raw text; must be raw, got {cfg.data.format!r}")
    return p


def _paths(cfg: DictConfig) -> list[str]:
    p: list[str] = []
    if cfg.data.name in ("jsonl", "parquet"):
        path = cfg.data.path
        if not path or not Path(path).is_file():
            p.append(f"data.path: {path!r} is not a file (data={cfg.data.name} needs a {cfg.data.name} corpus)")
    if cfg.model.path and not Path(cfg.model.path).is_dir():
        p.append(f"model.path: {cfg.model.path!r} is not a folder holding a Hugging Face checkpoint")
    if cfg.teacher.kind == "lm" and not (cfg.teacher.model_path and Path(cfg.teacher.model_path).is_dir()):
        p.append(f"teacher.model_path: {cfg.teacher.model_path!r} is not a folder holding a Hugging Face checkpoint")
    return p


def _space(cfg: DictConfig) -> list[str]:
    from platform.config import ParamSpec

    space = {k: ParamSpec(**OmegaConf.to_container(v)) for k, v in (cfg.sweep.search_space or {}).items()}
    problems = check_space(space)
    for name in space:
        if OmegaConf.select(cfg, name, default="__missing__") == "__missing__":
            problems.append(f"sweep.search_space.{name}: names no config field")
    return problems


RULES: list[Any] = [_ranges, _choices, _paths, _space]
