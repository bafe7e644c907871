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

from platform.stage import MARKER
from platform.store import writer

RUN_TABLES = ("runs", "stages", "shards", "metrics", "estep_samples")


def _ts(t: Optional[float]) -> Optional[datetime]:
    return None if t is None else datetime.fromtimestamp(float(t), tz=timezone.utc).replace(tzinfo=None)


def _latest_entries(ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last ledger event per stage key, in first-seen order."""
    last: dict[str, dict[str, Any]] = {}
    for entry in ledger:
        last[entry["key"]] = entry
    return list(last.values())


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
    ledger = [json.loads(x) for x in (run_path / "stages.jsonl").read_text().splitlines() if x.strip()] \
        if (run_path / "stages.jsonl").exists() else []
    rows = 0
    for entry in _latest_entries(ledger):
        rows += _ingest_stage(con, run_id, entry)
    return rows


def _ingest_stage(con: duckdb.DuckDBPyConnection, run_id: str, entry: dict[str, Any]) -> int:
    art = Path(entry["artifact_dir"])
    record = json.loads((art / MARKER).read_text()) if (art / MARKER).exists() else {}
    summary = record.get("summary", {})
    gpus = entry.get("gpus", 0) or 0
    wall = record.get("wall_s") or entry.get("wall_s")
    con.execute(
        "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, entry["stage"], entry.get("iteration"), entry["key"], entry.get("job_id") or record.get("job_id"),
         entry.get("status"), entry.get("cached"), _ts(record.get("started_at")), _ts(record.get("ended_at")), wall,
         summary.get("tokens_in"), summary.get("tokens_out"), summary.get("flops"),
         (wall or 0) * gpus / 3600.0, str(art)],
    )
    if entry.get("status") != "completed":
        return 1
    rows = 1
    metrics = art / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size:
        con.execute(
            "INSERT INTO metrics SELECT ?, ?, ?, name, CAST(step AS BIGINT), CAST(value AS DOUBLE) "
            "FROM read_json(?, format='newline_delimited', columns={'name': 'VARCHAR', 'step': 'BIGINT', 'value': 'DOUBLE'})",
            [run_id, entry.get("iteration"), entry["stage"], str(metrics)],
        )
    for marker in sorted(art.glob(f"shards/*/{MARKER}")):
        shard = json.loads(marker.read_text())
        part = shard.get("summary", {})
        con.execute(
            "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, entry["stage"], entry.get("iteration"), entry["key"], shard.get("shard_index"),
             shard.get("job_id"), shard.get("host"), _ts(shard.get("started_at")), _ts(shard.get("ended_at")),
             shard.get("wall_s"), part.get("tokens_in"), part.get("tokens_out"), part.get("flops")],
        )
    samples = art / "estep_samples.parquet"
    if samples.exists():
        # files written before chunk_text / finished existed lack them: NULL there
        present = {r[0] for r in con.execute("SELECT name FROM parquet_schema(?)", [str(samples)]).fetchall()}
        optional = ", ".join(c if c in present else f"NULL AS {c}" for c in ("chunk_text", "finished"))
        con.execute(
            "INSERT INTO estep_samples (run_id, iteration, doc_id, chunk_id, sample_idx, thought, thought_tokens, "
            "log_p_joint, log_q, log_w, selected, model_path, chunk_text, finished) "
            "SELECT ?, ?, doc_id, chunk_id, sample_idx, thought, thought_tokens, "
            f"log_p_joint, log_q, log_w, selected, ?, {optional} FROM read_parquet(?)",
            [run_id, entry.get("iteration"), entry.get("model_path"), str(samples)],
        )
    return rows


def ingest_runs(results: str | Path, run_ids: Optional[Iterable[str]] = None) -> int:
    runs_root = Path(results) / "runs"
    paths = [runs_root / r for r in run_ids] if run_ids is not None else sorted(runs_root.glob("*"))
    paths = [p for p in paths if (p / "run.json").exists()]
    with writer(results) as con:
        return sum(_ingest_run(con, p) for p in paths)


def ingest_study(results: str | Path, study: Any, experiment: str, storage_label: str) -> None:
    """Mirror an Optuna study's trials (state, params, values, run id, error) into DuckDB."""
    trials = study.get_trials(deepcopy=False)
    with writer(results) as con:
        con.execute("DELETE FROM studies WHERE study = ?", [study.study_name])
        con.execute("DELETE FROM trials WHERE study = ?", [study.study_name])
        con.execute(
            "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?)",
            [study.study_name, experiment, [d.name.lower() for d in study.directions], storage_label,
             min((t.datetime_start for t in trials if t.datetime_start), default=None), len(trials)],
        )
        for t in trials:
            con.execute(
                "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [study.study_name, t.number, t.state.name, json.dumps(t.params), t.values,
                 t.user_attrs.get("run_id"), t.user_attrs.get("error"), t.datetime_start, t.datetime_complete],
            )


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
