"""One run of an experiment: apply a trial's params, build its plan, execute it, record the outcome."""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from platform.app import load_app
from platform.compose import to_dict
from platform.plan import Plan
from platform.orchestrator import Orchestrator, ReportFn, StageFailed
from platform.rundir import RunDir, git_info
from platform.validate import validate


@dataclass
class TrialSpec:
    cfg: Any  # typed Config with the trial's params applied
    raw: DictConfig
    params: dict[str, Any]
    overrides: list[str]
    study: Optional[str] = None
    trial: Optional[int] = None


def apply_params(raw: DictConfig, params: dict[str, Any], overrides: list[str], study: Optional[str] = None,
                 trial: Optional[int] = None) -> TrialSpec:
    app = load_app()
    raw = raw.copy()
    OmegaConf.set_struct(raw, False)
    for key, value in params.items():
        OmegaConf.update(raw, key, value, merge=False)
    cfg = validate(raw, app.schema, app.rules)
    return TrialSpec(cfg=cfg, raw=raw, params=params, overrides=overrides, study=study, trial=trial)


def run_id_for(spec: TrialSpec, plan: Optional[Plan] = None) -> str:
    """Same results -> same run: the hash of the plan's stage keys, so a retried or re-sampled trial,
    or one that only changes how fast or where its stages run, reuses the run folder."""
    plan = plan or load_app().build_plan(spec.cfg)
    keys = [s.key for s in plan.stages]
    digest = hashlib.sha256(json.dumps([spec.cfg.experiment.name, keys]).encode()).hexdigest()[:10]
    return f"{spec.cfg.experiment.name}-s{spec.cfg.seed}-{digest}"


def _error_text(exc: BaseException) -> str:
    """What runs.error keeps: the whole failure, the job's traceback included, even when the
    terminal got the one-line form of a known error."""
    if isinstance(exc, StageFailed):
        return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc.full}"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def run_trial(spec: TrialSpec, orchestrator: Orchestrator, report: Optional[ReportFn] = None,
              plan: Optional[Plan] = None, meta: Optional[dict[str, Any]] = None) -> tuple[str, dict[str, float]]:
    """Run ``spec``'s plan (or ``plan``, e.g. a forced rerun's) in its run folder; ``meta`` adds to run.json."""
    cfg = spec.cfg
    plan = plan or load_app().build_plan(cfg)
    run_id = run_id_for(spec, plan)
    run = RunDir(Path(cfg.paths.results), run_id)
    run.create(
        config=to_dict(spec.raw),
        overrides=spec.overrides,
        meta={"run_id": run_id, "experiment": cfg.experiment.name, "kind": plan.kind, "study": spec.study,
              "trial": spec.trial, "seed": cfg.seed, "params": spec.params, **(meta or {})},
        git=git_info(),
    )
    try:
        metrics = orchestrator.execute(plan, run, report)
    except BaseException as exc:
        pruned = type(exc).__name__ == "TrialPruned"
        status = "pruned" if pruned else ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        error = None if pruned else _error_text(exc)
        run.update_meta(status=status, error=error, ended_at=time.time())
        orchestrator.ingest(run_id)
        raise
    run.update_meta(status="completed", ended_at=time.time(), metrics=metrics)
    orchestrator.ingest(run_id)
    return run_id, metrics
