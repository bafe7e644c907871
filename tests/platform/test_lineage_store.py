"""Lineage columns in the store (stages.model_key / model_path, metrics.cache_key), the completion
marker's record of a stage's inputs, and the in-place upgrade of a store written before them."""

import json

import duckdb

from platform.ingest import ingest_runs
from platform.stage import MARKER, Stage, run_stage
from platform.store import db_path, query_rows
from tests.platform.conftest import TOY_ENV, run_cli

FN = "tests.platform.toyapp.app:"

# The tables as the store had them before the lineage, repeat and metric-name columns.
OLD_TABLES = """
CREATE TABLE studies (study VARCHAR PRIMARY KEY, experiment VARCHAR, directions VARCHAR[], storage VARCHAR,
    created_at TIMESTAMP, n_trials INTEGER);
CREATE TABLE trials (study VARCHAR, number INTEGER, state VARCHAR, params JSON, "values" DOUBLE[],
    run_id VARCHAR, error VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, PRIMARY KEY (study, number));
CREATE TABLE stages (run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, job_id VARCHAR,
    status VARCHAR, cached BOOLEAN, started_at TIMESTAMP, ended_at TIMESTAMP, wall_s DOUBLE,
    tokens_in BIGINT, tokens_out BIGINT, flops DOUBLE, gpu_hours DOUBLE, artifact_dir VARCHAR);
CREATE TABLE metrics (run_id VARCHAR, iteration INTEGER, stage VARCHAR, name VARCHAR, step BIGINT, value DOUBLE);
CREATE TABLE shards (run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, shard INTEGER,
    job_id VARCHAR, host VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, wall_s DOUBLE, tokens_in BIGINT,
    tokens_out BIGINT, flops DOUBLE);
INSERT INTO stages (run_id, stage, cache_key, cached, wall_s) VALUES ('old', 'eval', 'k0', false, 1.0);
INSERT INTO metrics VALUES ('old', 0, 'eval', 'accuracy', 0, 0.5);
"""


def test_the_marker_records_each_input_stage_and_key(tmp_path):
    prep = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    train = Stage("mstep", FN + "train", {"sleep_s": 0, "fail_at": None, "nan_at": None, "x": 0.5}, {"prev": prep},
                  iteration=0)
    run_stage(prep, tmp_path)
    record = run_stage(train, tmp_path)
    assert record["inputs"] == {"prev": {"stage": "prepare", "key": prep.key}}
    assert json.loads((train.out_dir(tmp_path) / MARKER).read_text())["inputs"] == record["inputs"]
    assert run_stage(prep, tmp_path)["inputs"] == {}


def test_an_older_store_gains_the_columns_and_a_metrics_row_finds_its_model(tmp_path):
    res = tmp_path / "r"
    res.mkdir()
    con = duckdb.connect(str(db_path(res)))
    con.execute(OLD_TABLES)
    con.close()
    run_cli("platform.sweep", f"paths.results={res}", "work.iterations=1", "sweep.n_trials=1", env=TOY_ENV, check=True)
    ingest_runs(res)
    # the old rows are kept, with NULL in the new columns
    assert query_rows(res, "select cache_key, model_key from stages where run_id = 'old'") == [("k0", None)]
    assert query_rows(res, "select cache_key from metrics where run_id = 'old'") == [(None,)]
    assert query_rows(res, "select metric_names from studies") == [(["accuracy"],)]
    assert query_rows(res, "select duplicate_of, cache_hit from trials") == [(None, False)]
    # every new metrics row joins its own stages row; the toy's eval read the toy's mstep (no model/ folder)
    assert query_rows(res, """select count(*) from metrics m left join stages s using (run_id, cache_key)
                              where run_id <> 'old' and s.cache_key is null""") == [(0,)]
    (model_key, model_path, mstep_key), = query_rows(res, """
        select e.model_key, e.model_path, m.cache_key from metrics x
        join stages e using (run_id, cache_key) join stages m on m.run_id = e.run_id and m.stage = 'mstep'
        where x.name = 'accuracy' and x.run_id <> 'old'""")
    assert model_key == mstep_key and model_path == f"artifacts/mstep/{mstep_key}"
    assert (res / model_path / MARKER).exists()


def _run_folder(res, run_id, events):
    run = res / "runs" / run_id
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "status": "completed"}))
    (run / "stages.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_each_stage_counts_as_computed_in_the_one_run_whose_job_computed_it(tmp_path):
    res = tmp_path / "r"
    arts = {}
    for key, job, wall in (("k1", "11", 2.0), ("k2", "12", 3.0)):
        arts[key] = res / "artifacts" / "mstep" / key
        arts[key].mkdir(parents=True)
        (arts[key] / MARKER).write_text(json.dumps({"job_id": job, "wall_s": wall, "summary": {}}))

    def ev(key, status, **kw):
        return {"stage": "mstep", "iteration": 0, "key": key, "status": status, "artifact_dir": str(arts[key]), **kw}

    _run_folder(res, "a", [
        ev("k1", "submitted", job_id="11"),  # the driver died after its job wrote the marker, before recording it
        ev("k1", "completed", cached=True, job_id="11"),  # the resumed trial found it cached
        ev("k2", "submitted", job_id="12"), ev("k2", "completed", cached=False, job_id="12"),
        ev("k2", "completed", cached=True, job_id="12"),  # a later trial repeating this run's params
    ])
    _run_folder(res, "b", [ev("k1", "completed", cached=True, job_id="11")])  # another run sharing k1
    ingest_runs(res)
    rows = query_rows(res, "select run_id, cache_key, cached, job_id, wall_s from stages order by run_id, cache_key")
    assert rows == [("a", "k1", False, "11", 2.0), ("a", "k2", False, "12", 3.0), ("b", "k1", True, "11", 2.0)]
    assert query_rows(res, "select sum(wall_s) from stages where not cached") == [(5.0,)]
