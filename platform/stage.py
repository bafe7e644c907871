"""Stages: picklable units of work with content-addressed, resumable outputs.

A stage names a function by dotted path (``"experiments.estep:run_shard"``), carries the plain-dict
config that function needs and the stages it reads from. Its cache key hashes all of that, so two
trials that ask for the same work share one output folder, and a finished stage is never re-run.

Stage functions take a :class:`StageContext` and return a summary dict (``tokens_in``,
``tokens_out``, ``flops`` and anything else worth keeping). They write append-only files into
``ctx.out_dir``: ``metrics.jsonl`` rows ``{"name", "step", "value"}`` and, for the E-step,
``estep_samples.parquet``. The completion marker ``_COMPLETE.json`` is written last, by us.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from platform.files import write_json_atomic

MARKER = "_COMPLETE.json"
CODE_VERSION = "1"  # bump to invalidate every cache after a change of stage semantics


@dataclass
class StageContext:
    stage: str
    key: str
    out_dir: Path
    config: dict[str, Any]
    inputs: dict[str, Path]
    iteration: Optional[int] = None
    shard_index: int = 0
    num_shards: int = 1
    seed: int = 0
    # what each input is: {"model": {"stage": "mstep", "key": ...}}; written into the completion
    # marker, so a number can be traced to the checkpoint it came from (lineage in DuckDB)
    input_stages: dict[str, dict[str, str]] = field(default_factory=dict)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append metric rows ``{"name", "step", "value"}`` to this stage's metrics.jsonl."""
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


@dataclass
class Stage:
    name: str  # prepare_data | teacher | warm_start | estep | mstep | eval | ...
    fn: str  # "module:function" taking a StageContext
    config: dict[str, Any]
    inputs: dict[str, "Stage"] = field(default_factory=dict)
    iteration: Optional[int] = None
    num_shards: int = 1  # > 1: the orchestrator runs shards as one job array, then `merge_fn`
    merge_fn: Optional[str] = None
    profile: str = "default"  # launcher resource profile: estep | mstep | eval | default
    seed: int = 0
    label: Optional[str] = None  # display name, e.g. "estep[2]"

    @property
    def key(self) -> str:
        payload = {
            "v": CODE_VERSION,
            "name": self.name,
            "fn": self.fn,
            "merge_fn": self.merge_fn,
            "config": self.config,
            "num_shards": self.num_shards,
            "seed": self.seed,
            "inputs": {k: s.key for k, s in sorted(self.inputs.items())},
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def display(self) -> str:
        return self.label or (self.name if self.iteration is None else f"{self.name}[{self.iteration}]")

    def out_dir(self, results: Path) -> Path:
        return Path(results) / "artifacts" / self.name / self.key

    def is_complete(self, results: Path) -> bool:
        return (self.out_dir(results) / MARKER).exists()

    def context(self, results: Path, shard_index: int = 0, out_dir: Optional[Path] = None) -> StageContext:
        return StageContext(
            stage=self.name,
            key=self.key,
            out_dir=out_dir or self.out_dir(results),
            config=self.config,
            inputs={k: s.out_dir(results) for k, s in self.inputs.items()},
            iteration=self.iteration,
            shard_index=shard_index,
            num_shards=self.num_shards,
            seed=self.seed,
            input_stages={k: {"stage": s.name, "key": s.key} for k, s in self.inputs.items()},
        )


def resolve(path: str) -> Callable[[StageContext], dict[str, Any]]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def shard_dir(out_dir: Path, shard_index: int) -> Path:
    return out_dir / "shards" / f"{shard_index:05d}"


def _job_id() -> str:
    """The id sacct and submitit use: ``<array>_<task>`` for array elements."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    # a local submitit job: the id the driver got at submission (and wrote to the run's ledger)
    return (env.get("SLURM_JOB_ID") or env.get("SUBMITIT_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")
            or str(os.getpid()))


def _run_fn(fn_path: str, ctx: StageContext) -> dict[str, Any]:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary = resolve(fn_path)(ctx) or {}
    ended = time.time()
    record = {
        "stage": ctx.stage,
        "key": ctx.key,
        "iteration": ctx.iteration,
        "shard_index": ctx.shard_index,
        "started_at": started,
        "ended_at": ended,
        "wall_s": ended - started,
        "host": socket.gethostname(),
        "job_id": _job_id(),
        "inputs": ctx.input_stages,  # the stages read; their outputs are <results>/artifacts/<stage>/<key>
        "summary": summary,
    }
    write_json_atomic(ctx.out_dir / MARKER, record)
    return record


def run_stage(stage: Stage, results: str | Path, shard_index: Optional[int] = None) -> dict[str, Any]:
    """Run one stage (or one shard of it) unless its marker exists. What every job executes.

    A rerun of an interrupted stage starts from a clean folder, except sharded stages and stages
    that resume from their own checkpoints: those keep what they wrote (``resumable`` functions
    look at ``ctx.out_dir`` themselves).
    """
    results = Path(results)
    out = stage.out_dir(results)
    target = out if shard_index is None else shard_dir(out, shard_index)
    target.mkdir(parents=True, exist_ok=True)
    # A job orphaned by a killed driver may still be writing here: wait for it, then reuse its work.
    with _exclusive(target / ".lock"):
        if (target / MARKER).exists():
            return json.loads((target / MARKER).read_text())
        if shard_index is not None:
            return _run_fn(stage.fn, stage.context(results, shard_index, out_dir=target))
        fn = stage.merge_fn if stage.num_shards > 1 and stage.merge_fn else stage.fn
        return _run_fn(fn, stage.context(results))


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_record(stage: Stage, results: str | Path) -> Optional[dict[str, Any]]:
    marker = stage.out_dir(Path(results)) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None
