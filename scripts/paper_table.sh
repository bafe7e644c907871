#!/usr/bin/env bash
# The README's results table: raw-token-match, raw-FLOP-match, synthetic thoughts, the bootstrap
# warm start and bootstrap iterations 1-3 for K in {1, 4}, 3 seeds each, on the embedded default.
# Each group is an Optuna grid sweep of the platform itself, so the runs land in one DuckDB.
#   bash scripts/paper_table.sh [RESULTS_DIR]        (default results/paper_table; about 2.5 hours on 2 cores)
# TABLE_ARGS adds overrides to every grid, BOOTSTRAP_ARGS to the bootstrap grid only. The other
# designs and splits in the README, e.g. design (a) with the paper's small warm start:
#   TABLE_ARGS="data.thought_chunks=all" BOOTSTRAP_ARGS="em.warm_start_epochs=20" bash scripts/paper_table.sh results/a2040
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-results/paper_table}
PY=${PY:-.venv/bin/python}
read -r -a ALL <<< "${TABLE_ARGS:-}"
read -r -a BOOT <<< "${BOOTSTRAP_ARGS:-}"
SEEDS="seed: {type: categorical, choices: [0, 1, 2]}"

$PY -m platform.sweep experiment=synthetic_thoughts "${ALL[@]}" paths.results="$R" sweep.study_name=table_synthetic sweep.pruner=none \
    sweep.sampler=grid sweep.n_trials=3 sweep.parallel=2 "sweep.search_space={$SEEDS}"
$PY -m platform.sweep experiment=raw_baseline "${ALL[@]}" paths.results="$R" sweep.study_name=table_raw sweep.pruner=none \
    sweep.sampler=grid sweep.n_trials=6 sweep.parallel=2 \
    "sweep.search_space={experiment.baseline: {type: categorical, choices: [raw_token_match, raw_flop_match]}, $SEEDS}"
$PY -m platform.sweep experiment=bootstrap "${ALL[@]}" "${BOOT[@]}" paths.results="$R" sweep.study_name=table_bootstrap sweep.pruner=none \
    sweep.sampler=grid sweep.n_trials=6 sweep.parallel=2 \
    "sweep.search_space={estep.num_samples: {type: categorical, choices: [1, 4]}, $SEEDS}"
$PY -m experiments.results_table --results "$R"
