"""A science-free app for testing the platform's driver, cache and store quickly.

Plan: prepare -> (train[it] -> score[it]) per iteration. Stages sleep a little and append a line to
``<results>/calls.log`` each time they really run, so tests can count recomputation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from platform.app import App
from platform.compose import to_dict
from platform.config import LauncherConfig, PathsConfig, SweepConfig
from platform.plan import Plan, toposort
from platform.stage import Stage
from platform.checks import in_range


@dataclass
class WorkConfig:
    iterations: int = 2
    sleep_s: float = 0.05
    x: float = 0.5
    fail_at: Optional[int] = None  # iteration whose train stage raises
    nan_at: Optional[int] = None  # iteration whose train loss is NaN
    shards: int = 1
    # SLURM tests: shard 1 of the E-step raises in trials whose x equals fail_shard_x
    fail_shard_x: Optional[float] = None
    shard_sleep_s: Optional[float] = None  # E-step shards sleep this long instead of sleep_s
    # prefixes every stage name, so sacct can tell one test's jobs from another's by job name
    stage_prefix: str = ""


@dataclass
class ExperimentConfig:
    name: str = "toy"
    kind: str = "toy"


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    work: WorkConfig = field(default_factory=WorkConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    dry_run: bool = False


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def _work(cfg: Any) -> list[str]:
    return in_range(cfg, "work.x", 0.0, 1.0)


def _log(ctx: Any, what: str) -> None:
    results = Path(ctx.out_dir).parents[2] if "shards" not in str(ctx.out_dir) else Path(ctx.out_dir).parents[4]
    with open(results / "calls.log", "a") as f:
        f.write(json.dumps({"stage": what, "key": ctx.key, "shard": ctx.shard_index}) + "\n")


def _fresh_metrics(ctx: Any) -> None:
    """A rerun after a killed attempt starts over: drop the rows that attempt wrote (as the M-step
    truncates its metrics to the checkpoint it resumes from), so no metric is ingested twice."""
    (Path(ctx.out_dir) / "metrics.jsonl").unlink(missing_ok=True)


def prepare(ctx: Any) -> dict:
    _log(ctx, "prepare")
    time.sleep(ctx.params["sleep_s"])
    (ctx.out_dir / "data.json").write_text(json.dumps({"n": 10}))
    return {"tokens_in": 10, "tokens_out": 0, "flops": 1.0}


def shard(ctx: Any) -> dict:
    _log(ctx, "shard")
    cfg = ctx.params
    if cfg.get("fail_shard_x") is not None and cfg["fail_shard_x"] == cfg["x"] and ctx.shard_index == 1:
        raise ValueError(f"toy shard {ctx.shard_index} exploded on purpose at x={cfg['x']}")
    time.sleep(cfg["sleep_s"] if cfg.get("shard_sleep_s") is None else cfg["shard_sleep_s"])
    (ctx.out_dir / "part.json").write_text(json.dumps({"i": ctx.shard_index}))
    return {"tokens_in": 1, "tokens_out": 1, "flops": 2.0}


def merge(ctx: Any) -> dict:
    _log(ctx, "merge")
    _fresh_metrics(ctx)
    parts = sorted((ctx.out_dir / "shards").glob("*/part.json"))
    ctx.write_metrics([{"name": "parts", "step": 0, "value": len(parts)}])
    return {"tokens_in": 0, "tokens_out": 0, "flops": 2.0 * len(parts)}


def train(ctx: Any) -> dict:
    _log(ctx, "train")
    cfg = ctx.params
    it = ctx.iteration
    if cfg["fail_at"] == it:
        raise RuntimeError(f"toy failure at iteration {it}")
    _fresh_metrics(ctx)
    for step in range(3):
        time.sleep(cfg["sleep_s"])
        loss = float("nan") if cfg["nan_at"] == it else 1.0 / (1 + step + it)
        if math.isnan(loss):
            raise FloatingPointError(f"loss is NaN at step {step}")
        ctx.write_metrics([{"name": "loss", "step": step, "value": loss}])
    return {"tokens_in": 100, "tokens_out": 0, "flops": 600.0}


def score(ctx: Any) -> dict:
    _log(ctx, "score")
    _fresh_metrics(ctx)
    x, it = ctx.params["x"], ctx.iteration
    # the run seed moves the score a little, so replicate seeds have a standard error to show
    value = 1 - (x - 0.3) ** 2 + 0.01 * it + 0.001 * ctx.params.get("seed", 0)
    ctx.write_metrics([{"name": "accuracy", "step": 0, "value": value}])
    return {"tokens_in": 0, "tokens_out": 0, "flops": 1.0}


def build_plan(cfg: Any) -> Plan:
    w = to_dict(cfg.work)
    pre = w["stage_prefix"]
    # the SLURM-only options enter a stage's config (and so its cache key) only when set
    shard_extra = {k: w[k] for k in ("fail_shard_x", "shard_sleep_s") if w[k] is not None}
    prep = Stage(pre + "prepare", "tests.platform.toyapp.app:prepare", {"sleep_s": w["sleep_s"]})
    model, reports = prep, []
    for it in range(w["iterations"]):
        inputs = {"prev": model}
        if w["shards"] > 1:
            inputs["shards"] = Stage(pre + "estep", "tests.platform.toyapp.app:shard",
                                     {"sleep_s": w["sleep_s"], "x": w["x"], **shard_extra},
                                     {"prev": model}, iteration=it, num_shards=w["shards"],
                                     merge_fn="tests.platform.toyapp.app:merge")
        model = Stage(pre + "mstep", "tests.platform.toyapp.app:train",
                      {k: w[k] for k in ("sleep_s", "fail_at", "nan_at", "x")}, inputs, iteration=it)
        score_params = {"x": w["x"], **({"seed": cfg.seed} if cfg.seed else {})}
        ev = Stage(pre + "eval", "tests.platform.toyapp.app:score", score_params, {"model": model}, iteration=it)
        reports.append(ev)
    return Plan("toy", toposort(reports), reports)


APP = App(
    name="toy",
    schema=Config,
    register_configs=register_configs,
    build_plan=build_plan,
    rules=(_work,),
    compute_buckets={"estep": "estep_flops", "mstep": "train_flops", "eval": "eval_flops"},
    total_buckets=("estep_flops", "train_flops"),
    summary_metrics=(("mstep", "loss"),),
)
