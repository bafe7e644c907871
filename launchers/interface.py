"""The orchestrator's whole view of launching: a :class:`Launcher` built from the launcher config.

``build_launcher(launcher_cfg)`` picks the kind the config names. Every kind submits a stage (one
job, or one job array for its shards), waits for jobs, cancels them and, where jobs can outlive
the driver that submitted them, reattaches to them by id. Jobs are opaque handles with a
``job_id``; a failed job raises :attr:`Launcher.JobFailed` (``StageJobError``), whose ``lost``
says the job vanished without a result or a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from launchers.dispatch import StageJobError, attach_jobs, cancel_jobs, job_state, submit_stage, wait_jobs

# SLURM states of a job that still queues or runs (or will run again)
_SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


class Launcher:
    """The debug and local launchers: their jobs die with the driver, so there is nothing to reattach."""

    JobFailed = StageJobError

    def __init__(self, launcher_cfg: Mapping[str, Any]):
        self.cfg = dict(launcher_cfg)  # validated at each submission, as submit_stage does

    def submit(self, stage: Any, results: Path, log_dir: Path, shard_indices: Optional[list[int]] = None) -> list[Any]:
        """Submit ``stage`` (one job) or its shards ``shard_indices`` (one job array), in that order."""
        return submit_stage(stage, results, self.cfg, log_dir, shard_indices=shard_indices)

    def wait(self, jobs: Sequence[Any]) -> list[Any]:
        """Wait for every job and return their results; raises :attr:`JobFailed` for the first failed one."""
        return wait_jobs(jobs, poll_s=float(self.cfg.get("poll_interval_s", 0.2)))

    def cancel(self, jobs: Sequence[Any]) -> None:
        cancel_jobs(jobs)

    def reattach(self, log_dir: Path, job_ids: Sequence[str]) -> list[Any]:
        """Handles of jobs an earlier driver submitted (``job_ids`` as it recorded them, logging
        under ``log_dir``), when some of them still queue or run; otherwise []."""
        return []


class SlurmLauncher(Launcher):
    """SLURM jobs outlive their driver: a restarted driver waits on them instead of resubmitting."""

    def reattach(self, log_dir: Path, job_ids: Sequence[str]) -> list[Any]:
        jobs = attach_jobs(self.cfg, Path(log_dir), list(job_ids))
        alive = [j for j in jobs if job_state(j) in _SLURM_ALIVE]
        return jobs if alive else []


def build_launcher(launcher_cfg: Mapping[str, Any]) -> Launcher:
    """The launcher ``launcher_cfg["name"]`` names (``platform.config.LauncherConfig`` as a dict)."""
    return SlurmLauncher(launcher_cfg) if launcher_cfg.get("name") == "slurm" else Launcher(launcher_cfg)
