"""The sweep driver: Optuna ask/tell with up to ``sweep.parallel`` trials in flight, no batch barrier.

Rerunning the same command resumes the study: ``sweep.n_trials`` is the number of finished trials
the study should hold, so a finished sweep adds none (it re-ingests and prints the summary), and
trials left RUNNING by a killed driver are marked FAIL (user attr ``interrupted``) and re-enqueued
with the same params; their runs resume from the stage cache. With an RDB storage several drivers
may run the study at once, and only trials whose heartbeat stopped are taken for interrupted
(``platform.multidriver``). Drivers queue what DuckDB should load and one process at a time
loads it (``platform.ingest.Ingester``).

Params are drawn in the driver's thread right after ``ask``, so every trial in flight holds its
params before the next is asked; over a finite space the sampler (``platform.study.UnvisitedSampler``)
then never repeats a point while one is unvisited. A trial that repeats an earlier one anyway
(every point visited, or a float space) records ``duplicate_of`` and whether it was a pure
``cache_hit``.
"""

from __future__ import annotations

import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from platform.app import App, load_app
from platform.budget import STOP_ATTR, SPEND_ATTR, Spend, exceeded, stage_gpu_hours
from platform.compose import Composed, to_dict
from platform.ingest import Ingester
from platform.ingest_queue import request_run, request_study
from platform.live import LiveView
from platform.multidriver import SharedStudy, heartbeat_of, retry_stale
from platform.orchestrator import Orchestrator, Progress, ReportFn, SweepStopped
from platform.plan import describe
from platform.references import reference_specs
from platform.replicates import SeedReports, aggregate
from platform.rundir import RunDir
from platform.study import build_sampler, name_metrics, open_study, suggest
from platform.trial import apply_params, run_id_for, run_trial


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


def _duplicate_of(study: optuna.Study, number: int, run_id: str) -> Optional[int]:
    """The earliest other trial with the same run (the same params), not counting an interrupted
    trial this one retries."""
    for t in study.get_trials(deepcopy=False):
        if t.number < number and t.user_attrs.get("run_id") == run_id and not t.user_attrs.get("interrupted"):
            return t.number
    return None


def _all_cached(results: Path, run_id: str, since: float) -> bool:
    """Whether every stage the run passed since ``since`` was a cache hit (nothing was submitted)."""
    events = [e for e in RunDir(results, run_id).read_ledger() if e.get("t", 0) >= since]
    return bool(events) and all(e.get("status") == "completed" and e.get("cached") for e in events)


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
    name_metrics(scratch, cfg.sweep)
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
    for label, spec in reference_specs(composed, cfg.sweep.study_name or cfg.experiment.name, app.rules):
        print(f"reference {label}: run {run_id_for(spec)}")
        print(describe(app.build_plan(spec.cfg), results))


@dataclass
class _Sweep:
    """What every trial of one sweep shares."""

    composed: Composed
    study: optuna.Study
    name: str  # the study's
    results: Path
    storage_label: str
    orch: Orchestrator
    spend: Spend = field(default_factory=Spend)

    @property
    def cfg(self) -> Any:
        return self.composed.cfg

    @property
    def objectives(self) -> list[str]:
        return [o.metric for o in self.cfg.sweep.objectives]

    def ingest_study(self) -> None:
        self.study.set_user_attr(SPEND_ATTR, self.spend.as_dict())
        request_study(self.results, self.name, self.cfg.experiment.name, self.storage_label)


def _open_sweep_study(cfg: Any, results: Path, name: str) -> optuna.Study:
    """The study, resumed if it exists; trials an earlier driver left RUNNING are re-enqueued (with
    heartbeats, only those whose driver stopped beating: other drivers may be running it)."""
    study = open_study(cfg.sweep, results, name)
    study.set_user_attr("experiment", cfg.experiment.name)
    recovered = retry_stale(study) if heartbeat_of(study) else recover_interrupted(study)
    if recovered:
        print(f"[sweep] {recovered} trial(s) interrupted by an earlier driver: marked FAIL and re-enqueued")
    return study


def _orchestrator(app: App, cfg: Any, results: Path, progress: Progress) -> Orchestrator:
    """One orchestrator for every trial and reference; each finished stage is queued for ingest at
    once (that stage's rows; the whole run when it ends)."""
    return Orchestrator(to_dict(cfg.launcher), results, progress,
                        lambda run_id, stage_key=None: request_run(results, run_id, stage_key),
                        compute_buckets=app.compute_buckets, total_buckets=app.total_buckets)


def _pruning_report(trial: optuna.Trial, objectives: list[str]) -> ReportFn:
    """Reports each evaluation of a single-objective trial to Optuna and prunes when it says so."""
    single = len(objectives) == 1

    def report(stage: Any, metrics: dict[str, float], last: bool) -> None:
        if single and objectives[0] in metrics and stage.iteration is not None:
            trial.report(metrics[objectives[0]], stage.iteration)
            # after the last evaluation there is nothing left to save: the trial completes
            if not last and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after iteration {stage.iteration}")

    return report


def _note_duplicate(study: optuna.Study, trial: optuna.Trial, run_id: str) -> None:
    earlier = _duplicate_of(study, trial.number, run_id)
    if earlier is not None:
        trial.set_user_attr("duplicate_of", earlier)
        print(f"[sweep] trial {trial.number} repeats the params of trial {earlier} (run {run_id})", flush=True)


def _one_trial(sweep: _Sweep, trial: optuna.Trial, params: dict[str, Any]) -> None:
    """Run one trial's experiment (once per seed of ``sweep.seeds``) and tell Optuna its outcome;
    a failed trial does not raise."""
    started = time.time()
    seeds = list(sweep.cfg.sweep.seeds or [])
    composed = sweep.composed
    specs = {s: apply_params(composed.raw, {**params, **({"seed": s} if s is not None else {})}, composed.overrides,
                             study=sweep.name, trial=trial.number) for s in (seeds or [None])}
    run_ids = [run_id_for(spec) for spec in specs.values()]
    trial.set_user_attr("run_id", run_ids[0])
    if seeds:
        trial.set_user_attr("seeds", seeds)
        trial.set_user_attr("run_ids", run_ids)
    _note_duplicate(sweep.study, trial, run_ids[0])

    def finish(values: Any = None, state: Any = None) -> None:
        trial.set_user_attr("cache_hit", all(_all_cached(sweep.results, r, started) for r in run_ids))
        _tell(sweep.study, trial, values, state=state)

    objectives = sweep.objectives
    try:
        per_seed = _run_seeds(sweep, trial, specs)
    except optuna.TrialPruned:
        finish(state=TrialState.PRUNED)
    except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the sweep
        if isinstance(exc, SweepStopped) or sweep.orch.stop_reason:  # stopped, or its job cancelled by the stop
            reason = str(exc) if isinstance(exc, SweepStopped) else f"jobs cancelled: {sweep.orch.stop_reason}"
            trial.set_user_attr("stopped", reason)
            trial.set_user_attr("error", f"SweepStopped: {reason}")
            finish(state=TrialState.FAIL)
            return sweep.ingest_study()
        trial.set_user_attr("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()[-4000:])
        finish(state=TrialState.FAIL)
        print(f"[sweep] trial {trial.number} failed: {exc}", file=sys.stderr)
    else:
        missing = sorted({m for metrics in per_seed.values() for m in objectives if m not in metrics})
        if missing:
            got = sorted(next(iter(per_seed.values())))
            trial.set_user_attr("error", f"objective metric(s) {missing} not produced; got {got}")
            finish(state=TrialState.FAIL)
        else:
            result = aggregate(objectives, per_seed)
            for key, value in (result["user_attrs"].items() if seeds else ()):
                trial.set_user_attr(key, value)
            finish(result["values"])
    sweep.ingest_study()


def _run_seeds(sweep: _Sweep, trial: optuna.Trial, specs: dict[Optional[int], Any]) -> dict[Any, dict[str, float]]:
    """Each seed's run side by side; the trial is pruned (every seed stops) on the mean over seeds."""
    if list(specs) == [None]:
        return {None: run_trial(specs[None], sweep.orch, _pruning_report(trial, sweep.objectives))[1]}
    reports = SeedReports(trial, sweep.objectives, list(specs))
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = {s: pool.submit(run_trial, spec, sweep.orch, reports.for_seed(s)) for s, spec in specs.items()}
        wait(list(futures.values()))
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if any(isinstance(e, optuna.TrialPruned) for e in errors):
        raise optuna.TrialPruned(f"pruned after iteration {reports.pruned_at} (mean over seeds {list(specs)})")
    if errors:
        raise errors[0]
    return {s: f.result()[1] for s, f in futures.items()}


def _target(study: optuna.Study, cfg: Any) -> int:
    """How many finished trials the study should hold when the sweep ends."""
    target = cfg.sweep.n_trials
    if cfg.sweep.sampler == "grid":  # a grid has a size: asking past it would repeat points
        target = min(target, len(_finished(study)) + _grid_left(study, cfg))
    return target


def _start_references(sweep: _Sweep, references: list[tuple[str, Any]]) -> tuple[ThreadPoolExecutor, list[Future]]:
    """References beside the trials, one at a time: they share the stage cache and keep a core busy
    while trials wait on a stage another trial is computing."""
    pool = ThreadPoolExecutor(max_workers=1)
    runs = [(label, run_id_for(spec), pool.submit(_run_reference, label, spec, sweep.orch)) for label, spec in references]
    sweep.study.set_user_attr("references", {label: run_id for label, run_id, _ in runs})
    return pool, [fut for _, _, fut in runs]


def _run_trials(sweep: _Sweep, target: int, shared: SharedStudy) -> None:
    """Ask/tell with up to ``sweep.parallel`` trials in flight until the study holds ``target``
    (counting other drivers' trials too, ``platform.multidriver``), or until the budget is spent."""
    parallel, space = sweep.cfg.sweep.parallel, sweep.cfg.sweep.search_space
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        running: set[Future] = set()
        capped = False
        while True:
            capped = capped or _budget_reached(sweep, len(running))
            # params drawn here, not in the worker: the next ask sees this trial's params
            for trial, params in [] if capped else shared.ask(parallel - len(running), target, space):
                running.add(pool.submit(shared.run, trial, _one_trial, sweep, trial, params))
            if not running:
                if capped or shared.settled():
                    break
                shared.wait()  # another driver's trials run: if it dies, they are retried here
                continue
            done, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()


def _computed_flops(summary: dict[str, Any]) -> float:
    """What a stage computed: ``flops_computed`` where it reports reuse (the E-step's sample store),
    else ``flops``, the cost of its result."""
    return float(summary.get("flops_computed", summary.get("flops")) or 0.0)


def _budget_reached(sweep: _Sweep, running: int) -> bool:
    """Whether the budget is spent; the first time, say so, record why, and stop running trials
    if ``on_cap: stop``."""
    budget = sweep.cfg.sweep.budget
    reason = exceeded(sweep.spend, budget)
    if reason is None:
        return False
    if sweep.study.user_attrs.get(STOP_ATTR) != reason:
        sweep.study.set_user_attr(STOP_ATTR, reason)
        sweep.study.set_user_attr(SPEND_ATTR, sweep.spend.as_dict())
        then = "stopping" if budget.on_cap == "stop" else "letting finish"
        print(f"[sweep] budget reached: {reason}; spent {sweep.spend.text()}. Starting no new trial, "
              f"{then} {running} running.", flush=True)
        if budget.on_cap == "stop":
            sweep.orch.stop(reason)
    return True


def run_sweep(composed: Composed) -> optuna.Study:
    cfg = composed.cfg
    results = Path(cfg.paths.results)
    name = cfg.sweep.study_name or cfg.experiment.name
    app = load_app()
    references = reference_specs(composed, name, app.rules)  # a bad entry stops us here
    study = _open_sweep_study(cfg, results, name)
    storage_label = cfg.sweep.storage or str(results / "optuna" / f"{name}.journal")
    progress = Progress()
    sweep = _Sweep(composed, study, name, results, storage_label, _orchestrator(app, cfg, results, progress),
                   Spend.resumed(study.user_attrs))
    sweep.orch.on_computed = lambda stage, record, gpus: sweep.spend.add(
        _computed_flops(record.get("summary") or {}), stage_gpu_hours(stage, results, record, gpus))
    target = _target(study, cfg)
    live = LiveView(study, progress, target, interval_s=cfg.sweep.live_interval_s, finished=_finished)
    live.start()
    shared = SharedStudy(study, results, _finished).start()
    ingester = Ingester(results, {name: study}).start()
    ref_pool, ref_futures = _start_references(sweep, references)
    try:
        _run_trials(sweep, target, shared)
        for fut in ref_futures:
            fut.result()
    except KeyboardInterrupt:
        _on_interrupt(sweep.orch)
        raise
    finally:
        ref_pool.shutdown(wait=False, cancel_futures=True)
        live.stop()
        shared.stop()
        sweep.ingest_study()
        ingester.stop()
    if cfg.sweep.budget.flops or cfg.sweep.budget.gpu_hours or cfg.sweep.budget.wall_clock_h:
        print(f"[sweep] spent {sweep.spend.text()}", flush=True)
    return study


def _run_reference(label: str, spec: Any, orch: Orchestrator) -> None:
    """A reference run; its failure is reported and recorded in its run folder, and the sweep goes on."""
    try:
        run_trial(spec, orch)
    except Exception as exc:  # noqa: BLE001 - a failed reference must not stop the trials
        print(f"[sweep] reference {label} failed: {exc}", file=sys.stderr)


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
