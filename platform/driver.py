"""The sweep driver: Optuna ask/tell with up to ``sweep.parallel`` trials in flight, no batch barrier.

Rerunning the same command resumes the study: ``sweep.n_trials`` is the number of finished trials
the study should hold, so a finished sweep adds none (it re-ingests and prints the summary), and
trials left RUNNING by a killed driver are marked FAIL (user attr ``interrupted``) and re-enqueued
with the same params; their runs resume from the stage cache.
"""

from __future__ import annotations

import sys
import threading
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from platform.compose import Composed, to_dict
from platform.ingest import ingest_runs, ingest_study
from platform.live import LiveView
from platform.orchestrator import Orchestrator, Progress
from platform.plan import describe
from platform.study import build_sampler, open_study, suggest
from platform.trial import apply_params, run_id_for, run_trial
from platform.app import load_app

_INGEST_LOCK = threading.Lock()


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done and not t.user_attrs.get("interrupted")]


def _tell(study: optuna.Study, trial: Any, values: Any = None, state: Any = None) -> None:
    """study.tell that tolerates GridSampler's study.stop() (meant for study.optimize, not ask/tell)
    and its missing grid_id on enqueued trials.

    Optuna stores the trial's state in a `finally` before that error propagates, so nothing is lost.
    """
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise
    except KeyError as exc:  # GridSampler.after_trial on a re-enqueued (interrupted) trial
        if "grid_id" not in str(exc):
            raise


def recover_interrupted(study: optuna.Study) -> int:
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        _tell(study, t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


def _grid_left(study: optuna.Study, cfg: Any) -> int:
    import math

    size = math.prod(len(spec.choices or []) for spec in cfg.sweep.search_space.values())
    visited = {tuple(sorted(t.params.items())) for t in _finished(study)}
    return max(0, size - len(visited))


def dry_run(composed: Composed) -> None:
    """Print each planned trial's stage graph with cache keys; run nothing, write nothing."""
    cfg = composed.cfg
    app = load_app()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # an in-memory study with the sweep's own sampler: what the first trials would be (a grid in order)
    scratch = optuna.create_study(sampler=build_sampler(cfg.sweep), directions=[o.direction for o in cfg.sweep.objectives])
    results = Path(cfg.paths.results)
    n = cfg.sweep.n_trials
    if cfg.sweep.sampler == "grid":
        n = min(n, _grid_left(scratch, cfg))
    for i in range(n):
        trial = scratch.ask()
        params = suggest(trial, cfg.sweep.search_space)
        _tell(scratch, trial, [0.0] * len(cfg.sweep.objectives))
        spec = apply_params(composed.raw, params, composed.overrides)
        plan = app.build_plan(spec.cfg)
        print(f"trial {i}: run {run_id_for(spec)} params={params}")
        print(describe(plan, results))


def run_sweep(composed: Composed) -> optuna.Study:
    cfg = composed.cfg
    results = Path(cfg.paths.results)
    name = cfg.sweep.study_name or cfg.experiment.name
    study = open_study(cfg.sweep, results, name)
    study.set_user_attr("experiment", cfg.experiment.name)
    storage_label = cfg.sweep.storage or str(results / "optuna" / f"{name}.journal")
    recovered = recover_interrupted(study)
    if recovered:
        print(f"[sweep] {recovered} trial(s) interrupted by an earlier driver: marked FAIL and re-enqueued")

    def ingest(run_id: str) -> None:
        with _INGEST_LOCK:
            ingest_runs(results, [run_id])

    progress = Progress()
    orch = Orchestrator(to_dict(cfg.launcher), results, progress, ingest)
    objectives = [o.metric for o in cfg.sweep.objectives]
    single = len(objectives) == 1

    def one_trial(trial: optuna.Trial) -> None:
        params = suggest(trial, cfg.sweep.search_space)
        spec = apply_params(composed.raw, params, composed.overrides, study=name, trial=trial.number)
        trial.set_user_attr("run_id", run_id_for(spec))

        def report(stage: Any, metrics: dict[str, float], last: bool) -> None:
            if single and objectives[0] in metrics and stage.iteration is not None:
                trial.report(metrics[objectives[0]], stage.iteration)
                # after the last evaluation there is nothing left to save: the trial completes
                if not last and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after iteration {stage.iteration}")

        try:
            _, metrics = run_trial(spec, orch, report)
        except optuna.TrialPruned:
            _tell(study, trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the sweep
            trial.set_user_attr("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()[-4000:])
            _tell(study, trial, state=TrialState.FAIL)
            print(f"[sweep] trial {trial.number} failed: {exc}", file=sys.stderr)
        else:
            missing = [m for m in objectives if m not in metrics]
            if missing:
                trial.set_user_attr("error", f"objective metric(s) {missing} not produced; got {sorted(metrics)}")
                _tell(study, trial, state=TrialState.FAIL)
            else:
                _tell(study, trial, [metrics[m] for m in objectives])
        with _INGEST_LOCK:
            ingest_study(results, study, cfg.experiment.name, storage_label)

    target = cfg.sweep.n_trials
    if cfg.sweep.sampler == "grid":  # a grid has a size: asking past it would repeat points
        target = min(target, len(_finished(study)) + _grid_left(study, cfg))
    live = LiveView(study, progress, target, interval_s=cfg.sweep.live_interval_s, finished=_finished)
    live.start()
    try:
        with ThreadPoolExecutor(max_workers=cfg.sweep.parallel) as pool:
            running: set[Future] = set()
            while True:
                want = target - len(_finished(study)) - len(running)
                while want > 0 and len(running) < cfg.sweep.parallel:
                    running.add(pool.submit(one_trial, study.ask()))
                    want -= 1
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()
    except KeyboardInterrupt:
        _on_interrupt(orch)
        raise
    finally:
        live.stop()
        with _INGEST_LOCK:
            ingest_study(results, study, cfg.experiment.name, storage_label)
    return study


def _on_interrupt(orch: Orchestrator) -> None:
    """Ctrl-C: ask before cancelling submitted jobs; SLURM jobs left running are reattached on rerun."""
    running = sum(len(j) for j in orch.active_jobs.values())
    if not running:
        return
    answer = "n"
    if sys.stdin.isatty():
        try:
            answer = input(f"\n[sweep] interrupted: cancel {running} submitted job(s)? [y/N] ").strip().lower()
        except EOFError:
            pass
    if answer in ("y", "yes"):
        for run_id in list(orch.active_jobs):
            orch.cancel(run_id)
        print("[sweep] jobs cancelled", file=sys.stderr)
    else:
        print("[sweep] jobs left running; rerun the same command to reattach to them", file=sys.stderr)
