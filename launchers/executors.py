"""Turn a launcher config (``platform.config.LauncherConfig`` as a plain dict) into a submitit executor.

``debug`` runs jobs in-process when their result is asked for, ``local`` runs each job as a
subprocess of this machine, ``slurm`` writes an sbatch script per job (or per job array). The
cluster is always named explicitly: submitit's ``AutoExecutor`` would silently pick SLURM whenever
``srun`` is on PATH, and a user who asked for ``local`` must get local.

Every job logs into its own folder ``log_dir/<job id>`` (submitit's ``%j``), next to its pickles.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import submitit

from platform.config import LauncherConfig, ResourceProfile

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_NAMES = ("debug", "local", "slurm")
LAUNCHER_KEYS = tuple(f.name for f in dataclasses.fields(LauncherConfig))
PROFILE_KEYS = tuple(f.name for f in dataclasses.fields(ResourceProfile))
# slurmctld checks time limits every 30 s (PERIODIC_TIMEOUT) and sends --signal as soon as
# remaining <= delay + 30 s: measured here, a requeued 1-minute job with a 20 s delay was signalled
# 15-17 s after it started, every attempt, and spent its requeues without training a step.
SLURM_SIGNAL_SLACK_S = 30


def _as_dict(obj: Any, what: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{what}: expected a mapping or a dataclass, got {type(obj).__name__}")


def _reject_unknown(given: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}"
        )


def validate_launcher(launcher_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a launcher dict once, early; fill defaults from the dataclass. Returns a new dict."""
    cfg = _as_dict(launcher_cfg, "launcher")
    _reject_unknown(cfg, LAUNCHER_KEYS, "launcher")
    merged = dataclasses.asdict(LauncherConfig())
    merged.update(cfg)
    if merged["name"] not in LAUNCHER_NAMES:
        raise ValueError(f"launcher.name: {merged['name']!r} is not one of {', '.join(LAUNCHER_NAMES)}")
    if int(merged["max_parallel_jobs"]) < 1:
        raise ValueError(f"launcher.max_parallel_jobs: must be >= 1, got {merged['max_parallel_jobs']}")
    if not isinstance(merged["max_num_timeout"], int) or merged["max_num_timeout"] < 0:
        raise ValueError(f"launcher.max_num_timeout: must be an integer >= 0, got {merged['max_num_timeout']!r}")
    profiles = {}
    for pname, prof in (merged.get("profiles") or {}).items():
        prof = _as_dict(prof, f"launcher.profiles.{pname}")
        _reject_unknown(prof, PROFILE_KEYS, f"launcher.profiles.{pname}")
        full = dataclasses.asdict(ResourceProfile())
        full.update(prof)
        for key in ("gpus_per_task", "cpus_per_task", "tasks_per_node", "nodes"):
            low = 0 if key == "gpus_per_task" else 1
            if not isinstance(full[key], int) or full[key] < low:
                raise ValueError(f"launcher.profiles.{pname}.{key}: must be an integer >= {low}, got {full[key]!r}")
        if not full["timeout_min"] or full["timeout_min"] <= 0:
            raise ValueError(f"launcher.profiles.{pname}.timeout_min: must be > 0, got {full['timeout_min']!r}")
        if full["mem_gb"] is not None and full["mem_gb"] <= 0:
            raise ValueError(f"launcher.profiles.{pname}.mem_gb: must be > 0 or null, got {full['mem_gb']!r}")
        profiles[pname] = full
    merged["profiles"] = profiles
    return merged


def resource_profile(launcher_cfg: Mapping[str, Any], profile: str) -> dict[str, Any]:
    cfg = validate_launcher(launcher_cfg)
    if profile not in cfg["profiles"]:
        raise ValueError(
            f"launcher.profiles: no profile {profile!r}; valid profiles: {', '.join(sorted(cfg['profiles']))}"
        )
    return cfg["profiles"][profile]


def default_signal_delay_s(timeout_min: float) -> int:
    """Seconds before the time limit at which the job is told to checkpoint (SIGUSR2).

    Long jobs get two minutes to write a checkpoint; short ones a third of their time, so a
    one-minute test job still runs a while before it is signalled.
    """
    return int(max(5, min(120, timeout_min * 60 / 3)))


def slurm_signal_delay_s(timeout_min: float) -> int:
    """``--signal`` delay for SLURM: the signal comes between this and 30 s more before the limit,
    so a short job keeps the slack out of its last third (a 1-minute job is signalled 5-35 s
    before its end); long jobs still get two minutes."""
    return int(max(5, min(120, timeout_min * 60 / 3 - SLURM_SIGNAL_SLACK_S)))


def job_setup_lines(setup: list[str]) -> list[str]:
    """Shell lines run before each job: the repo root goes on PYTHONPATH so that the job's
    ``import platform`` finds our package, whatever folder SLURM starts the job in."""
    root = shlex.quote(str(REPO_ROOT))
    return [f'export PYTHONPATH={root}"${{PYTHONPATH:+:$PYTHONPATH}}"',
            'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"', *setup]


def local_python(threads: int = 1) -> str:
    """The interpreter command of local jobs: this one, with the repo root on PYTHONPATH and
    ``threads`` intra-op threads (the profile's cpus_per_task).

    Going through ``env`` (a program, not a shell) keeps the job a direct child of submitit's
    controller, so cancelling a local job really stops it. Capping threads matters: torch's
    default of one thread per core, times several jobs side by side, ran 20-60x slower here.
    """
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    n = str(max(1, int(threads)))
    return shlex.join(["env", f"PYTHONPATH={path}", f"OMP_NUM_THREADS={n}", f"MKL_NUM_THREADS={n}", sys.executable])


def slurm_job_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name)[:64] or "stage"


def build_executor(
    launcher_cfg: Mapping[str, Any],
    log_dir: Path,
    profile: str = "default",
    *,
    signal_delay_s: Optional[int] = None,
) -> submitit.Executor:
    """A submitit executor for ``profile``'s resources. Logs of each job go to ``log_dir/<job id>``."""
    cfg = validate_launcher(launcher_cfg)
    res = resource_profile(cfg, profile)
    folder = Path(log_dir) / "%j"
    name = cfg["name"]
    if name == "debug":
        return submitit.DebugExecutor(folder=folder)

    delay = default_signal_delay_s(res["timeout_min"]) if signal_delay_s is None else int(signal_delay_s)
    gpus_per_node = res["gpus_per_task"] * res["tasks_per_node"]
    if name == "local":
        if res["nodes"] > 1:
            raise ValueError(f"launcher.profiles.{profile}.nodes: the local launcher runs on one node, got {res['nodes']}")
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=cfg["max_num_timeout"], python=local_python(res["cpus_per_task"]))
        params = dict(timeout_min=res["timeout_min"], tasks_per_node=res["tasks_per_node"],
                      gpus_per_node=gpus_per_node, signal_delay_s=delay)
        if cfg["setup"]:
            # submitit then starts the job through `bash -c`, and cancel (SIGINT) stops at bash
            params["setup"] = list(cfg["setup"])
        ex.update_parameters(**params)
        return ex

    if signal_delay_s is None:
        delay = slurm_signal_delay_s(res["timeout_min"])
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg["max_num_timeout"], python=shlex.quote(sys.executable))
    params: dict[str, Any] = {
        # sbatch --time takes whole minutes
        "time": max(1, int(round(res["timeout_min"]))),
        "nodes": res["nodes"],
        "ntasks_per_node": res["tasks_per_node"],
        "cpus_per_task": res["cpus_per_task"],
        "signal_delay_s": delay,
        "array_parallelism": int(cfg["max_parallel_jobs"]),
        "setup": job_setup_lines(list(cfg["setup"] or [])),
        "stderr_to_stdout": False,
    }
    # --gpus-per-node is understood by gres-only clusters too (--gpus-per-task needs cons_tres)
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if res["mem_gb"] is not None:
        params["mem"] = f"{int(res['mem_gb'] * 1024)}M"
    for key in ("partition", "account", "qos"):
        if cfg[key]:
            params[key] = cfg[key]
    if cfg["additional_parameters"]:
        params["additional_parameters"] = dict(cfg["additional_parameters"])
    ex.update_parameters(**params)
    return ex
