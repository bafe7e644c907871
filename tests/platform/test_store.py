"""The DuckDB store: idempotent ingest, the query CLI, and reads while a writer holds the file."""

import json
import threading
import time

import duckdb

from platform.ingest import ingest_runs
from platform.store import connect, db_path, writer
from tests.platform.conftest import TOY_ENV, run_cli


def _count(res, table):
    con = duckdb.connect(str(db_path(res)), read_only=True)
    try:
        return con.execute(f"select count(*) from {table}").fetchone()[0]
    finally:
        con.close()


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
        con.execute("insert into metrics values ('r', 0, 'eval', 'accuracy', 0, 0.5)")
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
