"""E-step samples stay in their Parquet files: the list (estep_files), the estep_samples view over
it, the upgrade of a store that copied the rows, moved folders, the sandbox, and what a query reads."""

import json
import shutil

import duckdb
import pandas as pd
import pytest

from platform import samples
from platform.ingest import ingest_runs
from platform.stage import MARKER
from platform.store import SCHEMA, db_path, query_rows, reading, writer

# The table the previous version copied every sample row into (platform/schema.sql before the view).
OLD_TABLE = """
DROP TABLE estep_files; DROP TABLE estep_samples_legacy;
CREATE TABLE estep_samples (run_id VARCHAR, iteration INTEGER, doc_id VARCHAR, chunk_id INTEGER, sample_idx INTEGER,
    thought VARCHAR, thought_tokens INTEGER, log_p_joint DOUBLE, log_q DOUBLE, log_w DOUBLE, selected BOOLEAN,
    model_path VARCHAR, chunk_text VARCHAR, finished BOOLEAN, annotated BOOLEAN, thought_correct BOOLEAN,
    model_key VARCHAR);
"""
OLD_COPY = """
INSERT INTO estep_samples SELECT ?, ?, doc_id, chunk_id, sample_idx, thought, thought_tokens, log_p_joint, log_q,
    log_w, selected, ?, chunk_text, finished, annotated, thought_correct, ? FROM read_parquet(?)"""


def sample_frame(n_chunks, doc="d", thought="3*7=21. 21+5=26."):
    rows = [{"doc_id": f"{doc}{c // 2}", "chunk_id": c % 2, "sample_idx": i, "thought": f"{thought} #{i}",
             "thought_tokens": 5 + i, "log_p_joint": -1.0 - i, "log_q": -2.0, "log_w": 1.0 - i, "selected": i == 0,
             "finished": True, "chunk_text": f"chunk {c}", "annotated": c % 2 == 1, "thought_correct": None}
            for c in range(n_chunks) for i in range(2)]
    return pd.DataFrame(rows)


def estep_stage(res, key, n_chunks=3, shards=None):
    """An E-step stage folder: the merged file, or (``shards``) only the shards' files."""
    art = res / "artifacts" / "estep" / key
    art.mkdir(parents=True, exist_ok=True)
    frame = sample_frame(n_chunks, doc=f"{key}-")
    if shards is None:
        frame.to_parquet(art / samples.FILE_NAME, index=False)
    else:
        for i in range(shards):
            shard = art / "shards" / f"{i:05d}-of-{shards:05d}"
            shard.mkdir(parents=True)
            frame.iloc[i::shards].to_parquet(shard / samples.FILE_NAME, index=False)
            (shard / MARKER).write_text(json.dumps({"shard_index": i}))
    (art / MARKER).write_text(json.dumps({"summary": {}}))
    return art


def run_folder(res, run_id, stages):
    run = res / "runs" / run_id
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "kind": "bootstrap", "status": "completed"}))
    (run / "stages.jsonl").write_text("".join(json.dumps(
        {"key": art.name, "stage": "estep", "iteration": it, "status": "completed", "artifact_dir": str(art)}) + "\n"
        for it, art in stages))


def kind(res, name):
    """The type of the store file's own object ``name`` (not a reader's temporary view)."""
    con = duckdb.connect(str(db_path(res)), read_only=True)
    try:
        found = con.execute("select table_type from information_schema.tables where table_name = ?", [name]).fetchall()
    finally:
        con.close()
    return found[0][0] if found else None


def counts(res):
    return query_rows(res, "select run_id, iteration, count(*) from estep_samples group by all order by all")


def test_ingest_lists_the_files_and_the_view_has_the_table_columns(tmp_path):
    res = tmp_path / "r"
    k1, k2 = estep_stage(res, "k1", 3), estep_stage(res, "k2", 5)
    run_folder(res, "a", [(1, k1), (2, k2)])
    run_folder(res, "b", [(1, k1)])  # a run that found iteration 1 in the cache: its rows are its own too
    ingest_runs(res)
    assert counts(res) == [("a", 1, 6), ("a", 2, 10), ("b", 1, 6)]
    assert query_rows(res, "select run_id, path, shard, num_rows from estep_files order by run_id, path") == [
        ("a", "artifacts/estep/k1/estep_samples.parquet", None, 6),
        ("a", "artifacts/estep/k2/estep_samples.parquet", None, 10),
        ("b", "artifacts/estep/k1/estep_samples.parquet", None, 6)]
    described = query_rows(res, "select column_name, column_type from (describe estep_samples)")
    assert described == [(name, sql_type) for name, sql_type in samples.COLUMNS]
    assert kind(res, "estep_samples") == "VIEW"  # not a copy: no table holds the rows
    got = query_rows(res, "select doc_id, chunk_id, sample_idx, thought, log_w, selected, chunk_text from estep_samples "
                          "where run_id = 'a' and iteration = 2 order by doc_id, chunk_id, sample_idx")
    want = sample_frame(5, doc="k2-").sort_values(["doc_id", "chunk_id", "sample_idx"])
    assert got == list(want[["doc_id", "chunk_id", "sample_idx", "thought", "log_w", "selected", "chunk_text"]]
                       .itertuples(index=False, name=None))
    ingest_runs(res)  # idempotent
    assert counts(res) == [("a", 1, 6), ("a", 2, 10), ("b", 1, 6)]
    assert query_rows(res, "select count(*) from estep_files") == [(3,)]


def test_a_sharded_stage_without_a_merged_file_lists_its_complete_partition(tmp_path):
    res = tmp_path / "r"
    art = estep_stage(res, "k1", 4, shards=2)
    stale = art / "shards" / "00000-of-00003"  # a partition an interrupted run left incomplete
    stale.mkdir()
    sample_frame(1).to_parquet(stale / samples.FILE_NAME, index=False)
    run_folder(res, "a", [(1, art)])
    ingest_runs(res)
    assert query_rows(res, "select shard, path from estep_files order by shard") == [
        (0, "artifacts/estep/k1/shards/00000-of-00002/estep_samples.parquet"),
        (1, "artifacts/estep/k1/shards/00001-of-00002/estep_samples.parquet")]
    assert counts(res) == [("a", 1, 8)]


def test_files_of_different_schemas_are_read_side_by_side(tmp_path):
    res = tmp_path / "r"
    old = estep_stage(res, "k1", 2)
    frame = pd.read_parquet(old / samples.FILE_NAME)  # written before chunk_text and friends existed
    frame.drop(columns=["chunk_text", "finished", "annotated", "thought_correct"]).to_parquet(
        old / samples.FILE_NAME, index=False)
    new = estep_stage(res, "k2", 2)
    run_folder(res, "a", [(1, old), (2, new)])
    ingest_runs(res)
    assert query_rows(res, "select iteration, count(chunk_text), count(*) from estep_samples group by all order by 1") == [
        (1, 0, 4), (2, 4, 4)]
    assert query_rows(res, "select count(distinct columns) from estep_files") == [(2,)]


def _previous_version_store(res, stage_rows, copied):
    """A store as the previous version left it: every sample row copied into an estep_samples table."""
    res.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path(res)))
    con.execute(SCHEMA.read_text())
    con.execute(OLD_TABLE)
    for run_id, it, art in stage_rows:
        con.execute("insert into stages (run_id, stage, iteration, cache_key, status, artifact_dir, model_path, "
                    "model_key) values (?, 'estep', ?, ?, 'completed', ?, 'artifacts/mstep/m/model', 'm')",
                    [run_id, it, art.name, str(art)])
    for run_id, it, art in copied:
        con.execute(OLD_COPY, [run_id, it, "artifacts/mstep/m/model", "m", str(art / samples.FILE_NAME)])
    con.close()


def test_a_store_that_copied_the_rows_is_upgraded_in_place_and_loses_none(tmp_path):
    res = tmp_path / "r"
    a1, b1 = estep_stage(res, "ka", 3), estep_stage(res, "kb", 2)
    stages = [("a", 1, a1), ("b", 1, b1)]
    _previous_version_store(res, stages, stages)
    with duckdb.connect(str(db_path(res))) as con:  # a run whose stages row is gone (never re-ingested)
        con.execute("insert into estep_samples (run_id, iteration, doc_id, chunk_id, sample_idx, thought) "
                    "values ('c', 1, 'x', 0, 0, 'an old thought')")
    (b1 / samples.FILE_NAME).unlink()  # b's file was deleted after its rows were copied
    before = counts(res)
    assert before == [("a", 1, 6), ("b", 1, 4), ("c", 1, 1)]  # readers see the table until a write
    with writer(res):
        pass  # the first write upgrades
    assert counts(res) == before
    assert query_rows(res, "select run_id, path from estep_files") == [("a", "artifacts/estep/ka/estep_samples.parquet")]
    assert query_rows(res, "select run_id, count(*) from estep_samples_legacy group by all order by all") == [
        ("b", 4), ("c", 1)]
    assert kind(res, "estep_samples") == "VIEW"
    assert query_rows(res, "select thought from estep_samples where run_id = 'c'") == [("an old thought",)]
    assert query_rows(res, "select model_path, model_key from estep_samples where run_id = 'a' limit 1") == [
        ("artifacts/mstep/m/model", "m")]
    # re-ingesting b while its file is gone keeps the copied rows; once the E-step wrote it again, the file wins
    run_folder(res, "b", [(1, b1)])
    ingest_runs(res, ["b"])
    assert query_rows(res, "select count(*) from estep_samples where run_id = 'b'") == [(4,)]
    sample_frame(5).to_parquet(b1 / samples.FILE_NAME, index=False)
    ingest_runs(res, ["b"])
    assert query_rows(res, "select count(*) from estep_samples where run_id = 'b'") == [(10,)]
    assert query_rows(res, "select count(*) from estep_samples_legacy where run_id = 'b'") == [(0,)]


def test_a_moved_results_folder_is_read_through_a_temporary_view(tmp_path):
    res = tmp_path / "r"
    run_folder(res, "a", [(1, estep_stage(res, "k1", 3))])
    ingest_runs(res)
    moved = tmp_path / "elsewhere"
    shutil.move(str(res), str(moved))
    assert counts(moved) == [("a", 1, 6)]
    with writer(moved):
        pass  # the next write names the new folder in the file's own view
    con = duckdb.connect(str(db_path(moved)), read_only=True)
    assert con.execute("select count(*) from estep_samples").fetchall() == [(6,)]
    con.close()


def test_the_sandbox_reads_the_view_and_neither_reads_nor_writes_another_file(tmp_path):
    from dashboard import data

    res = tmp_path / "r"
    art = estep_stage(res, "k1", 3)
    run_folder(res, "a", [(1, art)])
    ingest_runs(res)
    db = db_path(res)
    assert data.run_user_sql(db, "select count(*) as n from estep_samples")["n"].item() == 6
    registered = art / samples.FILE_NAME
    before = registered.read_bytes()
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        data.run_user_sql(db, f"COPY (SELECT 1) TO '{registered}' (FORMAT csv, USE_TMP_FILE false)")
    assert registered.read_bytes() == before
    other = res / "other.parquet"
    sample_frame(1).to_parquet(other, index=False)
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        data.run_user_sql(db, f"SELECT * FROM read_parquet('{other}')")


def test_only_the_document_query_reads_the_text_columns(tmp_path):
    from dashboard import data

    res = tmp_path / "r"
    run_folder(res, "a", [(1, estep_stage(res, "k1", 3))])
    ingest_runs(res)
    text = {"thought", "chunk_text"}
    with reading(res) as con:
        for sql, params in [(data.ESTEP_RUNS_SQL, []), (data.ESTEP_SAMPLES_SQL, ["a", 10]),
                            (data.DOC_IDS_SQL, ["a", 1, "%"])]:
            read = samples.scanned_columns(con, sql, params)
            assert read and not read & text, (sql, read)
        assert samples.scanned_columns(con, data.DOC_SAMPLES_SQL, ["a", 1, "k1-0"]) >= text


def _files_read(con, sql, params):
    plan = json.loads(con.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchall()[0][1])
    nodes, found = list(plan.get("operator", [plan])), []
    while nodes:
        node = nodes.pop()
        nodes += node.get("children", [])
        if "Total Files Read" in node.get("extra_info", {}):
            found.append(int(node["extra_info"]["Total Files Read"]))
    return found


def test_a_query_for_one_run_opens_only_that_runs_files(tmp_path):
    res = tmp_path / "r"
    run_folder(res, "a", [(1, estep_stage(res, "ka", 4, shards=4))])
    run_folder(res, "b", [(1, estep_stage(res, "kb", 4, shards=4))])
    ingest_runs(res)
    with reading(res) as con:
        read = _files_read(con, "select count(*), sum(log_w) from estep_samples where run_id = ?", ["b"])
        if not read:
            pytest.skip("this DuckDB's profile does not count the files a scan read")
        assert read in ([4], [5])  # b's 4 files (and the list's first, opened for its schema); a's stay shut
        assert _files_read(con, "select sum(log_w) from estep_samples", []) == [8]


def test_a_copy_of_the_database_alone_reads_the_files_where_they_are(tmp_path):
    res = tmp_path / "r"
    run_folder(res, "a", [(1, estep_stage(res, "k1", 3))])
    ingest_runs(res)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(db_path(res), db_path(elsewhere))
    assert counts(elsewhere) == [("a", 1, 6)]


def test_a_listed_file_deleted_later_drops_out_of_the_view_at_the_next_write(tmp_path):
    res = tmp_path / "r"
    k1, k2 = estep_stage(res, "k1", 3), estep_stage(res, "k2", 2)
    run_folder(res, "a", [(1, k1)])
    run_folder(res, "b", [(1, k2)])
    ingest_runs(res)
    (k1 / samples.FILE_NAME).unlink()  # the first file of the view's list
    run_folder(res, "c", [(1, k2)])
    ingest_runs(res, ["c"])  # another run's ingest still writes, and the view skips a's file
    assert counts(res) == [("b", 1, 4), ("c", 1, 4)]
    assert query_rows(res, "select run_id, part from estep_files where run_id = 'a'") == [("a", None)]
    ingest_runs(res, ["a"])  # a's own re-ingest forgets it
    assert query_rows(res, "select count(*) from estep_files where run_id = 'a'") == [(0,)]


def test_a_reingest_reads_only_the_footers_of_files_that_changed(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    res = tmp_path / "r"
    k1, k2 = estep_stage(res, "k1", 3, shards=2), estep_stage(res, "k2", 2)
    run_folder(res, "a", [(1, k1), (2, k2)])
    ingest_runs(res)
    read = []
    real = pq.read_metadata
    monkeypatch.setattr(pq, "read_metadata", lambda path, *a, **kw: read.append(str(path)) or real(path, *a, **kw))
    ingest_runs(res)
    assert read == []
    sample_frame(4).to_parquet(k2 / samples.FILE_NAME, index=False)  # the E-step wrote it again
    ingest_runs(res)
    assert read == [str((k2 / samples.FILE_NAME).resolve())]
    assert counts(res) == [("a", 1, 6), ("a", 2, 8)]
