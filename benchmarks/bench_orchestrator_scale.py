"""Section `scale_orchestrator`: the sweep driver at thousands of array tasks (opt-in, `--only scale_orchestrator`).

A sweep of the toy app (``tests/platform/toyapp``: prepare -> per EM iteration an E-step job array
of ``shards`` tasks, its merge, an M-step and an eval; stages of near-zero cost) runs through the
real driver, ``platform.driver.run_sweep``, in a fresh process per size (``--worker``). That process
measures its own CPU time (``time.process_time``: every thread, DuckDB's included), the CPU of its
children (``RUSAGE_CHILDREN``: the job processes on the local launcher, sbatch/sacct on SLURM) and
its peak RSS, and attributes its CPU with per-call ``time.thread_time`` probes:

- submit: ``Launcher.submit`` (pickling the jobs, forking local jobs, sbatch's Python side);
- poll: ``Launcher.wait`` minus the job bodies it runs in-process (debug only);
- ingest: queueing the requests and the driver's ingester rounds (DuckDB: after every stage that
  stage's rows, at a run's end the whole run, and the study);
- other: the rest (Optuna, plans, ledger, completion markers, the live view).

Driver cost = process CPU minus in-process job bodies (debug), plus the SLURM commands it runs
(slurm). Per size: cost per job, and ``cost = a + b * jobs`` fitted over the sizes (``b`` is the
marginal cost of one more job) with the log-log exponent (1 is linear; above ``LINEAR_TOLERANCE``
counts as superlinear). Target: the driver's CPU per job under 1% of a 10-minute shard (6 s).
Concurrency comes from the completion markers (each stage body's start and end) and is checked
against the cap each launcher enforces: ``max_parallel_jobs`` machine-wide (local), per job array
(SLURM's ``%N``), and per driver on debug (its jobs run in the trial threads, a semaphore's
slots each).

Only stdlib imports at module level: the worker sets up the toy app's environment first.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
SHARD_S = 600.0  # a realistic E-step shard: 10 minutes on one GPU
TARGET_SHARE = 0.01  # the driver's CPU per job stays under 1% of it
LINEAR_TOLERANCE = 1.1  # a log-log exponent up to this is "linear or better" (noise on a shared machine)
TOY_ENV = {"PLATFORM_APP": "tests.platform.toyapp.app",
           "PLATFORM_CONF_DIR": str(ROOT / "tests" / "platform" / "toyapp" / "conf"), "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Size:
    """One measured sweep: ``trials`` x ``iterations`` E-step arrays of ``shards`` tasks."""

    launcher: str
    trials: int
    iterations: int
    shards: int
    parallel: int  # sweep.parallel: trials in flight
    max_parallel_jobs: int
    shard_sleep_s: float  # what a shard "computes": a sleep, so bodies overlap and the cap is visible
    repeat: int = 1
    axis: str = "trials"  # what grows along this series

    @property
    def array_tasks(self) -> int:
        return self.trials * self.iterations * self.shards

    def overrides(self, results: Path) -> list[str]:
        return [f"paths.results={results}", f"launcher={self.launcher}",
                f"launcher.max_parallel_jobs={self.max_parallel_jobs}", f"sweep.n_trials={self.trials}",
                f"sweep.parallel={self.parallel}", "sweep.live_interval_s=5", "work.sleep_s=0",
                f"work.iterations={self.iterations}", f"work.shards={self.shards}",
                f"work.shard_sleep_s={self.shard_sleep_s}"]


def plans(smoke: bool) -> dict[str, list[Size]]:
    """The series per launcher. Full: debug at 600 / 1,800 / 4,800 array tasks (1 / 3 / 8 trials x 3
    iterations x 200 shards, every trial in flight) and 1 trial at 1 / 2 / 4 iterations; local and
    SLURM at 30 / 60 / 120 tasks (10-shard arrays: a local job is two Python processes on 2 cores).
    Debug's max_parallel_jobs is the trials in flight: each trial's jobs run in its own thread, and
    the cap (one at a time by default) would otherwise serialize them."""
    if smoke:
        return {"debug": [Size("debug", t, 1, 4, t, t, 0.0) for t in (1, 2)]
                + [Size("debug", 1, i, 4, 1, 1, 0.0, axis="iterations") for i in (1, 2)],
                "local": [Size("local", 1, 1, 2, 1, 2, 0.0)]}
    return {"debug": [Size("debug", t, 3, 200, t, t, 0.005, r) for t, r in ((1, 3), (3, 2), (8, 1))]
            + [Size("debug", 1, i, 200, 1, 1, 0.005, 3, "iterations") for i in (1, 2, 4)],
            "local": [Size("local", t, 3, 10, min(t, 2), 2, 0.2, r) for t, r in ((1, 2), (2, 2), (4, 1))],
            "slurm": [Size("slurm", t, 3, 10, min(t, 2), 1, 0.2, r) for t, r in ((1, 2), (2, 2), (4, 1))]}


# ---------------------------------------------------------------- the worker (one sweep, one process)

class Probes:
    """Thread CPU seconds and calls per probe name, summed over every thread."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, cpu_s: float, calls: int = 1) -> None:
        with self._lock:
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu_s
            self.calls[name] = self.calls.get(name, 0) + calls

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def probed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(name, time.thread_time() - t0)

        setattr(owner, attr, probed)

    def count_sacct(self) -> None:
        """Count the watcher's sacct commands (``_make_command`` is None when nothing is left to ask)."""
        from submitit.slurm.slurm import SlurmInfoWatcher

        original = SlurmInfoWatcher._make_command

        def counted(watcher: Any) -> Any:
            command = original(watcher)
            if command is not None:
                self.add("sacct", 0.0)
            return command

        SlurmInfoWatcher._make_command = counted

    def install(self) -> None:
        import platform.driver as driver
        from platform.ingest import Ingester
        from submitit.core.core import InfoWatcher
        from submitit.local.local import LocalJob
        from submitit.slurm.slurm import SlurmJob

        from launchers.interface import Launcher
        from launchers.jobs import StageJob

        for owner, attr, name in ((Launcher, "submit", "submit"), (Launcher, "wait", "wait"),
                                  (StageJob, "__call__", "job_body"), (driver, "request_run", "ingest"),
                                  (driver, "request_study", "ingest"), (Ingester, "round", "ingest"),
                                  (LocalJob, "done", "poll_check"),
                                  (SlurmJob, "done", "poll_check"), (InfoWatcher, "update", "status_update")):
            self.wrap(owner, attr, name)
        self.count_sacct()


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    """This process's resident memory now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec (ru_maxrss keeps the
    peak of the process that forked us, here the benchmark runner with torch loaded)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one ending as another starts do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = best = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def _span(marker: Path) -> tuple[float, float]:
    record = json.loads(marker.read_text())
    return record["started_at"], record["ended_at"]


def job_counts(results: Path) -> dict[str, Any]:
    """Jobs the driver submitted (its ledgers) and the stage bodies' concurrency (completion markers)."""
    from platform.stage import MARKER

    submitted = 0
    for ledger in results.glob("runs/*/stages.jsonl"):
        for line in ledger.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("status") == "submitted" and entry.get("job_id"):
                submitted += len(str(entry["job_id"]).split(","))
    arrays: dict[Path, list[tuple[float, float]]] = {}
    for marker in results.glob(f"artifacts/*/*/shards/*/{MARKER}"):
        arrays.setdefault(marker.parents[2], []).append(_span(marker))
    stages = [_span(m) for m in results.glob(f"artifacts/*/*/{MARKER}")]
    tasks = [iv for ivs in arrays.values() for iv in ivs]
    return {"jobs": submitted, "array_tasks_run": len(tasks), "stage_jobs_run": len(stages),
            "max_concurrency": max_overlap(tasks + stages),
            "max_concurrency_per_array": max((max_overlap(ivs) for ivs in arrays.values()), default=0)}


def round_cpu_s(results: Path, run_id: str, stage_key: Optional[str] = None) -> float:
    """CPU of one ingest round that takes one request: the stage ``stage_key`` of run ``run_id``
    (None: the whole run). Every thread's: DuckDB's own threads count too."""
    from platform.ingest import drain
    from platform.ingest_queue import request_run

    request_run(results, run_id, stage_key)
    c0 = time.process_time()
    drain(results)
    return time.process_time() - c0


def uncoalesced_ingest(results: Path) -> dict[str, Any]:
    """What ingesting the largest run costs when no two of its stages share a round, as with stages
    minutes apart (here near-zero stages let many share one): a round per finished stage, each
    taking that stage alone, and one round for the whole run at its end. Measured after the sweep."""
    from platform.rundir import read_ledger

    ledgers = {p.name: read_ledger(p) for p in (results / "runs").iterdir() if (p / "run.json").exists()}
    run_id = max(ledgers, key=lambda r: len(ledgers[r]))
    keys = list(dict.fromkeys(e["key"] for e in ledgers[run_id] if e.get("status") == "completed"))
    stage_s = [round_cpu_s(results, run_id, key) for key in keys]
    jobs = sum(len(str(e["job_id"]).split(",")) for e in ledgers[run_id] if e.get("status") == "submitted")
    return {"stage_round_s": stage_s, "whole_run_round_s": round_cpu_s(results, run_id), "run_jobs": jobs}


def worker(spec_path: str, out_path: str) -> None:
    """Run one sweep in this process and write what it cost to ``out_path`` (JSON)."""
    spec = json.loads(Path(spec_path).read_text())
    probes = Probes()
    probes.install()
    from platform.cli import load, restore_default_sigint
    from platform.driver import run_sweep

    restore_default_sigint()
    composed = load(spec["overrides"])
    rss0, ch0 = rss_mb(), children_cpu_s()
    t0, c0 = time.perf_counter(), time.process_time()
    study = run_sweep(composed)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    out = {"process_cpu_s": cpu, "wall_s": wall, "children_cpu_s": children_cpu_s() - ch0, "rss_start_mb": rss0,
           "rss_end_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
           "trials_complete": sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)),
           "probe_cpu_s": probes.cpu, "probe_calls": probes.calls, **job_counts(Path(spec["results"]))}
    out.update(uncoalesced_ingest(Path(spec["results"])))  # after the measured window
    Path(out_path).write_text(json.dumps(out))


# ---------------------------------------------------------------- the section (parent process)

def _tmp_dir(launcher: str) -> Optional[str]:
    from benchmarks.bench_orchestration import _tmp_root

    return _tmp_root(launcher)


def run_worker(size: Size, timeout_s: float) -> dict[str, Any]:
    """One sweep of ``size`` in a fresh process; its raw measurements."""
    with tempfile.TemporaryDirectory(prefix=f"bench_scale_{size.launcher}_", dir=_tmp_dir(size.launcher)) as tmp:
        results = Path(tmp) / "r"
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"overrides": size.overrides(results), "results": str(results)}))
        env = {**os.environ, **TOY_ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        cmd = [sys.executable, "-m", "benchmarks.bench_orchestrator_scale", "--worker", str(spec), str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{size.launcher} sweep of {size.array_tasks} tasks exited {proc.returncode}: "
                               f"{proc.stderr[-1500:]}")
        return json.loads(out.read_text())


def cap_of(size: Size) -> tuple[int, str]:
    """The concurrency the launcher promises to keep, and over what."""
    if size.launcher == "debug":
        return size.max_parallel_jobs, "per driver (debug jobs run in the trial threads, max_parallel_jobs at a time)"
    if size.launcher == "slurm":
        return size.max_parallel_jobs, "per job array (sbatch --array %N)"
    return size.max_parallel_jobs, "machine-wide (flock slots)"


def per_job(raw: dict[str, Any], size: Size) -> dict[str, Any]:
    """Where the driver's CPU went, in ms per submitted job."""
    cpu, jobs = raw["probe_cpu_s"], max(raw["jobs"], 1)
    body = cpu.get("job_body", 0.0)
    children = raw["children_cpu_s"]
    driver = raw["process_cpu_s"] - body + (children if size.launcher == "slurm" else 0.0)
    parts = {"submit": cpu.get("submit", 0.0), "poll": cpu.get("wait", 0.0) - body, "ingest": cpu.get("ingest", 0.0)}
    parts["other"] = raw["process_cpu_s"] - body - sum(parts.values())
    checks, sacct = raw["probe_calls"].get("poll_check", 0), raw["probe_calls"].get("sacct", 0)
    update = cpu.get("status_update", 0.0)  # the watcher's sacct calls (spawn, parse), mostly inside done()
    row = {"launcher": size.launcher, "axis": size.axis, "trials": size.trials, "iterations": size.iterations,
           "shards": size.shards, "jobs": raw["jobs"], **{f"{k}_ms": 1e3 * v / jobs for k, v in parts.items()},
           "driver_ms": 1e3 * driver / jobs, "job_body_ms": 1e3 * body / jobs,
           "children_ms": 1e3 * children / jobs, "poll_checks_per_job": checks / jobs,
           "poll_check_us": 1e6 * max(cpu.get("poll_check", 0.0) - update, 0.0) / checks if checks else None,
           "sacct_calls": sacct, "sacct_driver_ms": 1e3 * update / sacct if sacct else None,
           # a real sweep's ingest, a round per finished stage (uncoalesced_ingest), per job of the run
           "ingest_uncoalesced_ms": 1e3 * (sum(raw["stage_round_s"]) + raw["whole_run_round_s"]) / max(raw["run_jobs"], 1),
           "stage_round_ms": 1e3 * statistics.median(raw["stage_round_s"]) if raw["stage_round_s"] else None}
    return row


def run_row(raw: dict[str, Any], size: Size) -> dict[str, Any]:
    """The sweep's size, wall time, driver CPU, memory and concurrency."""
    cap, scope = cap_of(size)
    concurrency = raw["max_concurrency_per_array"] if size.launcher == "slurm" else raw["max_concurrency"]
    jobs = max(raw["jobs"], 1)
    driver_ms = per_job(raw, size)["driver_ms"]
    return {"launcher": size.launcher, "axis": size.axis, "trials": size.trials, "parallel_trials": size.parallel,
            "iterations": size.iterations, "shards": size.shards, "array_tasks": size.array_tasks,
            "jobs": raw["jobs"], "trials_complete": raw["trials_complete"], "wall_s": raw["wall_s"],
            "driver_cpu_s": driver_ms * jobs / 1e3, "driver_cpu_per_job_ms": driver_ms,
            "share_of_600s_shard_pct": 100 * driver_ms / 1e3 / SHARD_S, "rss_start_mb": raw["rss_start_mb"],
            "peak_rss_mb": raw["peak_rss_mb"], "rss_end_mb": raw["rss_end_mb"],
            "max_parallel_jobs": size.max_parallel_jobs, "cap": cap, "cap_scope": scope,
            "max_concurrency": raw["max_concurrency"], "max_concurrency_per_array": raw["max_concurrency_per_array"],
            "cap_honoured": 0 < concurrency <= cap}


def merge_repeats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of several runs of a size: the median of each number, all() of each flag."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r[key] for r in rows]
        if isinstance(first, bool):
            out[key] = all(values)
        elif isinstance(first, (int, float)) and None not in values:
            med = statistics.median(values)
            out[key] = int(med) if isinstance(first, int) and med == int(med) else med
        else:
            out[key] = first
    return out


def summarize(size: Size, raws: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run row, cost row) of ``size``, the median of its runs."""
    runs = [run_row(r, size) for r in raws]
    row = merge_repeats(runs)
    row["repeats"] = len(raws)
    if len(raws) > 1:
        row["driver_cpu_s_each"] = [round(r["driver_cpu_s"], 2) for r in runs]
    return row, merge_repeats([per_job(r, size) for r in raws])


# ---------------------------------------------------------------- fits, target, the paper's configuration

FITTED = (("driver", "driver_ms"), ("submit", "submit_ms"), ("poll", "poll_ms"), ("ingest", "ingest_ms"),
          ("other", "other_ms"))


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(slope, intercept, r^2) of the least-squares line y = intercept + slope * x."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - (slope * x + intercept)) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return float(slope), float(intercept), r2


def fit_row(launcher: str, axis: str, measure: str, jobs: list[int], totals: list[float], unit: str) -> dict[str, Any]:
    """How one cost (``totals``: seconds, or MB for memory) grows with the job count."""
    from benchmarks.bench_scaling import loglog_slope

    scale = 1024.0 if unit == "KB/job" else 1e3  # MB -> KB, s -> ms
    slope, intercept, r2 = linear_fit(jobs, totals)
    exponent = loglog_slope(jobs, totals) if min(totals) > 0 else None
    growth = "n/a (a value <= 0)" if exponent is None else \
        "linear or better" if exponent <= LINEAR_TOLERANCE else "superlinear"
    return {"launcher": launcher, "axis": axis, "measure": measure, "jobs": " / ".join(f"{j:,}" for j in jobs),
            # a share of the peak memory is no job's: only its slope is per job
            "unit": unit, "per_job_at_largest": None if unit == "KB/job" else scale * totals[-1] / jobs[-1],
            "marginal_per_job": scale * slope,
            "intercept": intercept, "r2": r2, "loglog_exponent": exponent, "growth": growth}


def slope_rows(runs: list[dict[str, Any]], costs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per launcher and axis with >= 2 sizes: driver, submit, poll, ingest, other CPU and memory vs jobs."""
    out = []
    for key in dict.fromkeys((c["launcher"], c["axis"]) for c in costs):
        cs = sorted((c for c in costs if (c["launcher"], c["axis"]) == key), key=lambda c: c["jobs"])
        rs = sorted((r for r in runs if (r["launcher"], r["axis"]) == key), key=lambda r: r["jobs"])
        if len(cs) < 2:
            continue
        jobs = [c["jobs"] for c in cs]
        for measure, col in FITTED:
            out.append(fit_row(*key, measure, jobs, [c[col] * c["jobs"] / 1e3 for c in cs], "ms/job"))
        out.append(fit_row(*key, "peak memory", jobs, [r["peak_rss_mb"] for r in rs], "KB/job"))
    return out


def target_rows(runs: list[dict[str, Any]], slopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per series: the driver's CPU per job at its largest size and at the margin, against 1% of 600 s."""
    out = []
    for fit in (s for s in slopes if s["measure"] == "driver"):
        largest = max((r for r in runs if (r["launcher"], r["axis"]) == (fit["launcher"], fit["axis"])),
                      key=lambda r: r["jobs"])
        worst_ms = max(largest["driver_cpu_per_job_ms"], fit["marginal_per_job"])
        under = worst_ms / 1e3 / SHARD_S < TARGET_SHARE
        linear = fit["growth"] == "linear or better"
        out.append({"launcher": fit["launcher"], "axis": fit["axis"], "jobs_at_largest": largest["jobs"],
                    "driver_ms_per_job": largest["driver_cpu_per_job_ms"], "marginal_ms_per_job": fit["marginal_per_job"],
                    "share_of_600s_shard_pct": 100 * worst_ms / 1e3 / SHARD_S, "loglog_exponent": fit["loglog_exponent"],
                    "under_1pct": under, "linear_or_better": linear, "target_met": under and linear})
    return out


def sacct_cpu_s(calls: int = 5) -> Optional[float]:
    """CPU of one ``sacct`` the way submitit's watcher asks (every array still waited on; here the 8
    latest jobs, as 8 trials in flight would have), in this process's children; None without SLURM."""
    try:
        ids = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "now-2hours"], capture_output=True,
                             text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    bases = list(dict.fromkeys(i.split("_")[0] for i in ids))[-8:]
    if not bases:
        return None
    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2", *[a for b in bases for a in ("-j", b)]]
    c0 = children_cpu_s()
    for _ in range(calls):
        subprocess.run(cmd, capture_output=True, timeout=30)
    return (children_cpu_s() - c0) / calls


def paper_config() -> dict[str, Any]:
    """The paper's sweep (docs/method.md): 200 one-GPU E-step shards per EM iteration, EM iterations
    1-4, 8 trials in flight, with conf/launcher/slurm.yaml's array cap and poll interval."""
    import yaml

    slurm = yaml.safe_load((ROOT / "conf" / "launcher" / "slurm.yaml").read_text())
    return {"shards": 200, "iterations": 4, "trials": 8, "max_parallel_jobs": int(slurm["max_parallel_jobs"]),
            "poll_s": float(slurm["poll_interval_s"])}


def _pick(costs: list[dict[str, Any]], launcher: str, axis: str, iterations: Optional[int] = None) -> Optional[dict]:
    rows = [c for c in costs if c["launcher"] == launcher and c["axis"] == axis
            and (iterations is None or c["iterations"] <= iterations)]
    return max(rows, key=lambda c: (c["iterations"], c["jobs"])) if rows else None


def _poll_parts(poller: dict[str, Any], paper: dict[str, Any], sacct_s: Optional[float]) -> list[tuple]:
    """Polling one array of 10-minute shards: ``done()`` on every pending task every round, and the
    sacct that ``wait_jobs`` forces once a second (per waiting trial), per shard job."""
    array_s = math.ceil(paper["shards"] / paper["max_parallel_jobs"]) * SHARD_S  # waves of 10-minute shards
    checks = array_s / paper["poll_s"] / 2  # every round checks every pending task; half are pending on average
    rows = [("polling the array: done() per pending task per round", poller["poll_check_us"] * checks / 1e3,
             f"{poller['poll_check_us']:.0f} us per check ({poller['launcher']}) x {checks:,.0f} checks "
             f"({array_s:,.0f} s array / {paper['poll_s']} s poll / 2)")]
    if sacct_s is not None and poller.get("sacct_driver_ms") is not None:
        calls = array_s / 1.0 / paper["shards"]
        per_call = poller["sacct_driver_ms"] + 1e3 * sacct_s
        rows.append(("forced sacct, one a second per waiting trial", per_call * calls,
                     f"{poller['sacct_driver_ms']:.1f} ms in the driver (spawn, parse) + {1e3 * sacct_s:.1f} ms "
                     f"sacct's own CPU, x {calls:.0f} calls per shard job"))
    return rows


def projection_rows(costs: list[dict[str, Any]], runs: list[dict[str, Any]], sacct_s: Optional[float]) -> list[dict]:
    """The driver's CPU per E-step shard job in the paper's sweep, from the constants measured here."""
    paper = paper_config()
    base, deep = _pick(costs, "debug", "trials"), _pick(costs, "debug", "iterations", paper["iterations"])
    submitter = _pick(costs, "slurm", "trials") or base
    poller = _pick(costs, "slurm", "trials") or _pick(costs, "local", "trials")
    if base is None:
        return []
    deep = deep or base
    rows = [("bookkeeping: Optuna, plans, ledgers, markers, ingest queue, live view", base["other_ms"],
             f"measured: debug, {base['jobs']:,} jobs"),
            ("submit", submitter["submit_ms"], f"measured: {submitter['launcher']}, {submitter['jobs']:,} jobs "
             f"({submitter['shards']}-task arrays; sbatch's own CPU, one call per array, left out)"),
            ("ingest, one round per finished stage", max(deep["ingest_ms"], deep["ingest_uncoalesced_ms"]),
             f"debug, {deep['trials']} trial(s) x {deep['iterations']} iterations x {deep['shards']} shards: "
             f"{deep['ingest_uncoalesced_ms']:.1f} ms = a round per stage taking that stage alone (median "
             f"{deep['stage_round_ms']:.0f} ms) and one for the whole run at its end, measured after the sweep, "
             f"/ its jobs; {deep['ingest_ms']:.1f} ms measured with rounds shared by near-zero stages")]
    if poller and poller.get("poll_check_us") is not None:
        rows += _poll_parts(poller, paper, sacct_s)
    out = [{"part": p, "ms_per_shard_job": ms, "how": how} for p, ms, how in rows]
    total = sum(r["ms_per_shard_job"] for r in out)
    out.append({"part": "total", "ms_per_shard_job": total, "share_of_600s_shard_pct": 100 * total / 1e3 / SHARD_S,
                "how": f"{paper['trials']} trials x {paper['iterations']} iterations x {paper['shards']} shards, "
                       f"array cap {paper['max_parallel_jobs']}, poll {paper['poll_s']} s"})
    return out + _memory_projection(runs, paper)


def _memory_projection(runs: list[dict[str, Any]], paper: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [r for r in runs if r["launcher"] == "debug" and r["axis"] == "trials"]
    if len(rows) < 2:
        return []
    rows.sort(key=lambda r: r["jobs"])
    slope, _, _ = linear_fit([r["jobs"] for r in rows], [r["peak_rss_mb"] for r in rows])
    # per iteration the shards, their merge, the training set, the M-step and the eval; 6 warm-start stages
    jobs = paper["trials"] * (paper["iterations"] * (paper["shards"] + 4) + 6)
    return [{"part": "driver memory for the whole sweep", "mb": max(slope, 0.0) * jobs,
             "how": f"{1024 * slope:.2f} KB per job (debug fit of the peak RSS) x {jobs:,} jobs, on top of the "
                    f"{rows[0]['peak_rss_mb']:.0f} MB peak of the smallest sweep"}]


# ---------------------------------------------------------------- the section

NOTES = [
    "driver = the sweep process's CPU (every thread) minus the job bodies it runs in-process (debug), plus the "
    "SLURM commands it runs (slurm: sbatch, sacct); local jobs are child processes and are not the driver's "
    "(children_ms in cost_per_job: their Python start, imports and body)",
    "poll = Launcher.wait minus in-process job bodies; ingest = the DuckDB ingest the driver runs (each finished "
    "stage's rows, the whole run at its end; rounds shared when stages finish close together); "
    "other = Optuna, plans, ledgers, markers, the live view",
    f"slopes: least-squares cost = intercept + marginal * jobs; the log-log exponent says how cost grows "
    f"(1 = linear, <= {LINEAR_TOLERANCE} counted as linear or better on this shared machine)",
    f"target: driver CPU per job (the larger of the per-job figure at the largest size and the marginal one) "
    f"< {100 * TARGET_SHARE:.0f}% of a {SHARD_S:.0f} s shard, growing linearly or better",
    "paper_projection models 10-minute shards from the constants measured here; it is arithmetic, not a run",
]


def check_caps(runs: list[dict[str, Any]]) -> None:
    """Every sweep stayed within the concurrency its launcher promises."""
    over = [r for r in runs if not r["cap_honoured"]]
    if over:
        raise AssertionError("concurrency cap not honoured: " + "; ".join(
            f"{r['launcher']} {r['array_tasks']} tasks: {r['max_concurrency']} at once "
            f"({r['max_concurrency_per_array']} per array), cap {r['cap']} {r['cap_scope']}" for r in over))


def launcher_series(sizes: list[Size], timeout_s: float, log: Callable[[str], None]) -> tuple[list, list, list]:
    """Every size of one launcher, its repeats in rounds (each round runs every size still owed a run,
    smallest first), so that the shared machine's drift in load touches every size alike."""
    raws: list[list[dict[str, Any]]] = [[] for _ in sizes]
    failed: dict[int, str] = {}
    for round_ in range(max(s.repeat for s in sizes)):
        for i, size in enumerate(sizes):
            if size.repeat <= round_ or i in failed:
                continue
            log(f"  {size.launcher}: {size.trials} trial(s) x {size.iterations} iteration(s) x {size.shards} shards "
                f"({size.axis} axis), run {round_ + 1} of {size.repeat}")
            try:
                raws[i].append(run_worker(size, timeout_s))
            except Exception as exc:  # one size failing must not lose the others' numbers
                failed[i] = f"{size.launcher} {size.array_tasks} tasks ({size.axis}): failed: {type(exc).__name__}: " \
                            f"{str(exc)[:600]}"
    rows = [summarize(size, rs) for i, (size, rs) in enumerate(zip(sizes, raws)) if rs and i not in failed]
    return [r for r, _ in rows], [c for _, c in rows], list(failed.values())


def _series(smoke: bool, log: Callable[[str], None]) -> tuple[list[dict], list[dict], list[str]]:
    from benchmarks.bench_orchestration import slurm_available

    runs, costs, notes = [], [], []
    for launcher, sizes in plans(smoke).items():
        if launcher == "slurm" and not slurm_available():
            notes.append("slurm: skipped (sinfo does not answer; start one with scripts/slurm/start.sh)")
            continue
        r, c, n = launcher_series(sizes, 180 if smoke else 1800, log)
        runs, costs, notes = runs + r, costs + c, notes + n
    if smoke:
        notes.append("slurm: skipped in the smoke run")
    return runs, costs, notes


def run(smoke: bool) -> dict[str, Any]:
    from benchmarks import section

    t0 = time.perf_counter()
    runs, costs, notes = _series(smoke, lambda m: print(m, file=sys.stderr, flush=True))
    slopes = slope_rows(runs, costs)
    sacct_s = sacct_cpu_s() if any(r["launcher"] == "slurm" for r in runs) else None
    tables = {"runs": runs, "cost_per_job": costs, "slopes": slopes, "target": target_rows(runs, slopes),
              "paper_projection": projection_rows(costs, runs, sacct_s)}
    check_caps(runs)
    summary = {"caps_honoured": all(r["cap_honoured"] for r in runs), "sacct_cpu_s": sacct_s,
               "target_met": {f"{t['launcher']}/{t['axis']}": t["target_met"] for t in tables["target"]},
               "measured_s": time.perf_counter() - t0}
    return section("Orchestrator at scale", tables, summary, notes + NOTES)


def headline_rows(sec: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's summary rows: the driver's CPU per job per series, against the target."""
    rows = []
    for t in sec.get("tables", {}).get("target", []):
        exponent = "-" if t["loglog_exponent"] is None else f"{t['loglog_exponent']:.2f}"
        rows.append({"measure": f"Driver CPU per job, {t['launcher']} launcher, {t['jobs_at_largest']:,} jobs "
                                f"({t['axis']} axis)",
                     "value": f"{t['driver_ms_per_job']:.1f} ms (marginal {t['marginal_ms_per_job']:.1f} ms; "
                              f"{t['share_of_600s_shard_pct']:.3f}% of a 600 s shard), log-log exponent {exponent}",
                     "target": "< 1% of a 600 s shard, linear or better", "met": t["target_met"]})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.bench_orchestrator_scale --worker SPEC.json OUT.json "
                 "(the section itself: python -m benchmarks.run --only scale_orchestrator)")
