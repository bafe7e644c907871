"""Load run folders and Optuna studies into DuckDB, idempotently.

A run is replaced as a whole (delete its rows, insert what its folder says now), or one stage of
it with the run row (what a driver asks as each stage finishes: the cost is the stage's, not the
run's), each in one transaction, so ingesting twice adds no row and a crash leaves no partial one.
Both write the same rows for a stage (tests/platform/test_ingest.py). E-step sample rows are not
copied: their Parquet files are listed in ``estep_files`` and read through the ``estep_samples``
view (platform/samples.py).

Sweep drivers do not write here themselves: they queue requests (``platform.ingest_queue``) and
one process at a time, the holder of the store's writer lock, takes them (:func:`drain`): a
thread of each driver whenever the lock is free (:class:`Ingester`), or one dedicated ingester.

    python -m platform.ingest [--results results]            # everything under results/, then the queue
    python -m platform.ingest --results results --follow     # a dedicated ingester for every driver
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

import duckdb
import yaml

from platform import samples
from platform.ingest_queue import Request, claim, done, pending, put_back, study_record
from platform.rundir import read_ledger
from platform.stage import MARKER
from platform.store import transaction, writer, writer_lock, writing

# a run's rows besides its ``runs`` row; each names the cache key of the stage it came from
STAGE_TABLES = ("stages", "shards", "metrics", "estep_files")
# what of a stage's compute it did now and what it reused (the E-step's sample store); NULL where a
# summary has none
REUSE_FIELDS = ("tokens_generated", "tokens_reused", "samples_drawn", "samples_reused", "flops_computed")


def _ts(t: Optional[float]) -> Optional[datetime]:
    return None if t is None else datetime.fromtimestamp(float(t), tz=timezone.utc).replace(tzinfo=None)


def _latest_entries(ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last ledger event per stage key, in first-seen order.

    A stage this run computed stays computed: when its last event is a cache hit (a trial that
    repeated the run's params, a resumed trial passing stages it had finished) the row keeps the
    event of the completion that did the work, its job ids and wall time, with cached false.
    """
    last: dict[str, dict[str, Any]] = {}
    computed: dict[str, dict[str, Any]] = {}
    for entry in ledger:
        last[entry["key"]] = entry
        if entry.get("status") == "completed" and entry.get("cached") is False:
            computed.setdefault(entry["key"], entry)
    return [computed.get(key, entry) if entry.get("status") == "completed" else entry for key, entry in last.items()]


def _model_of(results: Path, entry: dict[str, Any], record: dict[str, Any]) -> tuple[Optional[str], Optional[str]]:
    """(model_key, model_path) of a stage: the model it read (its input ``model``, as the completion
    marker records it), else the model/ folder it wrote itself; model_path is relative to ``results``."""
    source = (record.get("inputs") or {}).get("model")
    if source:
        stage, key = source["stage"], source["key"]
    elif (Path(entry["artifact_dir"]) / "model").is_dir():
        stage, key = entry["stage"], entry["key"]
    else:
        return None, None
    folder = f"artifacts/{stage}/{key}"
    return key, f"{folder}/model" if (results / folder / "model").is_dir() else folder


@lru_cache(maxsize=256)
def _config_json(path: str, mtime_ns: int, size: int) -> str:
    """A run's config.yaml as JSON, parsed once per version of the file: every stage's ingest
    rewrites the run row, and parsing the YAML (about 20 ms) would be most of a small stage's cost."""
    config = Path(path).read_text()
    return json.dumps(yaml.safe_load(config) if config else None)


def _run_config(run_path: Path) -> str:
    path = run_path / "config.yaml"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return json.dumps(None)
    return _config_json(str(path), stat.st_mtime_ns, stat.st_size)


def _replace_run_row(con: duckdb.DuckDBPyConnection, run_path: Path) -> str:
    """The run's ``runs`` row as run.json (status, times, error) says now; returns its run id."""
    meta = json.loads((run_path / "run.json").read_text())
    run_id = meta["run_id"]
    con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
    git = json.loads((run_path / "git.json").read_text()) if (run_path / "git.json").exists() else {}
    con.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, meta.get("experiment"), meta.get("kind"), meta.get("study"), meta.get("trial"), meta.get("seed"),
         json.dumps(meta.get("params", {})), _run_config(run_path),
         git.get("commit"), git.get("dirty"), meta.get("status"), meta.get("error"), str(run_path),
         _ts(meta.get("started_at")), _ts(meta.get("ended_at"))],
    )
    return run_id


def _has_unkeyed_metrics(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """Metric rows of this run ingested before ``metrics.cache_key`` existed: a stage's ingest
    cannot tell whose they are, so the run is ingested whole (which replaces them)."""
    return con.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND cache_key IS NULL", [run_id]).fetchone()[0] > 0


def _ingest_run(con: duckdb.DuckDBPyConnection, run_path: Path, stage_key: Optional[str] = None) -> int:
    """Replace the run's rows (``stage_key`` None), or only those of the stage with that cache key,
    with what the run's folder says now; the run row either way. A stage's rows depend only on
    the ledger events of its own key, so a stage's ingest writes exactly the rows the whole run's
    ingest would write for it: its cost is the stage's, not the run's."""
    run_id = _replace_run_row(con, run_path)
    if stage_key is not None and _has_unkeyed_metrics(con, run_id):
        stage_key = None
    where, params = ("run_id = ?", [run_id]) if stage_key is None else ("run_id = ? AND cache_key = ?", [run_id, stage_key])
    for table in STAGE_TABLES:
        con.execute(f"DELETE FROM {table} WHERE {where}", params)
    ledger = read_ledger(run_path)
    if stage_key is not None:
        ledger = [entry for entry in ledger if entry.get("key") == stage_key]
    submitted: dict[str, set[str]] = {}  # per stage key, the job ids this run submitted
    for entry in ledger:
        if entry.get("status") == "submitted" and entry.get("job_id"):
            submitted.setdefault(entry["key"], set()).update(str(entry["job_id"]).split(","))
    rows = 0
    for entry in _latest_entries(ledger):
        rows += _ingest_stage(con, run_id, entry, run_path.parent.parent, submitted.get(entry["key"], set()))
    return rows


def _insert(con: duckdb.DuckDBPyConnection, table: str, row: dict[str, Any]) -> None:
    """INSERT by column name: stores upgraded in place have their added columns last."""
    con.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def _insert_many(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """:func:`_insert` for many rows of the same columns in one statement (200 shards: 1.2 ms each
    one by one)."""
    if rows:
        import pyarrow as pa

        frame = pa.Table.from_pylist(rows)  # noqa: F841 (read by DuckDB's replacement scan)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")


def _ingest_stage(con: duckdb.DuckDBPyConnection, run_id: str, entry: dict[str, Any], results: Path,
                  submitted: set[str]) -> int:
    art = Path(entry["artifact_dir"])
    record = json.loads((art / MARKER).read_text()) if (art / MARKER).exists() else {}
    if entry.get("status") == "completed" and entry.get("cached") and str(record.get("job_id")) in submitted:
        # this run's own job wrote the marker, but its driver died before recording the completion:
        # the run that resumed found it cached; the compute is this run's
        entry = {**entry, "cached": False, "job_id": str(record["job_id"])}
    summary = record.get("summary", {})
    gpus = entry.get("gpus", 0) or 0
    wall = record.get("wall_s") or entry.get("wall_s")
    model_key, model_path = _model_of(results, entry, record) if record else (None, None)
    _insert(con, "stages", {
        "run_id": run_id, "stage": entry["stage"], "iteration": entry.get("iteration"), "cache_key": entry["key"],
        "job_id": entry.get("job_id") or record.get("job_id"), "status": entry.get("status"),
        "cached": entry.get("cached"), "started_at": _ts(record.get("started_at")),
        "ended_at": _ts(record.get("ended_at")), "wall_s": wall, "tokens_in": summary.get("tokens_in"),
        "tokens_out": summary.get("tokens_out"), "flops": summary.get("flops"),
        "gpu_hours": (wall or 0) * gpus / 3600.0, "artifact_dir": str(art),
        "model_key": model_key, "model_path": model_path, **{k: summary.get(k) for k in REUSE_FIELDS},
    })
    if entry.get("status") != "completed":
        return 1
    rows = 1
    metrics = art / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size:
        con.execute(
            "INSERT INTO metrics (run_id, iteration, stage, cache_key, name, step, value) "
            "SELECT ?, ?, ?, ?, name, CAST(step AS BIGINT), CAST(value AS DOUBLE) "
            "FROM read_json(?, format='newline_delimited', columns={'name': 'VARCHAR', 'step': 'BIGINT', 'value': 'DOUBLE'})",
            [run_id, entry.get("iteration"), entry["stage"], entry["key"], str(metrics)],
        )
    shards = []
    for marker in sorted(art.glob(f"shards/*/{MARKER}")):
        shard = json.loads(marker.read_text())
        part = shard.get("summary", {})
        shards.append({
            "run_id": run_id, "stage": entry["stage"], "iteration": entry.get("iteration"), "cache_key": entry["key"],
            "shard": shard.get("shard_index"), "job_id": shard.get("job_id"), "host": shard.get("host"),
            "started_at": _ts(shard.get("started_at")), "ended_at": _ts(shard.get("ended_at")),
            "wall_s": shard.get("wall_s"), "tokens_in": part.get("tokens_in"), "tokens_out": part.get("tokens_out"),
            "flops": part.get("flops"), "cached": entry.get("cached"), **{k: part.get(k) for k in REUSE_FIELDS},
        })
    _insert_many(con, "shards", shards)
    # E-step samples: the files are listed, not copied (platform/samples.py; the estep_samples view)
    samples.register(con, results, art, {"run_id": run_id, "iteration": entry.get("iteration"), "stage": entry["stage"],
                                         "cache_key": entry["key"], "model_path": model_path, "model_key": model_key})
    return rows


def ingest_runs(results: str | Path, run_ids: Optional[Iterable[str]] = None) -> int:
    runs_root = Path(results) / "runs"
    paths = [runs_root / r for r in run_ids] if run_ids is not None else sorted(runs_root.glob("*"))
    paths = [p for p in paths if (p / "run.json").exists()]
    with writer(results) as con:
        return sum(_ingest_run(con, p) for p in paths)


def ingest_run(results: str | Path, run_id: str, stage_key: Optional[str] = None) -> int:
    """Ingest one run now (no queue): the whole of it, or with ``stage_key`` only that stage's rows
    and the run row (what a driver's orchestrator asks after each stage)."""
    path = Path(results) / "runs" / run_id
    if not (path / "run.json").exists():
        return 0
    with writer(results) as con:
        return _ingest_run(con, path, stage_key)


def _spend_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    """What the study's drivers computed (platform/budget.py) and why the budget stopped it, if it did."""
    spend = attrs.get("spend") or {}
    return {"spend_flops": spend.get("flops"), "spend_gpu_hours": spend.get("gpu_hours"),
            "spend_wall_s": spend.get("wall_s"), "stopped_by_budget": attrs.get("stopped_by_budget")}


def _values_se(trial: Any, metric_names: Optional[list[str]]) -> Optional[list[Optional[float]]]:
    """The standard error of each objective over a trial's replicate seeds (sweep.seeds), else None."""
    if not trial.user_attrs.get("seeds") or not metric_names:
        return None
    return [trial.user_attrs.get(f"{name}_se") for name in metric_names]


def ingest_study(results: str | Path, study: Any, experiment: str, storage_label: str) -> None:
    """Mirror an Optuna study's trials (state, params, values, run id, error) into DuckDB."""
    with writer(results) as con:
        _ingest_study(con, study, experiment, storage_label)


def _ingest_study(con: duckdb.DuckDBPyConnection, study: Any, experiment: str, storage_label: str) -> None:
    trials = study.get_trials(deepcopy=False)
    con.execute("DELETE FROM studies WHERE study = ?", [study.study_name])
    con.execute("DELETE FROM trials WHERE study = ?", [study.study_name])
    _insert(con, "studies", {
        "study": study.study_name, "experiment": experiment, "directions": [d.name.lower() for d in study.directions],
        "storage": storage_label, "created_at": min((t.datetime_start for t in trials if t.datetime_start), default=None),
        "n_trials": len(trials), "metric_names": study.metric_names,
        **_spend_columns(study.user_attrs),
    })
    for t in trials:
        _insert(con, "trials", {
            "study": study.study_name, "number": t.number, "state": t.state.name, "params": json.dumps(t.params),
            '"values"': t.values, "run_id": t.user_attrs.get("run_id"), "error": t.user_attrs.get("error"),
            "started_at": t.datetime_start, "ended_at": t.datetime_complete,
            "duplicate_of": t.user_attrs.get("duplicate_of"), "cache_hit": t.user_attrs.get("cache_hit"),
            "seeds": t.user_attrs.get("seeds"), "run_ids": t.user_attrs.get("run_ids"),
            "values_se": _values_se(t, study.metric_names),
        })


def _storage(label: str) -> Any:
    """The Optuna storage a study's label names: a URL, or the path of a journal file."""
    if "://" in label:
        return label
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(label))


_OPENED: dict[tuple[str, str], Any] = {}  # (storage label, study) -> the study, opened once per process


def _open_study(record: dict[str, Any], studies: dict[str, Any]) -> Any:
    """The study a request names: the caller's own open study of that name, else loaded once."""
    name, label = record["study"], record["storage"]
    if name in studies:
        return studies[name]
    if (label, name) not in _OPENED:
        import optuna

        _OPENED[(label, name)] = optuna.load_study(study_name=name, storage=_storage(label))
    return _OPENED[(label, name)]


def _ingest_request(con: duckdb.DuckDBPyConnection, results: Path, request: Request, studies: dict[str, Any]) -> None:
    if request.kind in ("run", "stage"):
        run_path = results / "runs" / request.name
        if (run_path / "run.json").exists():
            _ingest_run(con, run_path, request.key)
        return
    record = study_record(request)
    _ingest_study(con, _open_study(record, studies), record["experiment"], record["storage"])


_WARNED: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"[ingest] {text}", file=sys.stderr, flush=True)


def _ingest_requests(results: Path, requests: list[Request], studies: dict[str, Any]) -> list[Request]:
    """Each request in its own transaction on one connection; the ones that went in. One that
    fails (a ledger line half written, a study's storage unreachable) waits for the next round."""
    ok: list[Request] = []
    whole: set[str] = set()  # runs ingested whole this round
    with writing(results) as con:
        for request in requests:  # whole runs first (claim's order)
            if request.kind == "stage" and request.name in whole:
                ok.append(request)  # asked before the claim, so the whole run's ingest read it
                continue
            try:
                with transaction(con):
                    _ingest_request(con, results, request, studies)
            except Exception as exc:  # noqa: BLE001 - the others go in; this one is retried
                _warn_once(f"{request.kind} {request.name}: not ingested yet ({type(exc).__name__}: {exc}); retrying")
            else:
                ok.append(request)
                if request.kind == "run":
                    whole.add(request.name)
    return ok


def drain(results: str | Path, studies: Optional[dict[str, Any]] = None, block: bool = True) -> Optional[int]:
    """One round of the ingester: take every queued request (``platform.ingest_queue``) and load
    it, holding the store's writer lock throughout. Returns how many went in, or None without
    ``block`` when another process holds the lock (it is ingesting: what is queued is its, or the
    next round's). ``studies``: open studies by name, used instead of reopening their storage."""
    results = Path(results)
    lock = writer_lock(results)
    if not lock.acquire(blocking=block):
        return None
    try:
        requests = claim(results)
        if not requests:
            return 0
        try:
            ok = _ingest_requests(results, requests, studies or {})
        except BaseException:
            put_back(requests)  # the database could not be opened (a reader held it throughout)
            raise
        done(ok)
        put_back([r for r in requests if r not in ok])
        return len(ok)
    finally:
        lock.release()


class Ingester:
    """A driver's part in ingesting: drivers only queue requests, and while one runs, this thread
    takes the queue whenever no other process holds the writer lock (another driver's thread, a
    ``--follow`` ingester). ``stop`` then waits its turn and takes what is left, so the driver's
    requests are in DuckDB when it ends, whoever else is still running."""

    def __init__(self, results: str | Path, studies: Optional[dict[str, Any]] = None, poll_s: float = 0.5):
        self.results, self.studies, self.poll_s = Path(results), dict(studies or {}), poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingester", daemon=True)

    def round(self, block: bool) -> Optional[int]:
        try:
            return drain(self.results, self.studies, block=block)
        except Exception as exc:  # noqa: BLE001 - the requests stay queued for the next round
            _warn_once(f"ingest round failed, requests kept for the next one: {type(exc).__name__}: {exc}")
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.round(block=False)

    def start(self) -> "Ingester":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.round(block=True) is None:
            print(f"[ingest] {pending(self.results)} request(s) left in {self.results / 'ingest_queue'}: another "
                  f"driver, or `python -m platform.ingest --results {self.results}`, loads them", file=sys.stderr,
                  flush=True)


def follow(results: str | Path, poll_s: float = 1.0) -> None:
    """A dedicated ingester: take the queue every ``poll_s`` seconds until interrupted."""
    print(f"[ingest] following {Path(results) / 'ingest_queue'} (Ctrl-C to stop)", flush=True)
    while True:
        try:
            n = drain(results)
        except Exception as exc:  # noqa: BLE001 - a locked store now is a free one later
            _warn_once(f"ingest round failed, requests kept for the next one: {type(exc).__name__}: {exc}")
            n = None
        if n:
            print(f"[ingest] {n} request(s) ingested", flush=True)
        time.sleep(poll_s)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m platform.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--follow", action="store_true",
                        help="keep running: load what the sweep drivers queue, as it comes (one ingester for all)")
    parser.add_argument("--poll-s", type=float, default=1.0, help="with --follow: seconds between rounds")
    args = parser.parse_args(argv)
    if args.follow:
        try:
            follow(args.results, args.poll_s)
        except KeyboardInterrupt:
            return
    rows = ingest_runs(args.results)
    studies = _ingest_all_studies(Path(args.results))
    queued = drain(args.results) or 0
    print(f"ingested {rows} stage rows from {args.results}/runs, {studies} studies and {queued} queued "
          f"request(s) into {args.results}/platform.duckdb")


def _ingest_all_studies(results: Path) -> int:
    import optuna

    count = 0
    for journal in sorted((results / "optuna").glob("*.journal")):
        storage = _storage(str(journal))
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            experiment = study.user_attrs.get("experiment", summary.study_name)
            ingest_study(results, study, experiment, str(journal))
            count += 1
    return count


if __name__ == "__main__":
    main()
