"""Submit stages as jobs, wait for them, cancel them: the submitit mechanics behind
``launchers.interface.Launcher``, the orchestrator's whole view of launching.

One stage is one job; a sharded stage's shards are one job array. ``max_parallel_jobs`` caps the
jobs running at once: a SLURM array's parallelism, the local launcher's machine-wide slots, and
the debug jobs that the driver's trial threads run at a time. ``depends_on`` becomes ``afterok``
on SLURM; the local and debug launchers ignore it because the orchestrator only submits a stage
once its inputs are done.
"""

from __future__ import annotations

import re
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import submitit
from submitit.core.utils import UncompletedJobError
from submitit.local.debug import DebugJob
from submitit.local.local import LocalJob
from submitit.slurm.slurm import SlurmJob

from launchers.executors import build_executor, slurm_job_name, validate_launcher
from launchers.jobs import StageJob

SLOT_DIR = ".launcher_slots"  # under results: flock slots that cap concurrent local jobs
# states after which no result pickle will appear: do not wait submitit's 15 s for one
_NO_RESULT_STATES = {"CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED"}
_UNFINISHED = {"PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "CONFIGURING", "READY"}
_LOCAL_STATES = {"RUNNING": "RUNNING", "FINISHED": "COMPLETED", "INTERRUPTED": "CANCELLED"}
_FORCE_REFRESH_S = 1.0  # at most one forced `sacct` per second, whatever poll_s is


class StageJobError(RuntimeError):
    """A job of a stage failed; ``traceback`` is the remote traceback (or SLURM's reason), ``log``
    the job's stderr file, which holds it too."""

    def __init__(self, job_id: str, traceback_text: str, state: str = "FAILED", log: Optional[str] = None):
        self.job_id = str(job_id)
        self.traceback = traceback_text
        self.state = state
        self.log = log
        super().__init__(f"job {self.job_id} {state.lower()}:\n{traceback_text}")

    def __reduce__(self):  # keep job_id/traceback when pickled across processes
        return (StageJobError, (self.job_id, self.traceback, self.state, self.log))

    @property
    def lost(self) -> bool:
        """The job died without a result or a traceback (submitit found no output, seen under heavy
        load), rather than the stage raising: running the idempotent stage again may succeed."""
        text = str(self)
        return "Traceback (most recent call last)" not in text and (
            "has not produced any output" in text or "_log.out" in text or "_log.err" in text)


def submit_stage(
    stage: Any,
    results: Path,
    launcher_cfg: Mapping[str, Any],
    log_dir: Path,
    shard_indices: Optional[list[int]] = None,
    depends_on: Sequence[submitit.Job] = (),
) -> list[submitit.Job]:
    """Submit ``stage`` (one job) or its shards ``shard_indices`` (one job array). Returns the jobs
    in the order of ``shard_indices``."""
    cfg = validate_launcher(launcher_cfg)
    executor = build_executor(cfg, Path(log_dir), getattr(stage, "profile", "default"))
    slots = None
    if cfg["name"] in ("local", "debug"):  # SLURM caps its arrays itself (--array %N)
        slots = (str(Path(results).resolve() / SLOT_DIR), int(cfg["max_parallel_jobs"]))
    in_process = cfg["name"] == "debug"
    if cfg["name"] == "slurm":
        params: dict[str, Any] = {"job_name": slurm_job_name(getattr(stage, "display", "stage"))}
        if depends_on:
            params["dependency"] = "afterok:" + ":".join(str(j.job_id) for j in depends_on)
            # a failed dependency cancels this job instead of leaving it pending forever
            extra = dict(executor.parameters.get("additional_parameters") or {})
            extra.setdefault("kill_on_invalid_dep", "yes")
            params["additional_parameters"] = extra
        executor.update_parameters(**params)
    if shard_indices is None:
        return [executor.submit(StageJob(stage, results, None, slots, in_process))]
    if not shard_indices:
        raise ValueError(f"submit_stage({getattr(stage, 'display', stage)}): shard_indices is empty")
    return executor.submit_array([StageJob(stage, results, int(i), slots, in_process) for i in shard_indices])


def attach_jobs(launcher_cfg: Mapping[str, Any], log_dir: Path, job_ids: Sequence[str]) -> list[submitit.Job]:
    """Job handles for ids recorded by an earlier driver (``job.job_id``, e.g. ``"812"`` or ``"813_4"``),
    so a restarted driver waits on jobs still queued or running instead of submitting them again.

    SLURM only: a local job dies with the driver that started it, and a debug job never outlives it.
    """
    cfg = validate_launcher(launcher_cfg)
    if cfg["name"] != "slurm":
        raise ValueError(f"attach_jobs: launcher {cfg['name']!r} jobs do not outlive their driver; only slurm can reattach")
    return [SlurmJob(folder=Path(log_dir) / "%j", job_id=str(j)) for j in job_ids]


def job_state(job: submitit.Job) -> str:
    """One vocabulary for every launcher: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT,
    REQUEUED, ... (SLURM's own words; local and debug states are mapped onto them)."""
    if isinstance(job, DebugJob):
        if job.cancelled:
            return "CANCELLED"
        return "COMPLETED" if job.submission().done() else "PENDING"
    if isinstance(job, LocalJob):
        return _LOCAL_STATES.get(job.state, "UNKNOWN")
    state = _slurm_state(job, "standard")
    if state == "UNKNOWN":
        # sacct has no row yet: slurmdbd lags a second or more behind a submission (measured here),
        # and a restarted driver must not take a job it just attached to for a lost one
        state = _squeue_state(str(job.job_id)) or state
    if state in _UNFINISHED and job.paths.result_pickle.exists():
        # the job wrote its result before sacct saw it end (accounting lags under load): ask
        # sacct now rather than in 2-60 s, and do not call a job with a result PENDING/RUNNING
        state = _slurm_state(job, "force")
        if state in _UNFINISHED:
            state = "COMPLETING"
    return state


_SQUEUE_CACHE: dict[str, tuple[float, dict[str, str]]] = {}
_SQUEUE_TTL_S = 0.5


def _squeue_state(job_id: str) -> Optional[str]:
    """The controller's state of a job it still holds (PENDING, RUNNING, ...), None once it left the
    queue. One ``squeue`` per array (or job) per half second, however many elements ask."""
    base = job_id.split("_")[0]
    now = time.time()
    hit = _SQUEUE_CACHE.get(base)
    if hit is None or now - hit[0] > _SQUEUE_TTL_S:
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-j", base, "-o", "%i %T"], capture_output=True,
                                 text=True, timeout=30).stdout  # exits 1 for a job no longer known
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        hit = (now, dict(line.split(None, 1) for line in out.splitlines() if " " in line))
        _SQUEUE_CACHE[base] = hit
    state = hit[1].get(job_id)
    return state.strip().upper() if state else None


def _slurm_state(job: submitit.Job, mode: str) -> str:
    state = job.watcher.get_state(job.job_id, mode=mode)
    # sacct writes e.g. "CANCELLED by 0"
    return state.split()[0].upper() if state else "UNKNOWN"


def _remote_trace(exc: BaseException) -> str:
    text = str(exc)
    # FailedJobError wraps the remote traceback between two dashed rulers
    m = re.search(r"-{10,}\n(.*?)\n-{10,}", text, flags=re.S)
    return m.group(1) if m else text


def _finish(job: submitit.Job) -> Any:
    """Result of a finished job, or StageJobError. Multi-task jobs answer with rank 0's result."""
    if isinstance(job, DebugJob):
        exc = job.exception()  # runs it in-process; DebugJob.results() would open pdb on failure
        if exc is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise StageJobError(job.job_id, tb, log=_write_debug_log(job, tb))
        return job.results()[0]
    state = job_state(job)
    if state in _NO_RESULT_STATES and not job.paths.result_pickle.exists():
        job._results_timeout_s = 2
    exc = job.exception()
    if exc is not None:
        # a Python exception in the job is FAILED; a job that left no result says why (CANCELLED, TIMEOUT...)
        ended_without_result = isinstance(exc, UncompletedJobError) and state not in _UNFINISHED | {"COMPLETED"}
        raise StageJobError(job.job_id, _remote_trace(exc), state if ended_without_result else "FAILED",
                            log=str(job.paths.stderr))
    return job.results()[0]


def _write_debug_log(job: DebugJob, tb: str) -> Optional[str]:
    """A debug job runs in the driver and leaves no log of its own: keep its traceback where a
    local or SLURM job's stderr would be."""
    try:
        path = Path(job.paths.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(tb)
        return str(path)
    except OSError:
        return None


def wait_jobs(
    jobs: Iterable[submitit.Job],
    poll_s: float,
    on_poll: Optional[Callable[[dict[str, str]], None]] = None,
) -> list[Any]:
    """Wait for every job; return their results in order.

    Raises :class:`StageJobError` for the first job found failed (the others keep running: the
    caller decides whether to cancel them). ``on_poll({job_id: state})`` is called once per round,
    e.g. to record states or to raise KeyboardInterrupt/pruning from the caller's side.
    """
    jobs = list(jobs)
    results: list[Any] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    last_force = float("-inf")
    while pending:
        force = time.time() - last_force >= max(poll_s, _FORCE_REFRESH_S)
        if force:
            last_force = time.time()
        still = []
        for i in pending:
            job = jobs[i]
            if not isinstance(job, DebugJob):
                # one forced sacct refreshes every registered SLURM job at once
                if not job.done(force_check=force):
                    still.append(i)
                    continue
                force = False
            results[i] = _finish(job)
        pending = still
        if on_poll is not None:
            on_poll({str(j.job_id): job_state(j) for j in jobs})
        if pending:
            time.sleep(poll_s)
    return results


def cancel_jobs(jobs: Iterable[submitit.Job]) -> None:
    """Cancel jobs that may still run. One ``scancel`` for all SLURM jobs; finished jobs are skipped."""
    slurm_ids = []
    for job in jobs:
        if isinstance(job, SlurmJob):
            slurm_ids.append(str(job.job_id))
        elif isinstance(job, LocalJob):
            if job.state == "RUNNING":
                job.cancel(check=False)
        else:
            job.cancel(check=False)
    if slurm_ids:
        subprocess.run(["scancel", *sorted(set(slurm_ids))], check=False, capture_output=True, timeout=60)
