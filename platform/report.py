"""End-of-sweep summary printed to the terminal."""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from platform.failures import final_exception


def _short(error: str, width: int = 500) -> str:
    """One line of a trial's error, without the exception class the driver wraps it in: a known
    error's one-line form (stage, message, log) as it is; for another, its first line and the
    exception its traceback ends in."""
    lines = error.strip().splitlines() or [""]
    first = lines[0].removeprefix("platform.orchestrator.StageFailed: ")
    found = final_exception(error) if len(lines) > 1 else None
    if found:
        message = (found[1].splitlines() or [""])[0]
        first = f"{first} {found[0].rsplit('.', 1)[-1]}: {message}"
    return first if len(first) <= width else first[: width - 3] + "..."


def print_study_summary(study: Any, cfg: Any) -> None:
    trials = study.get_trials(deepcopy=False)
    names = [o.metric for o in cfg.sweep.objectives]
    print(f"\nstudy {study.study_name}: {len(trials)} trials")
    for t in trials:
        values = "" if t.values is None else "  " + "  ".join(_value(t, n, v) for n, v in zip(names, t.values))
        failed = t.state == TrialState.FAIL and "error" in t.user_attrs
        err = f"  error: {_short(t.user_attrs['error'])}" if failed else ""
        note = "  (interrupted, retried)" if t.user_attrs.get("interrupted") else ""
        print(f"  #{t.number:<3} {t.state.name:<9} {t.params}{values}{err}{note}")
    _print_by_iteration(study, cfg, trials)
    _print_reuse(cfg, trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trials if len(names) > 1 else [study.best_trial]
        label = "Pareto front" if len(names) > 1 else "best"
        print(f"{label}: " + ", ".join(f"#{t.number} {t.params}" for t in best))
    print(f"results: {cfg.paths.results}/platform.duckdb  (python -m platform.query \"select * from iterations\")")


def _value(trial: Any, name: str, value: float) -> str:
    """``name=value``, with ``± SE (n seeds)`` for a trial run over replicate seeds."""
    se = trial.user_attrs.get(f"{name}_se")
    seeds = trial.user_attrs.get("seeds")
    return f"{name}={value:.4g}" + (f" ± {se:.2g} ({len(seeds)} seeds)" if se is not None and seeds else "")


def _print_reuse(cfg: Any, trials: list) -> None:
    """E-step samples drawn now against those taken from the sample store, over the trials' runs
    (each computed stage once: a stage shared by several runs is cached in all but one)."""
    from platform.store import query_rows

    runs = sorted({r for t in trials for r in (t.user_attrs.get("run_ids") or [t.user_attrs.get("run_id")]) if r})
    if not runs:
        return
    try:
        ((drawn, reused, generated, tok_reused),) = query_rows(cfg.paths.results, f"""
            select sum(samples_drawn), sum(samples_reused), sum(tokens_generated), sum(tokens_reused) from stages
            where stage = 'estep' and not cached and run_id in ({", ".join("?" * len(runs))})""", runs)
    except Exception:  # noqa: BLE001 - no store yet, or one from before the sample store
        return
    if drawn is not None:
        print(f"E-step samples: {int(drawn):,} drawn, {int(reused or 0):,} reused from the sample store "
              f"({int(generated or 0):,} tokens generated, {int(tok_reused or 0):,} reused)")


def _print_by_iteration(study: Any, cfg: Any, trials: list) -> None:
    """The first objective after every evaluated iteration of each trial and of the references,
    then each of the app's ``summary_metrics`` (stage, metric) by iteration for the trials."""
    from platform.app import load_app

    metric = cfg.sweep.objectives[0].metric if cfg.sweep.objectives else "accuracy"
    refs = dict(study.user_attrs.get("references") or {})
    runs = {t.user_attrs["run_id"]: t for t in trials if t.user_attrs.get("run_id") and not t.user_attrs.get("interrupted")}
    series = _series(cfg, [*runs, *refs.values()], "eval", metric)
    if any(r in series for r in runs):
        print(f"{metric} by iteration ([0]: before any E-step, e.g. a warm start):")
        _print_runs(runs, series)
    if refs:
        print(f"references ({metric}):")
        for label, run_id in refs.items():
            print(f"  {label}: " + ("  ".join(series[run_id]) if run_id in series else "(no result)"))
    for stage, name in load_app().summary_metrics:
        series = _series(cfg, list(runs), stage, name)
        if series:
            print(f"{stage} {name} by iteration:")
            _print_runs(runs, series)


def _print_runs(runs: dict, series: dict[str, list[str]]) -> None:
    for run_id, t in runs.items():
        if run_id in series:
            print(f"  #{t.number:<3} {t.params}  " + "  ".join(series[run_id]))


def _series(cfg: Any, run_ids: list[str], stage: str, metric: str) -> dict[str, list[str]]:
    """run id -> ``[iteration] value`` strings of one stage's metric (its last step in each
    iteration, as a training loss ends), in iteration order."""
    from platform.store import query_rows

    if not run_ids:
        return {}
    try:
        rows = query_rows(cfg.paths.results, f"""
            select run_id, iteration, value from metrics
            where stage = ? and name = ? and run_id in ({", ".join("?" * len(run_ids))})
            qualify row_number() over (partition by run_id, iteration order by step desc) = 1
            order by run_id, iteration""", [stage, metric, *run_ids])
    except Exception:  # noqa: BLE001 - no store yet (nothing ingested): the lines above say it all
        return {}
    series: dict[str, list[str]] = {}
    for run_id, it, value in rows:
        if value is not None:
            series.setdefault(run_id, []).append(f"{value:.3f}" if it is None else f"[{it}] {value:.3f}")
    return series
