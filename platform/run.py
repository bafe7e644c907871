"""Run one experiment without Optuna (same stages, fixed params).

    python -m platform.run experiment=bootstrap
    python -m platform.run experiment=raw_baseline seed=1
    python -m platform.run experiment=bootstrap dry_run=true
    python -m platform.run from_run=<run_id> [force=eval,...]   (platform/rerun.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from platform.app import load_app
from platform.cli import guarded, main_guard, restore_default_sigint
from platform.compose import Composed, to_dict
from platform.ingest import ingest_run
from platform.orchestrator import Orchestrator
from platform.plan import describe
from platform.trial import apply_params, run_id_for, run_trial


def run(composed: Composed) -> int:
    app = load_app()
    spec = apply_params(composed.raw, {}, composed.overrides)
    results = Path(spec.cfg.paths.results)
    if spec.cfg.dry_run:
        print(f"run {run_id_for(spec)}")
        print(describe(app.build_plan(spec.cfg), results))
        return 0
    orch = Orchestrator(to_dict(spec.cfg.launcher), results, ingest=lambda rid, key=None: ingest_run(results, rid, key),
                        compute_buckets=app.compute_buckets, total_buckets=app.total_buckets)
    run_id, metrics = run_trial(spec, orch)
    print(json.dumps({"run_id": run_id, **metrics}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from platform.rerun import parse, rerun_main
    from platform.validate import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rerun = parse(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rerun is None:
        return main_guard(run, argv)
    restore_default_sigint()
    return guarded(lambda: rerun_main(rerun))


if __name__ == "__main__":
    sys.exit(main())
