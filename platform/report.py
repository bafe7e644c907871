"""End-of-sweep summary printed to the terminal."""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState


def print_study_summary(study: Any, cfg: Any) -> None:
    trials = study.get_trials(deepcopy=False)
    names = [o.metric for o in cfg.sweep.objectives]
    print(f"\nstudy {study.study_name}: {len(trials)} trials")
    for t in trials:
        values = "" if t.values is None else "  " + "  ".join(f"{n}={v:.4g}" for n, v in zip(names, t.values))
        err = f"  error: {t.user_attrs['error'][:120]}" if t.state == TrialState.FAIL and "error" in t.user_attrs else ""
        note = "  (interrupted, retried)" if t.user_attrs.get("interrupted") else ""
        print(f"  #{t.number:<3} {t.state.name:<9} {t.params}{values}{err}{note}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trials if len(names) > 1 else [study.best_trial]
        label = "Pareto front" if len(names) > 1 else "best"
        print(f"{label}: " + ", ".join(f"#{t.number} {t.params}" for t in best))
    print(f"results: {cfg.paths.results}/platform.duckdb  (python -m platform.query \"select * from iterations\")")
