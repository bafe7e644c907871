"""Stages: picklable units of work with content-addressed, resumable outputs.

A stage names a function by dotted path (``"experiments.estep:run_shard"``), carries its typed
input (``params``: a frozen dataclass, or a plain mapping) and the stages it reads from. Its cache
key hashes the stage's name, the ``version`` it declares, the fields of its input that can change
its result and its inputs' keys: nothing else (docs/design.md "Cache keys"). A field that cannot
change the result (batch size, threads, memory fraction, log or checkpoint frequency) is declared
with :func:`perf` where the input is defined, so moving to another GPU type or node size keeps every
finished stage. Two trials that ask for the same work share one output folder, and a finished stage
is never re-run.

Stage functions take a :class:`StageContext` and return a summary dict (``tokens_in``,
``tokens_out``, ``flops`` and anything else worth keeping). They write append-only files into
``ctx.out_dir``: ``metrics.jsonl`` rows ``{"name", "step", "value"}`` and, for the E-step,
``estep_samples.parquet``. The completion marker ``_COMPLETE.json`` is written last, by us.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

from platform.files import write_json_atomic

MARKER = "_COMPLETE.json"
# Bump when the way keys are computed changes (not a stage's semantics: that is its own `version`).
# Markers record it, so a results folder from an earlier scheme is reported instead of silently missed.
KEY_SCHEME = 2
_AFFECTS_RESULT = "affects_result"


def perf(**kwargs: Any) -> Any:
    """A field of a stage input that cannot change the stage's result (how fast or where it runs,
    how often it logs or checkpoints): it stays out of the cache key. ``kwargs`` go to ``field``."""
    return field(metadata={_AFFECTS_RESULT: False}, **kwargs)


def result_fields(params: Any) -> Any:
    """What of a stage input enters its cache key: every field, recursively, except :func:`perf` ones."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: result_fields(getattr(params, f.name)) for f in dataclasses.fields(params)
                if f.metadata.get(_AFFECTS_RESULT, True)}
    if isinstance(params, Mapping):
        return {str(k): result_fields(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [result_fields(v) for v in params]
    return params


def perf_fields(params: Any, prefix: str = "") -> list[str]:
    """Dotted names of the :func:`perf` fields of a stage input (what the key leaves out)."""
    if not (dataclasses.is_dataclass(params) and not isinstance(params, type)):
        return []
    out: list[str] = []
    for f in dataclasses.fields(params):
        name = prefix + f.name
        if not f.metadata.get(_AFFECTS_RESULT, True):
            out.append(name)
        else:
            out += perf_fields(getattr(params, f.name), name + ".")
    return out


@dataclass
class StageContext:
    stage: str
    key: str
    out_dir: Path
    params: Any  # the stage's typed input (Stage.params)
    inputs: dict[str, Path]
    iteration: Optional[int] = None  # the stage's place in its plan; a result that depends on it reads params
    shard_index: int = 0
    num_shards: int = 1
    # what each input is: {"model": {"stage": "mstep", "key": ...}}; written into the completion
    # marker, so a number can be traced to the checkpoint it came from (lineage in DuckDB)
    input_stages: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(getattr(self.params, "seed", 0)) if not isinstance(self.params, Mapping) \
            else int(self.params.get("seed", 0))

    def shard_dirs(self) -> list[Path]:
        """The folders of every shard of this (merging) stage, in shard order."""
        return [shard_dir(self.out_dir, i, self.num_shards) for i in range(self.num_shards)]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append metric rows ``{"name", "step", "value"}`` to this stage's metrics.jsonl."""
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


@dataclass(eq=False)
class Stage:
    name: str  # prepare_data | teacher | estep | mstep | eval | ...
    fn: str  # "module:function" taking a StageContext; not part of the key (code moves, results do not)
    params: Any  # typed input: a frozen dataclass whose perf() fields stay out of the key, or a mapping
    inputs: dict[str, "Stage"] = field(default_factory=dict)
    iteration: Optional[int] = None  # its place in the plan: display, ledger, reports
    num_shards: int = 1  # > 1: the orchestrator runs shards as one job array, then `merge_fn`
    merge_fn: Optional[str] = None
    profile: str = "default"  # launcher resource profile: estep | mstep | eval | default
    label: Optional[str] = None  # display name, e.g. "estep[2]"
    version: str = "1"  # the stage's own semantics version: bump it when the same input means another result
    salt: Optional[str] = None  # set by a forced rerun (platform/rerun.py): new keys, new folders, nothing overwritten

    @cached_property
    def key(self) -> str:
        payload = {
            "scheme": KEY_SCHEME,
            "stage": self.name,
            "version": self.version,
            "params": result_fields(self.params),
            "inputs": {k: s.key for k, s in sorted(self.inputs.items())},
            **({"salt": self.salt} if self.salt else {}),
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
            params=self.params,
            inputs={k: s.out_dir(results) for k, s in self.inputs.items()},
            iteration=self.iteration,
            shard_index=shard_index,
            num_shards=self.num_shards,
            input_stages={k: {"stage": s.name, "key": s.key} for k, s in self.inputs.items()},
        )


def resolve(path: str) -> Callable[[StageContext], dict[str, Any]]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def shard_dir(out_dir: Path, shard_index: int, num_shards: int) -> Path:
    """Where shard ``shard_index`` of ``num_shards`` writes. The shard count is not in the key (the
    result does not depend on it), so the folder names the partition: a stage resumed with another
    count never takes a shard of the old partition for one of the new."""
    return out_dir / "shards" / f"{shard_index:05d}-of-{num_shards:05d}"


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
        "scheme": KEY_SCHEME,
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
    target = out if shard_index is None else shard_dir(out, shard_index, stage.num_shards)
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


def earlier_scheme_stages(results: str | Path) -> list[Path]:
    """Finished stages under ``results/artifacts`` whose keys an earlier key scheme computed: the
    current plan cannot find them, so they are recomputed (and the caller says so, once)."""
    stale = []
    for marker in Path(results).glob(f"artifacts/*/*/{MARKER}"):
        try:
            scheme = json.loads(marker.read_text()).get("scheme", 1)
        except (OSError, ValueError):
            continue
        if scheme != KEY_SCHEME:
            stale.append(marker.parent)
    return stale
