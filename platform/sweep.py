"""Run an Optuna sweep of an experiment.

    python -m platform.sweep experiment=em_compute                      # embedded default, local jobs
    python -m platform.sweep experiment=em_compute sweep.n_trials=8 sweep.parallel=2
    python -m platform.sweep experiment=em_compute --cfg job            # print the resolved config
    python -m platform.sweep experiment=em_compute dry_run=true         # print planned stage graphs
    python -m platform.sweep experiment=em_compute launcher=slurm model=tinyllama_1b data=finemath sampler=vllm
"""

from __future__ import annotations

import sys

from platform.cli import main_guard
from platform.compose import Composed
from platform.driver import dry_run, run_sweep
from platform.report import print_study_summary


def sweep(composed: Composed) -> int:
    if composed.cfg.dry_run:
        dry_run(composed)
        return 0
    study = run_sweep(composed)
    print_study_summary(study, composed.cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(sweep))
