"""Launchers: turn stages into submitit jobs (debug, local, SLURM). Only the orchestrator calls them,
through one interface: ``build_launcher(launcher_cfg)`` -> ``Launcher`` (``launchers/interface.py``).

A job process imports this package first, when it unpickles its ``StageJob``; by then submitit has
already imported the stdlib ``platform``, so we swap in the repository's package before anything
below imports ``platform.config`` / ``platform.stage``.
"""

from launchers.jobs import ensure_repo_platform as _ensure_repo_platform

_ensure_repo_platform()

from launchers.dispatch import StageJobError, attach_jobs, cancel_jobs, job_state, submit_stage, wait_jobs  # noqa: E402
from launchers.executors import build_executor, validate_launcher  # noqa: E402
from launchers.interface import Launcher, SlurmLauncher, build_launcher  # noqa: E402
from launchers.jobs import StageJob, register_checkpoint_hook  # noqa: E402

__all__ = [
    "Launcher",
    "SlurmLauncher",
    "StageJob",
    "StageJobError",
    "attach_jobs",
    "build_executor",
    "build_launcher",
    "cancel_jobs",
    "job_state",
    "register_checkpoint_hook",
    "submit_stage",
    "validate_launcher",
    "wait_jobs",
]
