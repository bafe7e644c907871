"""Walk a trial's plan: submit each unfinished stage through the launcher, wait, record, ingest it.

Only this module submits jobs, through the one interface of ``launchers``: the ``Launcher`` that
``build_launcher`` makes of the launcher config (submit, wait, cancel, reattach). Stages shared
between concurrent trials (data preparation, warm start) are guarded by a lock per cache key that
holds across threads, processes and machines sharing the results folder (``platform.locks``): the
second trial, in this driver or another, waits for the first and then finds the completion marker
and reuses the output instead of computing it twice.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from platform.failures import known_error
from platform.locks import stage_lock
from platform.plan import Plan
from platform.rundir import RunDir
from platform.stage import KEY_SCHEME, MARKER, Stage, earlier_scheme_stages, load_record, shard_dir

ReportFn = Callable[[Stage, dict[str, float], bool], None]  # (eval stage, its metrics, is it the last)


class StageFailed(RuntimeError):
    """A stage's job failed. ``full``: the whole story (the job's traceback). When the job died of a
    known error (``platform.failures``), ``known`` is its (type name, message) and ``str()`` is one
    line: the stage, the error and the job's log; otherwise ``str()`` is ``full``."""

    def __init__(self, stage: Stage, detail: str, log: Optional[str] = None,
                 known: Optional[tuple[str, str]] = None):
        self.stage = stage
        self.detail = detail
        self.log = log
        self.known = known
        self.full = f"stage {stage.display} (key {stage.key}) failed:\n{detail}"
        super().__init__(self.short() if known else self.full)

    def short(self) -> str:
        kind, message = self.known or ("", self.detail)
        where = f" (log: {self.log})" if self.log else ""
        return f"stage {self.stage.display} failed: {kind.rsplit('.', 1)[-1]}: {message}{where}"


@dataclass
class Progress:
    """What the live view shows: each run's current stage."""

    current: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, run_id: str, text: Optional[str]) -> None:
        with self.lock:
            if text is None:
                self.current.pop(run_id, None)
            else:
                self.current[run_id] = text


def _completed_keys(ledger: list[dict[str, Any]]) -> dict[tuple[Any, Any], list[str]]:
    """(stage name, iteration) -> the cache keys a run's ledger records it completed with, oldest first."""
    out: dict[tuple[Any, Any], list[str]] = {}
    for entry in ledger:
        if entry.get("status") == "completed" and entry.get("key"):
            out.setdefault((entry.get("stage"), entry.get("iteration")), []).append(entry["key"])
    return out


def _replaced_key(stage: Stage, completed: dict[tuple[Any, Any], list[str]], plan_keys: set[str]) -> Optional[str]:
    """The key this run last completed ``stage`` (its name and iteration) with, when that key is no
    longer the stage's: None if the run never completed it, or did with today's key (its output is
    merely gone). Keys of the plan's other stages do not count: a plan may hold two stages of one
    name and iteration (a raw baseline's own M-step and the one it matches)."""
    keys = completed.get((stage.name, stage.iteration), [])
    if stage.key in keys:
        return None
    stale = [k for k in keys if k not in plan_keys]
    return stale[-1] if stale else None


def read_stage_metrics(stage: Stage, results: Path) -> dict[str, float]:
    """The last value of each metric a stage wrote."""
    path = stage.out_dir(results) / "metrics.jsonl"
    values: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                values[row["name"]] = row["value"]
    return values


def _note_earlier_scheme(results: Path) -> None:
    """One line when finished stages here were keyed by an earlier scheme: they cannot be found by
    the current keys and will be recomputed; saying so beats a silent cache miss."""
    stale = earlier_scheme_stages(results)
    if stale:
        print(f"[orchestrator] note: {len(stale)} finished stage(s) under {results / 'artifacts'} were keyed by an "
              f"earlier cache-key scheme (now {KEY_SCHEME}); they are not reused, and any this plan needs is "
              "recomputed (docs/design.md \"Cache keys\")", flush=True)


class SweepStopped(RuntimeError):
    """The sweep stopped this run before its next stage (a spent budget with ``on_cap: stop``)."""


class Orchestrator:
    """Runs plans through the launcher ``launcher_cfg`` names (``launchers.build_launcher``).

    ``compute_buckets``: stage name -> the run total its FLOPs add to; ``total_buckets``: the
    totals summed into ``total_flops`` (both from the app, ``platform.app.App``).
    """

    def __init__(self, launcher_cfg: dict[str, Any], results: Path, progress: Optional[Progress] = None,
                 ingest: Optional[Callable[[str, Optional[str]], None]] = None,
                 compute_buckets: Optional[Mapping[str, str]] = None, total_buckets: Sequence[str] = ()):
        from launchers import build_launcher

        self.launcher_cfg = launcher_cfg
        self.launcher = build_launcher(launcher_cfg)
        self.results = Path(results)
        # called with (stage, its completion record, its GPUs) for every stage computed, not cached
        self.on_computed: Optional[Callable[[Stage, dict[str, Any], int], None]] = None
        self.stop_reason: Optional[str] = None
        _note_earlier_scheme(self.results)
        self.progress = progress or Progress()
        # ingest(run_id, stage_key): after each stage, that stage's rows; stage_key None: the whole run
        self.ingest = ingest or (lambda run_id, stage_key=None: None)
        self.compute_buckets = dict(compute_buckets or {})
        self.total_buckets = tuple(total_buckets)
        self.active_jobs: dict[str, list[Any]] = {}

    def _gpus(self, stage: Stage) -> int:
        profile = self.launcher_cfg.get("profiles", {}).get(stage.profile) or {}
        return int(profile.get("gpus_per_task", 0)) * int(profile.get("tasks_per_node", 1)) * int(profile.get("nodes", 1))

    def _reattach(self, stage: Stage, run: RunDir, part: str) -> list[Any]:
        """Jobs an earlier driver submitted for this stage that still queue or run, if the launcher's
        jobs can outlive their driver (``Launcher.reattach``)."""
        entries = [e for e in run.read_ledger() if e.get("key") == stage.key and e.get("part") == part]
        if not entries or entries[-1].get("status") != "submitted" or not entries[-1].get("job_id"):
            return []
        last = entries[-1]
        return self.launcher.reattach(Path(last["log_dir"]), last["job_id"].split(","))

    def _submit_and_wait(self, stage: Stage, run: RunDir, shard_indices: Optional[list[int]] = None,
                         retries_left: int = 1) -> list[str]:
        part = "shards" if shard_indices is not None else "main"
        log_dir = run.logs / stage.display.replace("[", "_").replace("]", "")
        jobs = self._reattach(stage, run, part)
        if jobs:
            print(f"[orchestrator] {run.run_id}: reattached to {stage.display} jobs "
                  f"{', '.join(str(j.job_id) for j in jobs)} submitted by an earlier driver", flush=True)
        else:
            jobs = self.launcher.submit(stage, self.results, log_dir, shard_indices=shard_indices)
        job_ids = [str(j.job_id) for j in jobs]
        run.ledger({"stage": stage.name, "iteration": stage.iteration, "key": stage.key, "status": "submitted",
                    "part": part, "job_id": ",".join(job_ids), "log_dir": str(log_dir),
                    "artifact_dir": str(stage.out_dir(self.results))})
        self.active_jobs[run.run_id] = jobs
        try:
            self.launcher.wait(jobs)
        except self.launcher.JobFailed as exc:
            if retries_left > 0 and exc.lost:
                # the job died without a result or a traceback (seen under heavy load): stages are
                # idempotent, so run it again; a stage that raised is not retried
                print(f"[orchestrator] {run.run_id}: {stage.display} job {exc.job_id} lost ({exc.state}); retrying",
                      flush=True)
                return job_ids + self._submit_and_wait(stage, run, shard_indices, retries_left - 1)
            raise StageFailed(stage, str(exc), log=getattr(exc, "log", None),
                              known=known_error(exc.traceback)) from None
        finally:
            self.active_jobs.pop(run.run_id, None)
        return job_ids

    def run_stage(self, stage: Stage, run: RunDir, replaced_key: Optional[str] = None) -> dict[str, Any]:
        """Run ``stage`` unless its output is cached; ``replaced_key``: the key this run last
        completed it with, if that is not its key any more (said aloud when it recomputes)."""
        job_ids: list[str] = []

        def waiting(lock: Any) -> None:
            self.progress.set(run.run_id, f"{stage.display} (shared, running in another trial: {lock.holder()})")

        with stage_lock(self.results, stage.key).hold(on_wait=waiting):
            cached = stage.is_complete(self.results)
            if not cached:
                if replaced_key:
                    print(f"[orchestrator] {run.run_id}: {stage.display}: its cache key changed since this run "
                          f"last completed it (was {replaced_key}, now {stage.key}); recomputing", flush=True)
                self.progress.set(run.run_id, stage.display)
                if stage.num_shards > 1:
                    todo = [i for i in range(stage.num_shards)
                            if not (shard_dir(stage.out_dir(self.results), i, stage.num_shards) / MARKER).exists()]
                    self.progress.set(run.run_id, f"{stage.display} ({len(todo)}/{stage.num_shards} shards)")
                    if todo:
                        job_ids += self._submit_and_wait(stage, run, shard_indices=todo)
                job_ids += self._submit_and_wait(stage, run)
        record = load_record(stage, self.results) or {}
        if not record:
            raise StageFailed(stage, "the job finished but wrote no completion marker")
        if not cached and self.on_computed is not None:
            self.on_computed(stage, record, self._gpus(stage))
        run.ledger({"stage": stage.name, "iteration": stage.iteration, "key": stage.key, "status": "completed",
                    "cached": cached, "job_id": ",".join(job_ids) or record.get("job_id"),
                    "artifact_dir": str(stage.out_dir(self.results)), "gpus": self._gpus(stage),
                    "wall_s": record.get("wall_s")})
        return record

    def execute(self, plan: Plan, run: RunDir, report: Optional[ReportFn] = None) -> dict[str, float]:
        """Run every stage of ``plan`` in order; returns the run's final metrics and compute totals."""
        reports = {s.key for s in plan.reports}
        plan_keys = {s.key for s in plan.stages}
        completed = _completed_keys(run.read_ledger())
        totals: dict[str, float] = {b: 0.0 for b in (*self.compute_buckets.values(), *self.total_buckets)}
        totals["wall_s"] = 0.0
        final: dict[str, float] = {}
        try:
            for stage in plan.stages:
                if self.stop_reason:
                    raise SweepStopped(f"stopped before {stage.display}: {self.stop_reason}")
                record = self.run_stage(stage, run, _replaced_key(stage, completed, plan_keys))
                summary = record.get("summary", {})
                bucket = self.compute_buckets.get(stage.name)
                if bucket:
                    totals[bucket] += float(summary.get("flops") or 0.0)
                totals["wall_s"] += float(record.get("wall_s") or 0.0)
                self.ingest(run.run_id, stage.key)  # this stage only: the cost stays the stage's
                if stage.key in reports:
                    final = read_stage_metrics(stage, self.results)
                    if report is not None:
                        report(stage, final, stage is plan.reports[-1])
        finally:
            self.progress.set(run.run_id, None)
        totals["total_flops"] = sum((totals[b] for b in self.total_buckets), 0.0)
        return {**final, **totals}

    def stop(self, reason: str) -> None:
        """Start no further stage in any run, and cancel every job in flight."""
        self.stop_reason = reason
        for run_id in list(self.active_jobs):
            self.cancel(run_id)

    def cancel(self, run_id: str) -> None:
        jobs = self.active_jobs.get(run_id)
        if jobs:
            self.launcher.cancel(jobs)
