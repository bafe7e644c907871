"""Run one experiment without Optuna (same stages, fixed params).

    python -m platform.run experiment=bootstrap
    python -m platform.run experiment=raw_baseline seed=1
    python -m platform.run experiment=bootstrap dry_run=true
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from platform.app import load_app
from platform.cli import main_guard
from platform.compose import Composed, to_dict
from platform.ingest import ingest_runs
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
    orch = Orchestrator(to_dict(spec.cfg.launcher), results, ingest=lambda rid: ingest_runs(results, [rid]),
                        compute_buckets=app.compute_buckets, total_buckets=app.total_buckets)
    run_id, metrics = run_trial(spec, orch)
    print(json.dumps({"run_id": run_id, **metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(run))
