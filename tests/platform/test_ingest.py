"""Ingesting a run stage by stage (what a driver asks after each stage) builds the same store as
one ingest of the whole run, idempotently, and a stage that fails to go in leaves nothing behind."""

import pytest

from platform import ingest, samples
from platform.ingest import drain, ingest_run, ingest_runs
from platform.ingest_queue import claim, pending, queue_dir, request_run
from platform.orchestrator import Orchestrator
from platform.plan import Plan, toposort
from platform.rundir import RunDir, read_ledger
from platform.stage import Stage
from platform.store import query_rows, writer
from tests.platform.test_samples_store import sample_frame

TOY = "tests.platform.toyapp.app:"
SHARDS = 3
# every table a run's ingest writes, with the columns that say what was ingested (estep_files'
# registered_at is when, which differs between two ingests of the same files)
TABLES = {"runs": "*", "stages": "*", "shards": "*", "metrics": "*",
          "estep_files": "* EXCLUDE (registered_at)", "estep_samples": "*"}


def sample_shard(ctx):
    """An E-step shard that writes sample rows, so the run has E-step files to list."""
    sample_frame(2, doc=f"{ctx.iteration}-{ctx.shard_index}-").to_parquet(ctx.out_dir / samples.FILE_NAME, index=False)
    return {"tokens_in": 1, "tokens_out": 1, "flops": 2.0}


def _plan(iterations: int = 2) -> Plan:
    """prepare -> per iteration: an E-step array of SHARDS tasks and its merge (metrics), an M-step
    (metrics), an eval (metrics)."""
    model = Stage("prepare", TOY + "prepare", {"sleep_s": 0})
    evals = []
    for it in range(iterations):
        estep = Stage("estep", "tests.platform.test_ingest:sample_shard", {"x": 0.5}, {"prev": model}, iteration=it,
                      num_shards=SHARDS, merge_fn=TOY + "merge")
        model = Stage("mstep", TOY + "train", {"sleep_s": 0, "fail_at": None, "nan_at": None, "x": 0.5},
                      {"prev": model, "shards": estep}, iteration=it)
        evals.append(Stage("eval", TOY + "score", {"x": 0.5}, {"model": model}, iteration=it))
    return Plan("toy", toposort(evals), evals)


def _run(results, run_id) -> RunDir:
    run = RunDir(results, run_id)
    run.create(config={"work": {"x": 0.5}}, overrides=[], meta={"run_id": run_id, "kind": "toy"}, git={})
    return run


def _stagewise(results, asked: list) -> Orchestrator:
    """An orchestrator that ingests each finished stage alone, as the driver's requests do."""
    def ingest_stage(run_id, stage_key=None):
        asked.append(stage_key)
        ingest_run(results, run_id, stage_key)

    return Orchestrator({"name": "debug"}, results, ingest=ingest_stage)


def _dump(results) -> dict:
    return {t: sorted(query_rows(results, f"SELECT {cols} FROM {t}"), key=repr) for t, cols in TABLES.items()}


def _keys(results, run_id) -> list[str]:
    return list(dict.fromkeys(e["key"] for e in read_ledger(results / "runs" / run_id)))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run a, executed twice (the second time every stage is a cache hit), and run b, whose every
    stage a computed: the store built only from stage ingests, and the keys they asked for. Built
    once for the module (seconds): every test leaves the store as it found it, and says so."""
    res, asked = tmp_path_factory.mktemp("ingest") / "r", []
    orch = _stagewise(res, asked)
    run_a = _run(res, "a")
    orch.execute(_plan(), run_a)
    orch.execute(_plan(), run_a)
    orch.execute(_plan(), _run(res, "b"))
    return res, asked


def test_a_store_built_stage_by_stage_is_the_one_a_whole_run_ingest_builds(two_runs):
    res, asked = two_runs
    stages_per_run = 1 + 2 * 3  # prepare, then estep, mstep and eval per iteration
    assert len(asked) == 3 * stages_per_run and None not in asked  # no whole-run ingest happened
    incremental = _dump(res)
    counts = {t: len(rows) for t, rows in incremental.items()}
    assert counts == {"runs": 2, "stages": 2 * stages_per_run, "shards": 2 * 2 * SHARDS,
                      "metrics": 2 * 2 * (1 + 3 + 1), "estep_files": 2 * 2 * SHARDS,
                      "estep_samples": 2 * 2 * SHARDS * 4}
    # run a computed every stage, its second pass and run b found them cached
    assert query_rows(res, "SELECT run_id, bool_and(NOT cached) FROM stages GROUP BY 1 ORDER BY 1") == [
        ("a", True), ("b", False)]

    ingest_runs(res)  # one whole ingest of every run: the same rows
    assert _dump(res) == incremental
    for run_id in ("a", "b"):  # and each stage again: replaced, never added
        for key in _keys(res, run_id):
            ingest_run(res, run_id, key)
    assert _dump(res) == incremental


def test_a_stage_ingest_reads_that_stage_alone(two_runs, monkeypatch):
    res, _ = two_runs
    read = []
    real = ingest._ingest_stage
    monkeypatch.setattr(ingest, "_ingest_stage", lambda con, run_id, entry, *a: read.append(entry["key"]) or
                        real(con, run_id, entry, *a))
    key = _keys(res, "a")[3]
    ingest_run(res, "a", key)
    assert read == [key]
    ingest_run(res, "a")
    assert len(read) == 1 + len(_keys(res, "a"))


def test_a_stage_that_fails_to_go_in_leaves_the_store_as_it_was_and_stays_queued(two_runs, monkeypatch):
    res, _ = two_runs
    before = _dump(res)
    estep_key = next(e["key"] for e in read_ledger(res / "runs" / "a") if e["stage"] == "estep")

    def broken(*args):
        raise OSError("disk gone mid-stage")

    monkeypatch.setattr(samples, "register", broken)  # after the stage's rows were deleted and rewritten
    request_run(res, "a", estep_key)
    assert drain(res) == 0 and pending(res) == 1
    assert _dump(res) == before  # rolled back: no row lost, none half written
    monkeypatch.undo()
    assert drain(res) == 1 and pending(res) == 0
    assert _dump(res) == before


def test_stage_requests_coalesce_and_a_whole_run_request_covers_them(two_runs, monkeypatch):
    res, _ = two_runs
    before = _dump(res)
    first, second = _keys(res, "a")[:2]
    for key in (first, first, second):
        request_run(res, "a", key)
    request_run(res, "a")
    assert sorted(p.name for p in queue_dir(res).iterdir()) == sorted(["run.a", f"stage.a.{first}", f"stage.a.{second}"])
    claimed = claim(res)
    assert [(r.kind, r.name) for r in claimed] == [("run", "a"), ("stage", "a"), ("stage", "a")]  # whole runs first
    assert {r.key for r in claimed} == {None, first, second}
    calls = []
    real = ingest._ingest_run
    monkeypatch.setattr(ingest, "_ingest_run", lambda con, path, key=None: calls.append(key) or real(con, path, key))
    assert drain(res) == 3 and pending(res) == 0  # the claimed files, put back by this round
    assert calls == [None]  # the whole run, once: its stages' requests are done by it
    assert _dump(res) == before


def test_a_run_with_metrics_from_before_their_cache_key_is_ingested_whole(two_runs):
    res, _ = two_runs
    before = _dump(res)
    with writer(res) as con:  # as a store upgraded in place holds them: whose stage, it cannot say
        con.execute("UPDATE metrics SET cache_key = NULL WHERE run_id = 'a'")
    ingest_run(res, "a", _keys(res, "a")[0])
    assert _dump(res) == before
