"""dashboard.data: database access (read-only, retries, sandbox) and the tables pages plot,
checked against hand computations."""

import json
import math
import subprocess
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from dashboard import data
from tests.dashboard.synthetic import SCHEMA
from tests.platform.test_store import OLD_VIEWS


def make_db(path, runs=(), stages=(), metrics=()):
    con = duckdb.connect(str(path))
    con.execute(SCHEMA.read_text())
    for r in runs:
        con.execute("INSERT INTO runs (run_id, experiment, kind, seed, params, config) VALUES (?, ?, ?, ?, ?, ?)", r)
    for s in stages:
        con.execute("INSERT INTO stages (run_id, stage, iteration, tokens_in, flops, gpu_hours) VALUES (?, ?, ?, ?, ?, ?)", s)
    for m in metrics:
        con.execute("INSERT INTO metrics (run_id, iteration, stage, name, step, value) VALUES (?, ?, ?, ?, ?, ?)", m)
    con.close()
    return path


def test_db_path_from_argument_then_environment_then_default():
    assert str(data.resolve_db_path(["--db", "a.duckdb"], {"PLATFORM_DB": "b.duckdb"})) == "a.duckdb"
    assert str(data.resolve_db_path(["--other", "1"], {"PLATFORM_DB": "b.duckdb"})) == "b.duckdb"
    assert str(data.resolve_db_path([], {})) == "results/platform.duckdb"


def test_missing_database_names_the_file(tmp_path):
    with pytest.raises(data.DatabaseUnavailable, match="nope.duckdb: no results database yet"):
        data.connect(tmp_path / "nope.duckdb")


def test_a_file_that_is_not_a_database_is_named_without_retrying(tmp_path):
    bad = tmp_path / "platform.duckdb"
    bad.write_text("not a database")
    t0 = time.time()
    with pytest.raises(data.DatabaseUnavailable, match="cannot open results database .*platform.duckdb"):
        data.connect(bad, retries=5, wait_s=1.0)
    assert time.time() - t0 < 1.0


def _hold_writer(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
                             f"print('held', flush=True); time.sleep({seconds})"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_open_retries_while_a_writer_holds_the_file(tmp_path):
    db = make_db(tmp_path / "p.duckdb")
    writer = _hold_writer(db, 0.8)
    t0 = time.time()
    con = data.connect(db, retries=10, wait_s=0.2)  # waits 0.2 s at a time until the writer is gone
    assert time.time() - t0 >= 0.2
    con.close()
    writer.wait()


def test_open_gives_up_with_a_clear_message(tmp_path):
    db = make_db(tmp_path / "p.duckdb")
    writer = _hold_writer(db, 5)
    try:
        with pytest.raises(data.DatabaseUnavailable, match="still locked by another process through 2 attempts"):
            data.connect(db, retries=2, wait_s=0.05)
    finally:
        writer.kill()
        writer.wait()


def test_queries_release_the_file_for_the_writer(tmp_path):
    db = make_db(tmp_path / "p.duckdb", runs=[("r1", "e", "raw", 0, "{}", "{}")])
    assert len(data.run_query(db, "SELECT * FROM runs")) == 1
    duckdb.connect(str(db)).close()  # would raise if the dashboard still held a read lock


def test_user_sql_cannot_write_or_touch_files(tmp_path):
    db = make_db(tmp_path / "p.duckdb", runs=[("r1", "e", "raw", 0, "{}", "{}")])
    assert data.run_user_sql(db, "SELECT count(*) AS n FROM runs")["n"].item() == 1
    with pytest.raises(duckdb.Error, match="read-only"):
        data.run_user_sql(db, "DELETE FROM runs")
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        data.run_user_sql(db, f"COPY runs TO '{tmp_path / 'leak.csv'}'")
    with pytest.raises(duckdb.Error, match="locked"):
        data.run_user_sql(db, "SET enable_external_access = true")
    assert not (tmp_path / "leak.csv").exists()
    assert data.run_query(db, "SELECT count(*) AS n FROM runs")["n"].item() == 1


def test_iterations_table_sums_compute_up_to_each_iteration(tmp_path):
    db = make_db(
        tmp_path / "p.duckdb",
        runs=[("b1", "bootstrap", "bootstrap", 0, json.dumps({"estep.num_samples": 8}),
               json.dumps({"estep": {"num_samples": 4, "max_thought_tokens": 64}, "data": {"raw_mix_ratio": 0.0}}))],
        stages=[("b1", "prepare_data", None, 0, 0.0, 0.0), ("b1", "warm_start", 0, 100, 10.0, 1.0),
                ("b1", "eval", 0, 3, 1.0, 0.1), ("b1", "estep", 1, 7, 5.0, 0.5), ("b1", "mstep", 1, 100, 20.0, 2.0),
                ("b1", "eval", 1, 3, 1.0, 0.1), ("b1", "estep", 2, 7, 5.0, 0.5)],
        metrics=[("b1", 0, "eval", "accuracy", 0, 0.2), ("b1", 1, "eval", "accuracy", 0, 0.3),
                 ("b1", 1, "eval", "accuracy", 5, 0.35), ("b1", 1, "estep", "elbo_1", 0, -9.0)],
    )
    t = data.numeric_facets(data.run_query(db, data.ITERATIONS_SQL)).set_index("iteration")
    assert list(t.index) == [0, 1]
    assert t.loc[1, "accuracy"] == 0.35  # the last step's value
    assert t.loc[0, "train_tokens"] == 100 and t.loc[1, "train_tokens"] == 200
    assert t.loc[0, "flops"] == 11.0 and t.loc[1, "flops"] == 37.0  # iteration 2's E-step not yet
    assert t.loc[1, "gpu_hours"] == pytest.approx(3.7)
    assert math.isnan(t.loc[1, "elbo_1"])  # an E-step metric, not an eval one
    # swept value from params wins; unswept ones fall back to the resolved config
    assert t.loc[1, "estep.num_samples"] == 8 and t.loc[1, "estep.max_thought_tokens"] == 64
    # E-step compute up to the iteration: the store's gain_vs_estep_compute view (iteration 2's not yet)
    (point,) = data.run_query(db, data.PARETO_SQL).itertuples()
    assert (point.iteration, point.cum_estep_flops, point.accuracy) == (1, 5.0, 0.35)


def frame(rows, cols=("run_id", "experiment", "kind", "baseline", "seed", "params", "iteration", "accuracy", "x")):
    return pd.DataFrame(rows, columns=list(cols))


def test_mean_and_standard_error_over_seeds():
    p = json.dumps({"estep.num_samples": 4, "seed": 1})
    df = frame([("a", "bootstrap", "bootstrap", None, 0, p, 1, 0.5, 10.0),
                ("b", "bootstrap", "bootstrap", None, 1, p, 1, 0.7, 30.0),
                ("c", "raw_baseline", "raw", "raw_token_match", 0, "{}", 1, 0.1, 5.0)])
    agg = data.aggregate_over_seeds(df, "accuracy", "x")
    assert len(agg) == 1
    row = agg.iloc[0]
    assert row["setting"] == "bootstrap K=4"  # the seed is averaged over, not a setting
    assert row["mean"] == pytest.approx(0.6) and row["se"] == pytest.approx(0.1) and row["n"] == 2
    assert row["x"] == 20.0


def test_reference_levels_use_last_iteration_and_one_warm_start_per_seed():
    df = frame([("r0", "raw_baseline", "raw", "raw_token_match", 0, "{}", 1, 0.1, 1.0),
                ("r0", "raw_baseline", "raw", "raw_token_match", 0, "{}", 2, 0.3, 2.0),
                ("f0", "raw_baseline", "raw", "raw_flop_match", 0, "{}", 1, 0.4, 3.0),
                ("s0", "synthetic_thoughts", "synthetic", None, 0, "{}", 1, 0.5, 4.0),
                ("b0", "bootstrap", "bootstrap", None, 0, "{}", 0, 0.4, 1.0),
                ("b1", "bootstrap", "bootstrap", None, 0, "{}", 0, 0.4, 1.0),  # same warm start, another trial
                ("b2", "bootstrap", "bootstrap", None, 1, "{}", 0, 0.5, 1.0),
                ("b2", "bootstrap", "bootstrap", None, 1, "{}", 1, 0.9, 2.0)])
    refs = data.reference_levels(df, "accuracy", "x").set_index("label")
    assert set(refs.index) == {"raw-token-match", "raw-flop-match", "synthetic thoughts", "warm start"}
    assert refs.loc["raw-token-match", "mean"] == 0.3 and refs.loc["raw-token-match", "x"] == 2.0
    assert refs.loc["warm start", "n"] == 2
    assert refs.loc["warm start", "mean"] == pytest.approx(0.45)
    assert refs.loc["warm start", "se"] == pytest.approx(0.05)


def test_top_settings_prefer_low_nll_and_high_accuracy():
    agg = pd.DataFrame({"setting": ["a", "a", "b", "b"], "iteration": [1, 2, 1, 2], "mean": [9.0, 1.0, 0.0, 2.0]})
    assert data.top_settings(agg, "nll", 1) == ["a"]
    assert data.top_settings(agg, "accuracy", 1) == ["b"]


def samples(log_ws, selected):
    rows = []
    for chunk, (lw, sel) in enumerate(zip(log_ws, selected)):
        for i, v in enumerate(lw):
            rows.append((1, "d", chunk, i, float(v), i == sel))
    return pd.DataFrame(rows, columns=["iteration", "doc_id", "chunk_id", "sample_idx", "log_w", "selected"])


def test_chunk_stats_match_a_hand_computation():
    stats = data.chunk_stats(samples([[0.0, np.log(3.0)], [0.0, 0.0, 0.0, 0.0]], [1, 2]))
    two, four = stats.iloc[0], stats.iloc[1]
    assert two["ess"] == pytest.approx(1 / (0.25**2 + 0.75**2))  # weights 1/4, 3/4 -> 1.6
    assert two["elbo_1"] == pytest.approx(0.0)
    assert two["elbo_2"] == pytest.approx(np.log(4.0) - np.log(2.0))
    assert math.isnan(two["elbo_4"]) and two["selected_idx"] == 1
    assert four["ess"] == pytest.approx(4.0) and four["elbo_4"] == pytest.approx(0.0) and four["selected_idx"] == 2


def test_weights_are_a_softmax_within_each_chunk():
    w = data.with_weights(samples([[0.0, np.log(3.0)], [1000.0, 1000.0]], [1, 0]))
    assert list(w["weight"]) == pytest.approx([0.25, 0.75, 0.5, 0.5])  # no overflow at log w = 1000


def test_pareto_front_keeps_only_undominated_points():
    x = pd.Series([1.0, 2.0, 2.0, 3.0])
    y = pd.Series([0.5, 0.6, 0.55, 0.6])
    assert list(data.pareto_mask(x, y)) == [True, True, False, False]


def test_optuna_storage_never_creates_a_journal(tmp_path):
    db = tmp_path / "platform.duckdb"
    assert data.optuna_storage(db, "s") is None
    assert not (tmp_path / "optuna").exists()
    assert data.optuna_storage(db, "s", "postgresql://h/db") == "postgresql://h/db"
    (tmp_path / "optuna").mkdir()
    (tmp_path / "optuna" / "s.journal").write_text("")
    assert data.optuna_storage(db, "s") is not None


EVAL_ROWS = [("b1", 1, "eval", "accuracy", 0, 0.5), ("b1", 1, "eval", "accuracy", 5, 0.4),
             ("b1", 1, "eval", "nll", 0, 3.0), ("b1", 1, "eval", "nll", 5, 2.5)]
BOOT_RUN = ("b1", "bootstrap", "bootstrap", 0, "{}", "{}")


def test_the_iterations_page_reads_the_view_schema_sql_defines(tmp_path, monkeypatch):
    """The page's query builds on the store's `iterations` view: change the view in schema.sql and
    the page shows the change, in a store written with the old definition."""
    from platform import store

    db = make_db(tmp_path / "p.duckdb", runs=[BOOT_RUN], metrics=EVAL_ROWS)
    before = data.run_query(db, data.ITERATIONS_SQL)
    assert (before["accuracy"].item(), before["nll"].item()) == (0.4, 2.5)  # the last step's, not the max
    changed = tmp_path / "schema.sql"
    text = store.SCHEMA.read_text()
    assert text.count("arg_max(m.value, m.step) FILTER (WHERE m.name = 'accuracy')") == 1
    changed.write_text(text.replace("arg_max(m.value, m.step) FILTER (WHERE m.name = 'accuracy')",
                                    "arg_min(m.value, m.step) FILTER (WHERE m.name = 'accuracy')"))
    monkeypatch.setattr(store, "SCHEMA", changed)
    after = data.run_query(db, data.ITERATIONS_SQL)
    assert (after["accuracy"].item(), after["nll"].item()) == (0.5, 2.5)  # now the first step's


def test_every_page_query_works_on_a_store_written_before_the_views_changed(tmp_path):
    db = make_db(tmp_path / "p.duckdb", runs=[BOOT_RUN], metrics=EVAL_ROWS,
                 stages=[("b1", "estep", 1, 7, 5.0, 0.5), ("b1", "mstep", 1, 100, 20.0, 2.0)])
    con = duckdb.connect(str(db))
    con.execute(OLD_VIEWS)
    assert con.execute("SELECT accuracy FROM iterations").fetchall() == [(0.5,)]  # the old definition
    con.close()
    t = data.run_query(db, data.ITERATIONS_SQL)
    assert (t["accuracy"].item(), t["nll"].item(), t["flops"].item()) == (0.4, 2.5, 25.0)
    assert math.isnan(t["thought_tokens_mean"].item())  # a column the old view lacked
    assert data.run_query(db, data.PARETO_SQL)["accuracy"].tolist() == [0.4]
    assert data.run_user_sql(db, "SELECT mean_accuracy FROM accuracy_by_iteration")["mean_accuracy"].tolist() == [0.4]
    for sql, params in [(data.RUNS_SQL, ()), (data.STUDIES_SQL, ()), (data.TRIALS_SQL, ()),
                        (data.ESTEP_METRICS_SQL, ("b1",)), (data.SHARDS_SQL, ("b1",)), (data.ESTEP_RUNS_SQL, ()),
                        (data.ESTEP_SAMPLES_SQL, ("b1", 10)), (data.DOC_IDS_SQL, ("b1", 1, "%")),
                        (data.DOC_SAMPLES_SQL, ("b1", 1, "d"))]:
        data.run_query(db, sql, params)
    ro = duckdb.connect(str(db), read_only=True)  # the dashboard changed nothing in the file
    assert ro.execute("SELECT accuracy FROM iterations").fetchall() == [(0.5,)]
    ro.close()


def test_the_pages_cheaper_estep_queries_return_the_full_ones_rows(tmp_path):
    from tests.dashboard.synthetic import build_synthetic_results

    db = build_synthetic_results(tmp_path / "r", settings=[{"estep.num_samples": 4, "estep.max_thought_tokens": 32, "data.raw_mix_ratio": 0.0}],
                                 seeds=(0,), docs=30, chunks=5, journal=False)
    run_id, n = data.run_query(db, data.ESTEP_RUNS_SQL).iloc[0][["run_id", "n_samples"]]
    used = []

    def query(sql, *params):
        used.append(sql)
        return data.run_query(db, sql, params)

    pd.testing.assert_frame_equal(data.run_query(db, data.ESTEP_RUNS_LISTED_SQL), data.run_query(db, data.ESTEP_RUNS_SQL))
    want = data.run_query(db, data.ESTEP_SAMPLES_SQL, (run_id, 50))
    assert data.hash_bound(int(n), 50) is not None and data.hash_bound(200, 50) is None
    pd.testing.assert_frame_equal(data.load_estep_samples(run_id, 50, int(n), query), want)
    assert used == [data.ESTEP_SAMPLES_HASHED_SQL]
    # a bound that keeps too few rows (a run counted larger than it is): the full query answers
    used.clear()
    pd.testing.assert_frame_equal(data.load_estep_samples(run_id, 50, 10**12, query), want)
    assert used == [data.ESTEP_SAMPLES_HASHED_SQL, data.ESTEP_SAMPLES_SQL]
