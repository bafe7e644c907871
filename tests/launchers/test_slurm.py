"""The launcher against a real SLURM cluster (scripts/slurm/start.sh). Skipped where none answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import platform
from launchers import StageJobError, attach_jobs, build_launcher, cancel_jobs, job_state, submit_stage, wait_jobs
from launchers.jobs import REQUEUE_LOG
from platform.stage import MARKER, Stage, shard_dir

TOY = "tests.launchers.toy_stages"
REPO_PLATFORM = str(Path(platform.__file__).resolve().parent)


# what these tests and the pipeline tests call, directly or through submitit (which needs srun)
SLURM_COMMANDS = ("sinfo", "sbatch", "srun", "sacct", "scancel", "squeue", "scontrol")


def _cluster_answer() -> str | None:
    """None when a SLURM node is ready for jobs, else why the tests skip."""
    missing = [cmd for cmd in SLURM_COMMANDS if shutil.which(cmd) is None]
    if missing:
        return (f"no SLURM here: {', '.join(f'`{c}`' for c in missing)} not on PATH "
                "(start a cluster with scripts/slurm/start.sh)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 10 s (is slurmctld running? scripts/slurm/start.sh)"
    if out.returncode != 0:
        return f"`sinfo` failed: {out.stderr.strip()} (start a cluster with scripts/slurm/start.sh)"
    if not {"idle", "mixed", "allocated", "completing"} & set(out.stdout.split()):
        return f"no SLURM node is up (sinfo states: {out.stdout.split()})"
    return None


_SKIP = _cluster_answer()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

SLURM = {"name": "slurm", "max_parallel_jobs": 2}


def _stage(fn: str, config: dict, num_shards: int = 1, **kw) -> Stage:
    return Stage(name="toy", fn=f"{TOY}:{fn}", params=config, num_shards=num_shards, **kw)


def _sacct_final(job_id: str, duplicates: bool = False, timeout_s: float = 30, rows_at_least: int = 1) -> list[dict[str, str]]:
    """sacct rows once at least ``rows_at_least`` rows exist and every row has a final state
    (accounting reaches slurmdbd asynchronously, array elements one by one)."""
    deadline = time.time() + timeout_s
    while True:
        rows = _sacct(job_id, duplicates)
        done = len(rows) >= rows_at_least and all(r["State"].split()[0] in _FINAL for r in rows)
        if done or time.time() > deadline:
            return rows
        time.sleep(0.5)


_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "REQUEUED", "NODE_FAIL", "OUT_OF_MEMORY"}


def _sacct(job_id: str, duplicates: bool = False) -> list[dict[str, str]]:
    cmd = ["sacct", "-X", "-n", "-P", "-j", job_id.split("_")[0], "-o", "JobID,State,Submit,Start,End"]
    if duplicates:
        cmd.append("-D")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    keys = ["JobID", "State", "Submit", "Start", "End"]
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]


def test_one_job_runs_with_our_platform_package(tmp_path):
    stage = _stage("echo", {"value": 4})
    [job] = submit_stage(stage, tmp_path / "r", SLURM, tmp_path / "logs")
    [rec] = wait_jobs([job], poll_s=0.2)
    assert rec["summary"]["value"] == 40
    assert rec["summary"]["slurm_job_id"] == job.job_id
    assert rec["summary"]["platform_path"] == [REPO_PLATFORM]
    assert rec["summary"]["platform_system"] == "Linux"
    assert (stage.out_dir(tmp_path / "r") / MARKER).exists()
    assert (tmp_path / "logs" / job.job_id / f"{job.job_id}_0_log.out").exists()
    assert job_state(job) in ("COMPLETING", "COMPLETED")
    [row] = _sacct_final(job.job_id)
    assert row["State"] == "COMPLETED"
    assert job_state(job) == "COMPLETED"


def test_shards_run_as_one_array_capped_by_max_parallel_jobs(tmp_path):
    stage = _stage("sleep", {"seconds": 1.5}, num_shards=4)
    jobs = submit_stage(stage, tmp_path / "r", SLURM, tmp_path / "logs", shard_indices=[0, 1, 2, 3])
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(4)], "not one job array"
    recs = wait_jobs(jobs, poll_s=0.2)
    assert [r["shard_index"] for r in recs] == [0, 1, 2, 3]
    for i in range(4):
        assert (shard_dir(stage.out_dir(tmp_path / "r"), i, stage.num_shards) / MARKER).exists()
    events = sorted([(r["summary"]["started_at"], 1) for r in recs] + [(r["summary"]["ended_at"], -1) for r in recs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2
    rows = _sacct_final(jobs[0].job_id, rows_at_least=len(jobs))
    assert sorted(r["JobID"] for r in rows) == sorted(j.job_id for j in jobs)
    assert {r["State"] for r in rows} == {"COMPLETED"}


def test_afterok_dependency_orders_jobs_and_a_failed_dependency_cancels(tmp_path):
    first = _stage("sleep", {"seconds": 2})
    second = _stage("echo", {"value": 1}, label="after")
    [a] = submit_stage(first, tmp_path / "r", SLURM, tmp_path / "logs")
    [b] = submit_stage(second, tmp_path / "r", SLURM, tmp_path / "logs", depends_on=[a])
    rec_a, rec_b = wait_jobs([a, b], poll_s=0.2)
    assert rec_b["summary"]["started_at"] >= rec_a["summary"]["ended_at"]

    bad = _stage("fail", {})
    [c] = submit_stage(bad, tmp_path / "r", SLURM, tmp_path / "logs")
    [d] = submit_stage(_stage("echo", {"value": 2}), tmp_path / "r", SLURM, tmp_path / "logs", depends_on=[c])
    with pytest.raises(StageJobError):
        wait_jobs([c], poll_s=0.2)
    t0 = time.time()
    with pytest.raises(StageJobError) as err:
        wait_jobs([d], poll_s=0.2)
    # kill_on_invalid_dep: the dependent job is cancelled, not left pending forever
    assert err.value.state == "CANCELLED"
    assert time.time() - t0 < 30


def test_failing_job_brings_back_the_remote_traceback(tmp_path):
    stage = _stage("fail", {"fail_shards": [2]}, num_shards=3)
    jobs = submit_stage(stage, tmp_path / "r", SLURM, tmp_path / "logs", shard_indices=[0, 1, 2])
    with pytest.raises(StageJobError) as err:
        wait_jobs(jobs, poll_s=0.2)
    assert err.value.job_id == jobs[2].job_id
    assert err.value.state == "FAILED"
    assert "ValueError: toy shard 2 exploded on purpose" in err.value.traceback
    assert "toy_stages.py" in err.value.traceback
    assert "Traceback (most recent call last)" in err.value.traceback


def test_cancel_stops_a_running_job(tmp_path):
    stage = _stage("sleep", {"seconds": 300})
    [job] = submit_stage(stage, tmp_path / "r", SLURM, tmp_path / "logs")
    started = stage.out_dir(tmp_path / "r") / "started"
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the job never started"
    t0 = time.time()
    cancel_jobs([job])
    with pytest.raises(StageJobError) as err:
        wait_jobs([job], poll_s=0.2)
    assert err.value.state == "CANCELLED"
    assert time.time() - t0 < 20
    assert _sacct_final(job.job_id)[0]["State"].startswith("CANCELLED")


def test_a_restarted_driver_reattaches_by_job_id(tmp_path):
    stage = _stage("sleep", {"seconds": 3}, num_shards=2)
    jobs = submit_stage(stage, tmp_path / "r", SLURM, tmp_path / "logs", shard_indices=[0, 1])
    ids = [j.job_id for j in jobs]
    del jobs  # the first driver is gone; only the recorded ids and the log folder remain
    again = attach_jobs(SLURM, tmp_path / "logs", ids)
    assert [job_state(j) for j in again] != ["COMPLETED", "COMPLETED"]  # still queued or running
    recs = wait_jobs(again, poll_s=0.2)
    assert [r["shard_index"] for r in recs] == [0, 1]
    time.sleep(2)  # let late accounting rows arrive: a duplicate submission would show up as a 3rd row
    assert len(_sacct_final(ids[0], rows_at_least=2)) == 2  # nothing was submitted twice
    with pytest.raises(ValueError, match="only slurm can reattach"):
        attach_jobs({"name": "local"}, tmp_path / "logs", ids)


def test_the_slurm_launcher_reattaches_to_live_jobs_only(tmp_path):
    launcher = build_launcher(SLURM)
    jobs = launcher.submit(_stage("sleep", {"seconds": 3}), tmp_path / "r", tmp_path / "logs")
    ids = [str(j.job_id) for j in jobs]
    again = launcher.reattach(tmp_path / "logs", ids)
    assert [str(j.job_id) for j in again] == ids  # still queued or running
    launcher.wait(again)
    deadline = time.time() + 60  # sacct may call a finished job COMPLETING a while
    while launcher.reattach(tmp_path / "logs", ids) and time.time() < deadline:
        time.sleep(0.5)
    assert launcher.reattach(tmp_path / "logs", ids) == []  # finished: nothing to wait on


def test_two_tasks_form_one_gloo_group(tmp_path):
    stage = _stage("gloo_ranks", {}, profile="mstep")
    cfg = dict(SLURM, profiles={"mstep": {"tasks_per_node": 2, "timeout_min": 5}})
    [job] = submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs")
    [rec] = wait_jobs([job], poll_s=0.2)
    out = stage.out_dir(tmp_path / "r")
    assert rec["summary"] == {"rank": 0, "world_size": 2, "sum": 3.0}
    assert (out / "rank0").exists() and (out / "rank1").exists()


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_resumes(tmp_path):
    # 1-minute limit, signalled ~20 s before it; a first attempt needs 90 s, so it must be cut
    stage = _stage("count_steps", {"total_steps": 90, "step_s": 1.0, "resumed_step_s": 0.01})
    cfg = dict(SLURM, profiles={"default": {"timeout_min": 1}})
    [job] = submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs")
    [rec] = wait_jobs([job], poll_s=0.5)
    out = stage.out_dir(tmp_path / "r")
    assert rec["summary"]["steps"] == 90
    assert rec["summary"]["restart_count"] == "1"
    resumed = rec["summary"]["resumed_from"]
    assert 0 < resumed < 90
    starts = [line for line in (out / "steps.log").read_text().splitlines() if line.startswith("start")]
    assert [s.split()[1] for s in starts] == ["attempt=0", "attempt=1"]
    assert starts[1].endswith(f"from_step={resumed}")
    [requeue] = [json.loads(line) for line in (out / REQUEUE_LOG).read_text().splitlines()]
    assert requeue["job_id"] == job.job_id
    assert int((out / "hook_called").read_text()) <= resumed
    # same job id, requeued once (fresh submission pickle, not a duplicate job)
    rows = _sacct_final(job.job_id, duplicates=True)
    assert [r["State"] for r in rows] == ["REQUEUED", "COMPLETED"]
