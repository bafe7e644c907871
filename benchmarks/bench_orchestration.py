"""Section 4: the wall time the platform adds to a stage, per launcher, and a 50-trial toy sweep.

Per stage: overhead = (submit_stage -> wait_jobs return) - the stage function's own wall time
(``wall_s`` in its completion marker). It splits into ``start_delay`` (submit -> the function
starts: pickling, process start, imports, for SLURM also scheduling) and ``end_delay`` (the function
returns -> wait_jobs returns: marker, result pickle, polling). Targets: 1 s local, 1.5 s SLURM.

Only stdlib imports at module level: a local job imports this module to run ``sleep_stage``, and
its import time would otherwise be counted as the platform's.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import section

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"debug": 1.0, "local": 1.0, "slurm": 1.5}


def sleep_stage(ctx: Any) -> dict[str, Any]:
    """The stage's 'compute': sleep ``sleep_s``."""
    time.sleep(float(ctx.params["sleep_s"]))
    return {"tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def launcher_config(name: str) -> dict[str, Any]:
    """conf/launcher/<name>.yaml as the sweep would use it."""
    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "launcher" / f"{name}.yaml").read_text())
    if name == "slurm":  # this stage needs one CPU and no GPU; the cluster here has 2 CPUs in all
        cfg["profiles"] = {"default": {**cfg["profiles"]["default"], "cpus_per_task": 1, "timeout_min": 5}}
    return cfg


def slurm_available() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def time_stage(launcher: str, results: Path, sleep_s: float, tag: str, timeout_s: float) -> dict[str, float]:
    from launchers import cancel_jobs, submit_stage, wait_jobs
    from platform.config import LauncherConfig
    from platform.stage import Stage

    cfg = launcher_config(launcher)
    poll = float(cfg.get("poll_interval_s", LauncherConfig().poll_interval_s))
    stage = Stage(name="bench", fn="benchmarks.bench_orchestration:sleep_stage", params={"sleep_s": sleep_s, "tag": tag})
    t0 = time.time()
    jobs = submit_stage(stage, results, cfg, results / "logs")

    def deadline(_states: dict[str, str]) -> None:
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{launcher} job still not done after {timeout_s:.0f} s")

    try:
        record = wait_jobs(jobs, poll, on_poll=deadline)[0]
    except TimeoutError:
        cancel_jobs(jobs)
        raise
    t1 = time.time()
    return {"total_s": t1 - t0, "stage_wall_s": record["wall_s"], "overhead_s": t1 - t0 - record["wall_s"],
            "start_delay_s": record["started_at"] - t0, "end_delay_s": t1 - record["ended_at"], "poll_s": poll}


def measure_launcher(launcher: str, repeat: int, sleep_s: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench_orch_{launcher}_", dir=_tmp_root(launcher)) as tmp:
        runs = [time_stage(launcher, Path(tmp), sleep_s, f"{os.getpid()}-{i}", timeout_s) for i in range(repeat)]
    row: dict[str, Any] = {"launcher": launcher, "repeats": repeat, "stage_sleep_s": sleep_s}
    for key in ("total_s", "stage_wall_s", "overhead_s", "start_delay_s", "end_delay_s"):
        row[key] = statistics.median(r[key] for r in runs)
    row["overhead_max_s"] = max(r["overhead_s"] for r in runs)
    row["poll_s"] = runs[0]["poll_s"]
    row["target_s"] = TARGETS_S[launcher]
    row["target_met"] = row["overhead_s"] <= row["target_s"]
    return row


def _tmp_root(launcher: str) -> Optional[str]:
    # SLURM jobs run as another process tree that must see the folder: keep it under the repo, not /tmp
    if launcher.startswith("slurm"):
        (ROOT / ".slurm").mkdir(exist_ok=True)
        return str(ROOT / ".slurm")
    return None


def sweep_trials(n_trials: int, timeout_s: float, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``python -m platform.sweep`` of the toy app with ``n_trials`` trials on the local launcher."""
    from platform.store import reading

    env = {**os.environ, "PLATFORM_APP": "tests.platform.toyapp.app",
           "PLATFORM_CONF_DIR": str(ROOT / "tests" / "platform" / "toyapp" / "conf"), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        results = Path(tmp) / "r"
        cmd = [sys.executable, "-m", "platform.sweep", f"paths.results={results}", f"sweep.n_trials={n_trials}",
               "work.sleep_s=0", "launcher=local", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"toy sweep exited {proc.returncode}: {proc.stderr[-2000:]}")
        with reading(results) as con:
            complete = con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
            ran, cached, stage_s = con.execute(
                "select count(*) filter (where not cached), count(*) filter (where cached), "
                "coalesce(sum(wall_s) filter (where not cached), 0) from stages").fetchone()
            parallel = con.execute("select count(*) from runs").fetchone()[0]
            errors = [r[0] for r in con.execute("select distinct error from trials where state <> 'COMPLETE'").fetchall()]
    return {"trials": n_trials, "complete": complete, "runs": parallel, "stage_jobs_run": ran,
            "stage_hits_cached": cached, "errors": [str(e)[-300:] for e in errors], "wall_s": wall, "wall_per_trial_s": wall / n_trials,
            "wall_per_stage_job_s": wall / max(ran, 1), "stage_compute_s": stage_s}


def run(smoke: bool) -> dict[str, Any]:
    repeat, sleep_s = (1, 0.05) if smoke else (5, 0.5)
    rows, notes = [], []
    launchers = ["debug", "local"]
    if not smoke and slurm_available():
        launchers += ["slurm"]
    elif not smoke:
        notes.append("slurm: skipped (sinfo does not answer; start one with scripts/slurm/start.sh)")
    else:
        notes.append("slurm: skipped in the smoke run")
    for name in launchers:
        try:
            if name == "slurm":  # once, before the first SLURM measurement
                queued = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip().count("\n") + 1 \
                    if subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() else 0
                notes.append(f"slurm: {queued} other job(s) in the queue when measured; start_delay includes any "
                             "wait for a free CPU on the single 2-CPU node")
            rows.append(measure_launcher(name, repeat if not name.startswith("slurm") else 3, sleep_s, 120.0))
        except Exception as exc:  # one launcher failing must not lose the others' numbers
            notes.append(f"{name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
    n_trials = 2 if smoke else 50
    tables: dict[str, list] = {"per_stage": rows}
    try:
        extra = ("work.iterations=1",) if smoke else ()
        tables["sweep"] = [sweep_trials(n_trials, 120 if smoke else 900, extra)]
    except Exception as exc:
        notes.append(f"toy sweep of {n_trials} trials failed: {type(exc).__name__}: {str(exc)[:500]}")
        tables["sweep"] = []
    notes.append("overhead = submit->wait return minus the stage function's own wall_s (marker); "
                 "local jobs pay a Python start + imports (torch-free: submitit, platform, launchers)")
    summary = {r["launcher"]: {"overhead_s": r["overhead_s"], "target_s": r["target_s"], "met": r["target_met"]}
               for r in rows}
    return section("Orchestration overhead", tables, summary, notes)
