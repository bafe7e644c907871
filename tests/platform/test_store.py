"""The DuckDB store: idempotent ingest, the query CLI, and reads while a writer holds the file."""

import json
import threading
import time

import duckdb

from platform.ingest import ingest_runs
from platform.store import db_path, query_rows, writer
from tests.platform.conftest import TOY_ENV, run_cli


def _count(res, table):
    return query_rows(res, f"select count(*) from {table}")[0][0]


def test_ingesting_twice_adds_no_row(tmp_path):
    res = tmp_path / "r"
    run_cli("platform.sweep", f"paths.results={res}", "sweep.n_trials=2", env=TOY_ENV, check=True)
    tables = ("runs", "stages", "metrics", "trials", "studies")
    before = {t: _count(res, t) for t in tables}
    assert before["metrics"] > 0 and before["runs"] == 2
    ingest_runs(res)
    out = run_cli("platform.ingest", "--results", str(res), env=TOY_ENV, check=True)
    assert "1 studies" in out.stdout
    assert {t: _count(res, t) for t in tables} == before


def test_query_cli_formats_and_errors(tmp_path):
    res = tmp_path / "r"
    run_cli("platform.sweep", f"paths.results={res}", "sweep.n_trials=1", env=TOY_ENV, check=True)
    sql = "select iteration, accuracy from iterations order by iteration"
    table = run_cli("platform.query", "--results", str(res), sql, check=True).stdout
    assert "iteration" in table and "accuracy" in table
    csv = run_cli("platform.query", "--results", str(res), "--format", "csv", sql, check=True).stdout.splitlines()
    assert csv[0] == "iteration,accuracy" and len(csv) == 3
    rows = json.loads(run_cli("platform.query", "--results", str(res), "--format", "json", sql, check=True).stdout)
    assert [r["iteration"] for r in rows] == [0, 1]
    bad = run_cli("platform.query", "--results", str(res), "select * from nope")
    assert bad.returncode == 2 and "nope" in bad.stderr
    missing = run_cli("platform.query", "--results", str(tmp_path / "none"), "select 1")
    assert missing.returncode == 2 and "no results database" in missing.stderr


def test_reader_waits_for_a_brief_writer(tmp_path):
    with writer(tmp_path) as con:
        con.execute("insert into metrics (run_id, iteration, stage, name, step, value) values ('r', 0, 'eval', 'accuracy', 0, 0.5)")
    holder = duckdb.connect(str(db_path(tmp_path)))  # another writer holds the file for a moment

    def release():
        time.sleep(0.5)
        holder.close()

    code = ("import sys; sys.path.insert(0, '.'); import platform; from platform.store import query_df; "
            f"print(query_df('{tmp_path}', 'select value from metrics').value.tolist())")
    t = threading.Thread(target=release)
    t.start()
    import subprocess, sys
    from tests.platform.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    t.join()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0.5]"


def _older_store(res, *statements):
    """A results folder whose store was created by ``statements`` (tables as an earlier schema had them)."""
    res.mkdir()
    con = duckdb.connect(str(db_path(res)))
    for sql in statements:
        con.execute(sql)
    con.close()


def _estep_run(res, shard_records, record):
    """Run ``new`` whose one stage, an E-step, has these shard markers and this marker; its folder."""
    from platform.stage import MARKER

    art = res / "artifacts" / "estep" / "k1"
    for i, shard_record in enumerate(shard_records):
        shard = art / "shards" / f"{i:05d}-of-{len(shard_records):05d}"
        shard.mkdir(parents=True)
        (shard / MARKER).write_text(json.dumps({"shard_index": i, **shard_record}))
    (art / MARKER).write_text(json.dumps(record))
    run = res / "runs" / "new"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "new", "kind": "bootstrap", "status": "completed"}))
    (run / "stages.jsonl").write_text(json.dumps({"key": "k1", "stage": "estep", "iteration": 1, "status": "completed",
                                                   "artifact_dir": str(art)}) + "\n")
    return art


def test_a_store_and_runs_from_before_chunk_text_are_upgraded(tmp_path):
    """A store created before estep_samples.chunk_text/finished and the shards table existed gains
    them on the next write; sample files written before then ingest with NULL there."""
    import pandas as pd

    res = tmp_path / "r"
    _older_store(res, "CREATE TABLE estep_samples (run_id VARCHAR, iteration INTEGER, doc_id VARCHAR, chunk_id INTEGER, "
                      "sample_idx INTEGER, thought VARCHAR, thought_tokens INTEGER, log_p_joint DOUBLE, log_q DOUBLE, "
                      "log_w DOUBLE, selected BOOLEAN, model_path VARCHAR)",
                 "INSERT INTO estep_samples VALUES ('old', 1, 'd', 0, 0, 'z', 1, -1, -1, 0, true, 'm')")
    shard = {"host": "h", "started_at": 1.0, "ended_at": 3.0, "summary": {"tokens_in": 10, "tokens_out": 5, "flops": 100.0}}
    art = _estep_run(res, [{**shard, "job_id": f"7_{i}", "wall_s": 1.5 + i} for i in range(2)],
                     {"wall_s": 0.1, "summary": {"flops": 200.0}})
    pd.DataFrame({"doc_id": ["d"], "chunk_id": [0], "sample_idx": [0], "thought": ["z"], "thought_tokens": [1],
                  "log_p_joint": [-1.0], "log_q": [-1.0], "log_w": [0.0], "selected": [True]}).to_parquet(
        art / "estep_samples.parquet", index=False)
    ingest_runs(res)
    rows = query_rows(res, "select run_id, chunk_text, finished from estep_samples order by run_id")
    shards = query_rows(res, "select shard, job_id, wall_s, flops from shards order by shard")
    assert rows == [("new", None, None), ("old", None, None)]
    assert shards == [(0, "7_0", 1.5, 100.0), (1, "7_1", 2.5, 100.0)]


def test_reuse_counts_land_in_stages_and_shards_of_a_store_upgraded_in_place(tmp_path):
    """The E-step's generated/reused counts (the sample store) get columns in ``stages`` and
    ``shards``; a store whose tables predate them gains them, its old rows NULL there."""
    res = tmp_path / "r"
    _older_store(res, "CREATE TABLE stages (run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, "
                      "job_id VARCHAR, status VARCHAR, cached BOOLEAN, started_at TIMESTAMP, ended_at TIMESTAMP, "
                      "wall_s DOUBLE, tokens_in BIGINT, tokens_out BIGINT, flops DOUBLE, gpu_hours DOUBLE, "
                      "artifact_dir VARCHAR)",
                 "CREATE TABLE shards (run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, "
                 "shard INTEGER, job_id VARCHAR, host VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, wall_s DOUBLE, "
                 "tokens_in BIGINT, tokens_out BIGINT, flops DOUBLE)",
                 "INSERT INTO stages (run_id, stage, cache_key, flops) VALUES ('old', 'estep', 'k0', 1.0)")
    counts = {"tokens_in": 10, "tokens_out": 8, "flops": 100.0, "tokens_generated": 3, "tokens_reused": 5,
              "samples_drawn": 1, "samples_reused": 2, "flops_computed": 40.0}
    _estep_run(res, [{"summary": {"tokens_out": 4}}, {"summary": counts}], {"summary": counts})
    ingest_runs(res)
    cols = "tokens_out, tokens_generated, tokens_reused, samples_drawn, samples_reused, flops, flops_computed"
    assert query_rows(res, f"select run_id, {cols} from stages order by run_id") == [
        ("new", 8, 3, 5, 1, 2, 100.0, 40.0), ("old", None, None, None, None, None, 1.0, None)]
    assert query_rows(res, f"select shard, {cols} from shards order by shard") == [
        (0, 4, None, None, None, None, None, None), (1, 8, 3, 5, 1, 2, 100.0, 40.0)]


METRICS = [("r", 1, "eval", "accuracy", 0, 0.5), ("r", 1, "eval", "accuracy", 10, 0.4),
           ("r", 1, "eval", "nll", 0, 2.0), ("r", 1, "eval", "nll", 10, 3.0),
           ("r", 1, "eval", "thought_tokens_mean", 0, 7.0),
           ("r", 1, "mstep", "accuracy", 20, 0.9)]  # not an eval metric


def _fill(con):
    con.execute("insert into runs (run_id, experiment, kind, seed) values ('r', 'e', 'bootstrap', 0)")
    con.executemany("insert into metrics (run_id, iteration, stage, name, step, value) values (?, ?, ?, ?, ?, ?)", METRICS)


def test_iterations_view_reports_each_eval_metric_at_its_last_step(tmp_path):
    with writer(tmp_path) as con:
        _fill(con)
    assert query_rows(tmp_path, "select iteration, accuracy, nll, thought_tokens_mean from iterations") == [(1, 0.4, 3.0, 7.0)]
    assert query_rows(tmp_path, "select n_runs, mean_accuracy from accuracy_by_iteration") == [(1, 0.4)]


# The `iterations` view as the previous version wrote it into every store: the max over steps, no
# thought_tokens_mean (the views built on it read whichever `iterations` the connection has).
OLD_VIEWS = """
CREATE OR REPLACE VIEW iterations AS
SELECT r.run_id, r.experiment, r.kind, r.study, r.trial, r.seed, m.iteration,
       max(CASE WHEN m.name = 'accuracy' THEN m.value END) AS accuracy,
       max(CASE WHEN m.name = 'nll' THEN m.value END) AS nll,
       max(CASE WHEN m.name = 'elbo_1' THEN m.value END) AS elbo_1,
       max(CASE WHEN m.name = 'elbo_2' THEN m.value END) AS elbo_2,
       max(CASE WHEN m.name = 'elbo_4' THEN m.value END) AS elbo_4
FROM runs r JOIN metrics m USING (run_id)
WHERE m.stage = 'eval'
GROUP BY ALL;
"""


def _file_views(results):
    """The file's own views, read without the store's helpers (which define schema.sql's over them)."""
    con = duckdb.connect(str(db_path(results)), read_only=True)
    try:
        return con.execute("select accuracy, nll from iterations").fetchall()
    finally:
        con.close()


def test_a_store_with_the_previous_views_is_read_with_the_current_ones_and_upgraded_on_write(tmp_path):
    with writer(tmp_path) as con:
        _fill(con)
        con.execute(OLD_VIEWS)
    assert _file_views(tmp_path) == [(0.5, 3.0)]  # what the previous version's view says
    sql = "select accuracy, nll, thought_tokens_mean from iterations"
    # readers (platform.query, the dashboard) get schema.sql's views without changing the file ...
    assert query_rows(tmp_path, sql) == [(0.4, 3.0, 7.0)]
    assert query_rows(tmp_path, "select mean_accuracy from accuracy_by_iteration") == [(0.4,)]
    assert _file_views(tmp_path) == [(0.5, 3.0)]
    # ... and the next write (an ingest) replaces the file's views in place
    with writer(tmp_path):
        pass
    assert _file_views(tmp_path) == [(0.4, 3.0)]
    con = duckdb.connect(str(db_path(tmp_path)), read_only=True)
    assert con.execute(sql).fetchall() == [(0.4, 3.0, 7.0)]
    assert con.execute("select iteration, accuracy, gain from gain_vs_estep_compute").fetchall() == [(1, 0.4, 0.0)]
    con.close()


def test_a_database_file_without_tables_still_answers_queries(tmp_path):
    duckdb.connect(str(db_path(tmp_path))).close()  # not written by the store: none of the tables the views read
    assert query_rows(tmp_path, "select 42") == [(42,)]
