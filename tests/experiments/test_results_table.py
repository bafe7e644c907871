"""experiments.results_table: the README's table and the differences its orderings are about,
checked against hand computations on a store built row by row."""

import json
import math

import duckdb
import pytest

from experiments import results_table
from tests.dashboard.synthetic import SCHEMA

# (run, kind, seed, baseline, K, {iteration: accuracy})
RUNS = [
    ("raw-tm-0", "raw", 0, "raw_token_match", None, {None: 0.10}),
    ("raw-tm-1", "raw", 1, "raw_token_match", None, {None: 0.20}),
    ("raw-tm-2", "raw", 2, "raw_token_match", None, {None: 0.30}),
    ("syn-0", "synthetic", 0, None, None, {None: 0.80}),
    ("syn-1", "synthetic", 1, None, None, {None: 0.90}),
    ("syn-2", "synthetic", 2, None, None, {None: 1.00}),
    # K=1 and K=4 of one seed share the warm start (iteration 0): counted once per seed
    *[(f"k{k}-{s}", "bootstrap", s, None, k, {0: 0.05, 1: 0.30 + 0.1 * (k == 4) + 0.01 * s})
      for k in (1, 4) for s in range(3)],
]


def _store(tmp_path, runs=RUNS):
    con = duckdb.connect(str(tmp_path / "platform.duckdb"))
    con.execute(SCHEMA.read_text())
    for run, kind, seed, baseline, k, acc in runs:
        config = {"experiment": {"baseline": baseline}, "estep": {"num_samples": k}}
        con.execute("INSERT INTO runs (run_id, experiment, kind, seed, config, status) VALUES (?, ?, ?, ?, ?, 'completed')",
                    [run, kind, kind, seed, json.dumps(config)])
        for it, value in acc.items():
            con.execute("INSERT INTO metrics (run_id, iteration, stage, name, step, value) VALUES (?, ?, 'eval', 'accuracy', 0, ?)",
                        [run, it, value])
    con.close()
    return str(tmp_path)


def _rows(text):
    return {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in text.splitlines()[2:]}


def test_table_counts_a_shared_warm_start_once_per_seed(tmp_path):
    rows = _rows(results_table.table(_store(tmp_path)))
    assert rows["raw, token-match"][0] == "0.200 ± 0.058"  # sd 0.1, SE 0.1 / sqrt(3)
    assert rows["bootstrap warm start (iter 0)"][-1].strip(" |") == "3"
    assert rows["bootstrap K=4, iter 1"][0] == "0.410 ± 0.006"


def test_differences_carry_the_standard_error_of_two_independent_means(tmp_path):
    rows = _rows(results_table.comparisons_table(_store(tmp_path)))
    se = 0.1 / math.sqrt(3)
    diff, se_diff, ratio, _, _ = rows["synthetic thoughts - raw, token-match"]
    assert float(diff) == pytest.approx(0.7) and float(se_diff) == pytest.approx(math.sqrt(2) * se, abs=1e-3)
    assert float(ratio.strip(" |")) == pytest.approx(0.7 / (math.sqrt(2) * se), abs=0.05)
    assert float(rows["bootstrap K=4, iter 1 - bootstrap K=1, iter 1"][0]) == pytest.approx(0.1)
    assert float(rows["bootstrap K=1, iter 1 - bootstrap warm start (iter 0)"][0]) == pytest.approx(0.26)
    assert "raw, FLOP-match" not in " ".join(rows)  # no such runs, no such row


def test_paired_difference_takes_out_what_a_seed_shares(tmp_path):
    # K=4 and K=1 move together across seeds (a good seed is good for both): per-seed differences
    # 0.1, 0.2, 0.0 have SE 0.1 / sqrt(3), far below the unpaired one
    runs = [(f"k{k}-{s}", "bootstrap", s, None, k, {0: 0.05, 3: acc})
            for k, accs in ((4, (0.5, 0.7, 0.9)), (1, (0.4, 0.5, 0.9))) for s, acc in enumerate(accs)]
    row = _rows(results_table.comparisons_table(_store(tmp_path, runs)))["bootstrap K=4, iter 3 - bootstrap K=1, iter 3"]
    diff, se, ratio, paired_se, paired_ratio = (c.strip(" |") for c in row)
    unpaired = math.sqrt((0.04 + 0.07) / 3)  # variances 0.04 and 0.07
    assert float(diff) == pytest.approx(0.1)
    assert float(se) == pytest.approx(unpaired, abs=1e-3) and float(ratio) == pytest.approx(0.1 / unpaired, abs=0.05)
    assert float(paired_se) == pytest.approx(0.1 / math.sqrt(3), abs=1e-3)
    assert float(paired_ratio) == pytest.approx(math.sqrt(3), abs=0.05)
