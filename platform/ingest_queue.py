"""The ingest queue: how a driver asks for a run or a study to be loaded into DuckDB without
opening the database itself.

A request is a file in ``<results>/ingest_queue/``: ``stage.<run id>.<cache key>`` (empty: one
finished stage of a run, and the run row), ``run.<run id>`` (empty: the whole run) or
``study.<name>.json`` (what is needed to open the study). Asking again for something already
queued rewrites the same file, so requests coalesce. A driver asks for each stage as it finishes,
so what one request costs to ingest does not grow with the run's length; the whole run is asked
for when it ends. Only the holder of the store's writer lock (``platform.store.writer_lock``)
takes requests: it renames each to ``<name>.claimed``, ingests, and deletes the claimed files
once the transaction is committed, or puts them back if it failed.
A request made while its run is being ingested is a new file, left for the next round. Claimed
files a holder left behind when it died are put back by the next one (it holds the lock, so no
one else is working on them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from platform.files import write_json_atomic

QUEUE_DIR = "ingest_queue"
CLAIMED = ".claimed"
KINDS = ("run", "stage", "study")  # the order a round takes them: a whole run covers its stages


@dataclass(frozen=True)
class Request:
    path: Path  # the claimed file
    kind: str  # run | stage | study
    name: str  # the run id, or the study's file-safe name
    key: Optional[str] = None  # a stage request's cache key

    @property
    def original(self) -> Path:
        return self.path.with_name(self.path.name[: -len(CLAIMED)])


def queue_dir(results: str | Path) -> Path:
    return Path(results) / QUEUE_DIR


def request_run(results: str | Path, run_id: str, stage_key: Optional[str] = None) -> None:
    """Ask for run ``run_id`` to be (re-)ingested, whole or (``stage_key``) only the stage of that
    cache key and the run row; its folder is read when the request is taken."""
    folder = queue_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (f"run.{run_id}" if stage_key is None else f"stage.{run_id}.{stage_key}")).touch()


def request_study(results: str | Path, study: str, experiment: str, storage: str) -> None:
    """Ask for the trials of ``study`` (Optuna storage ``storage``: a URL or a journal path) to be
    mirrored into DuckDB."""
    folder = queue_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"study": study, "experiment": experiment, "storage": storage}
    write_json_atomic(folder / f"study.{quote(study, safe='')}.json", record)


def _parse(path: Path) -> Optional[Request]:
    name = path.name[: -len(CLAIMED)] if path.name.endswith(CLAIMED) else path.name
    kind, _, rest = name.partition(".")
    if kind == "run" and rest:
        return Request(path, "run", rest)
    run_id, _, key = rest.rpartition(".")  # a run id may hold dots; a cache key is hex
    if kind == "stage" and run_id and key:
        return Request(path, "stage", run_id, key)
    if kind == "study" and rest.endswith(".json"):
        return Request(path, "study", rest[: -len(".json")])
    return None  # a temporary file of write_json_atomic, or something that is not ours


def claim(results: str | Path) -> list[Request]:
    """Take every request now queued (the caller holds the writer lock), oldest first: whole runs,
    then stages, then studies. Claimed files left by a holder that died are taken again."""
    folder = queue_dir(results)
    if not folder.is_dir():
        return []
    for left in folder.glob(f"*{CLAIMED}"):
        _put_back(left)
    claimed = []
    for path in sorted(folder.iterdir(), key=_age):
        if path.name.endswith(CLAIMED) or _parse(path) is None:
            continue
        target = path.with_name(path.name + CLAIMED)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            continue
        request = _parse(target)
        if request is not None:
            claimed.append(request)
    return sorted(claimed, key=lambda r: KINDS.index(r.kind))


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _put_back(claimed: Path) -> None:
    """Return a claimed request to the queue, unless a newer request for the same thing is there."""
    original = claimed.with_name(claimed.name[: -len(CLAIMED)])
    try:
        if original.exists():
            claimed.unlink()
        else:
            os.replace(claimed, original)
    except FileNotFoundError:
        pass


def put_back(requests: list[Request]) -> None:
    for request in requests:
        _put_back(request.path)


def done(requests: list[Request]) -> None:
    for request in requests:
        request.path.unlink(missing_ok=True)


def study_record(request: Request) -> dict[str, Any]:
    """``study``, ``experiment`` and ``storage`` of a study request."""
    return json.loads(request.path.read_text())


def pending(results: str | Path) -> int:
    """How many requests wait (claimed ones included)."""
    folder = queue_dir(results)
    return sum(1 for p in folder.iterdir() if _parse(p) is not None) if folder.is_dir() else 0
