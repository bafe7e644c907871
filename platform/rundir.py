"""The run-directory contract: everything needed to trace a number in DuckDB back to its source.

<results>/runs/<run_id>/
    run.json        run_id, experiment, kind, study, trial, seed, params, status, error, times
    config.yaml     the fully resolved config of this run
    overrides.yaml  the command-line overrides and the trial's params
    git.json        commit and whether the tree was dirty
    stages.jsonl    the ledger: one line per stage event (stage, iteration, key, artifact dir, status)
    logs/           one folder per submitted job (submitit's stdout/stderr)
Stage outputs (checkpoints in Hugging Face format, metrics.jsonl, estep_samples.parquet) live in
<results>/artifacts/<stage>/<cache key>/ and are shared by every run whose stage has that key.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from platform.compose import REPO_ROOT
from platform.files import write_json_atomic

LEDGER = "stages.jsonl"


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "HEAD") or None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit, "dirty": dirty}


def read_ledger(run_path: Path) -> list[dict[str, Any]]:
    """The stage events of the run in ``run_path``, oldest first ([] before its first event)."""
    path = Path(run_path) / LEDGER
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunDir:
    def __init__(self, results: Path, run_id: str):
        self.results = Path(results)
        self.run_id = run_id
        self.path = self.results / "runs" / run_id
        self.logs = self.path / "logs"
        self._lock = threading.Lock()

    def create(self, config: dict[str, Any], overrides: list[str], meta: dict[str, Any], git: dict[str, Any]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (self.path / "overrides.yaml").write_text(yaml.safe_dump({"overrides": overrides, "params": meta.get("params", {})}))
        previous = self.read_meta()
        if previous.get("status") == "completed" and (self.path / "git.json").exists():
            # a finished run's results came from the commit it recorded: a later invocation (a cache
            # hit, a from_run) keeps that record and notes its own commit beside it
            meta = {**meta, "last_git": git}
        else:
            (self.path / "git.json").write_text(json.dumps(git))
        if previous.get("status") == "completed" and previous.get("trial") is not None:
            # a trial repeating a finished run's params: the run stays the one that trial produced
            repeat = [{"study": meta.get("study"), "trial": meta["trial"]}] if meta.get("trial") is not None else []
            repeats = [*previous.get("repeated_by", []), *repeat]
            meta = {**meta, "study": previous.get("study"), "trial": previous["trial"], "repeated_by": repeats}
        meta = {**meta, "started_at": previous.get("started_at", time.time()), "status": "running", "error": None}
        self.write_meta(meta)

    def read_meta(self) -> dict[str, Any]:
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json_atomic(self.path / "run.json", meta)

    def update_meta(self, **fields: Any) -> None:
        with self._lock:
            self.write_meta({**self.read_meta(), **fields})

    def ledger(self, entry: dict[str, Any]) -> None:
        with self._lock, open(self.path / LEDGER, "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": time.time(), **entry}, default=str) + "\n")

    def read_ledger(self) -> list[dict[str, Any]]:
        return read_ledger(self.path)
