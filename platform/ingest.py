"""Load run folders and Optuna studies into DuckDB, idempotently.

Each run is replaced as a whole (delete its rows, insert what its folder says now), so ingesting
twice adds no row and a re-ingest after a crash repairs a partial one.

    python -m platform.ingest [--results results]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import duckdb
import yaml

from platform.rundir import read_ledger
from platform.stage import MARKER
from platform.store import writer

RUN_TABLES = ("runs", "stages", "shards", "metrics", "estep_samples")
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


def _ingest_run(con: duckdb.DuckDBPyConnection, run_path: Path) -> int:
    meta = json.loads((run_path / "run.json").read_text())
    run_id = meta["run_id"]
    for table in RUN_TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    git = json.loads((run_path / "git.json").read_text()) if (run_path / "git.json").exists() else {}
    config = (run_path / "config.yaml").read_text() if (run_path / "config.yaml").exists() else None
    con.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, meta.get("experiment"), meta.get("kind"), meta.get("study"), meta.get("trial"), meta.get("seed"),
         json.dumps(meta.get("params", {})), json.dumps(yaml.safe_load(config) if config else None),
         git.get("commit"), git.get("dirty"), meta.get("status"), meta.get("error"), str(run_path),
         _ts(meta.get("started_at")), _ts(meta.get("ended_at"))],
    )
    ledger = read_ledger(run_path)
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
    for marker in sorted(art.glob(f"shards/*/{MARKER}")):
        shard = json.loads(marker.read_text())
        part = shard.get("summary", {})
        _insert(con, "shards", {
            "run_id": run_id, "stage": entry["stage"], "iteration": entry.get("iteration"), "cache_key": entry["key"],
            "shard": shard.get("shard_index"), "job_id": shard.get("job_id"), "host": shard.get("host"),
            "started_at": _ts(shard.get("started_at")), "ended_at": _ts(shard.get("ended_at")),
            "wall_s": shard.get("wall_s"), "tokens_in": part.get("tokens_in"), "tokens_out": part.get("tokens_out"),
            "flops": part.get("flops"), "cached": entry.get("cached"), **{k: part.get(k) for k in REUSE_FIELDS},
        })
    samples = art / "estep_samples.parquet"
    if samples.exists():
        # files written before a column existed lack it: NULL there
        present = {r[0] for r in con.execute("SELECT name FROM parquet_schema(?)", [str(samples)]).fetchall()}
        late = ("chunk_text", "finished", "annotated", "thought_correct")
        optional = ", ".join(c if c in present else f"NULL AS {c}" for c in late)
        con.execute(
            "INSERT INTO estep_samples (run_id, iteration, doc_id, chunk_id, sample_idx, thought, thought_tokens, "
            f"log_p_joint, log_q, log_w, selected, model_path, model_key, {', '.join(late)}) "
            "SELECT ?, ?, doc_id, chunk_id, sample_idx, thought, thought_tokens, "
            f"log_p_joint, log_q, log_w, selected, ?, ?, {optional} FROM read_parquet(?)",
            [run_id, entry.get("iteration"), model_path, model_key, str(samples)],
        )
    return rows


def ingest_runs(results: str | Path, run_ids: Optional[Iterable[str]] = None) -> int:
    runs_root = Path(results) / "runs"
    paths = [runs_root / r for r in run_ids] if run_ids is not None else sorted(runs_root.glob("*"))
    paths = [p for p in paths if (p / "run.json").exists()]
    with writer(results) as con:
        return sum(_ingest_run(con, p) for p in paths)


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
    trials = study.get_trials(deepcopy=False)
    with writer(results) as con:
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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m platform.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    args = parser.parse_args(argv)
    rows = ingest_runs(args.results)
    studies = _ingest_all_studies(Path(args.results))
    print(f"ingested {rows} stage rows from {args.results}/runs and {studies} studies into {args.results}/platform.duckdb")


def _ingest_all_studies(results: Path) -> int:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    count = 0
    for journal in sorted((results / "optuna").glob("*.journal")):
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            experiment = study.user_attrs.get("experiment", summary.study_name)
            ingest_study(results, study, experiment, str(journal))
            count += 1
    return count


if __name__ == "__main__":
    main()
