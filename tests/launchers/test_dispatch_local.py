"""submit_stage / wait_jobs / cancel_jobs with the debug (in-process) and local (subprocess) launchers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import platform
from launchers import StageJobError, cancel_jobs, job_state, submit_stage, wait_jobs
from launchers.jobs import REQUEUE_LOG
from platform.stage import MARKER, Stage, shard_dir

TOY = "tests.launchers.toy_stages"
REPO_PLATFORM = str(Path(platform.__file__).resolve().parent)


def _stage(fn: str, config: dict, num_shards: int = 1, **kw) -> Stage:
    return Stage(name="toy", fn=f"{TOY}:{fn}", params=config, num_shards=num_shards, **kw)


def _peak(records: list[dict]) -> int:
    events = sorted([(r["started_at"], 1) for r in records] + [(r["ended_at"], -1) for r in records])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("launcher", ["debug", "local"])
def test_shard_array_runs_every_shard_with_our_platform_package(tmp_path, launcher):
    stage = _stage("echo", {"value": 7, "launcher": launcher}, num_shards=4)
    cfg = {"name": launcher, "max_parallel_jobs": 2}
    jobs = submit_stage(stage, tmp_path / "results", cfg, tmp_path / "logs", shard_indices=[0, 1, 2, 3])
    assert len(jobs) == 4
    records = wait_jobs(jobs, poll_s=0.05)
    assert [r["summary"]["value"] for r in records] == [70, 71, 72, 73]
    assert [r["shard_index"] for r in records] == [0, 1, 2, 3]
    for rec in records:
        # the job unpickled platform.stage as *our* package, and the stdlib part still works
        assert rec["summary"]["platform_path"] == [REPO_PLATFORM]
        assert rec["summary"]["platform_system"] == "Linux"
    out = stage.out_dir(tmp_path / "results")
    for i in range(4):
        assert (shard_dir(out, i, stage.num_shards) / MARKER).exists()
        assert (shard_dir(out, i, stage.num_shards) / "echo.txt").read_text() == f"toy {i}\n"
    assert {job_state(j) for j in jobs} == {"COMPLETED"}
    pids = {r["summary"]["pid"] for r in records}
    if launcher == "debug":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids and len(pids) == 4
        # one log folder per job id
        assert sorted(p.name for p in (tmp_path / "logs").iterdir() if p.is_dir() and p.name != "%j") == sorted(
            j.job_id for j in jobs
        )


@pytest.mark.parametrize("launcher", ["debug", "local"])
def test_failing_shard_raises_with_remote_traceback(tmp_path, launcher):
    stage = _stage("fail", {"fail_shards": [1]}, num_shards=2)
    cfg = {"name": launcher}
    jobs = submit_stage(stage, tmp_path / "results", cfg, tmp_path / "logs", shard_indices=[0, 1])
    with pytest.raises(StageJobError) as err:
        wait_jobs(jobs, poll_s=0.05)
    assert err.value.job_id == jobs[1].job_id
    assert err.value.state == "FAILED"
    tb = err.value.traceback
    assert "Traceback (most recent call last)" in tb
    assert "ValueError: toy shard 1 exploded on purpose" in tb
    assert "toy_stages.py" in tb
    # the healthy shard finished and left its marker
    assert (shard_dir(stage.out_dir(tmp_path / "results"), 0, stage.num_shards) / MARKER).exists()
    assert not (shard_dir(stage.out_dir(tmp_path / "results"), 1, stage.num_shards) / MARKER).exists()


def test_single_job_and_cached_rerun(tmp_path):
    stage = _stage("echo", {"value": 1})
    cfg = {"name": "local"}
    [first] = wait_jobs(submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs"), poll_s=0.05)
    assert first["summary"]["value"] == 10 and first["shard_index"] == 0
    # the marker exists: a second submission returns the stored record without running the function
    [again] = wait_jobs(submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs"), poll_s=0.05)
    assert again == first


def test_local_parallelism_is_capped_by_max_parallel_jobs(tmp_path):
    stage = _stage("sleep", {"seconds": 1.0}, num_shards=4)
    cfg = {"name": "local", "max_parallel_jobs": 2}
    jobs = submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs", shard_indices=[0, 1, 2, 3])
    assert _peak([r["summary"] for r in wait_jobs(jobs, poll_s=0.05)]) == 2


def test_cancel_stops_a_running_local_job(tmp_path):
    stage = _stage("sleep", {"seconds": 60})
    jobs = submit_stage(stage, tmp_path / "r", {"name": "local"}, tmp_path / "logs")
    started = stage.out_dir(tmp_path / "r") / "started"
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the job never started"
    task_pid = int(started.read_text())
    assert job_state(jobs[0]) == "RUNNING"
    t0 = time.time()
    cancel_jobs(jobs)
    with pytest.raises(StageJobError) as err:
        wait_jobs(jobs, poll_s=0.05)
    assert time.time() - t0 < 8
    assert err.value.state == "CANCELLED"
    assert job_state(jobs[0]) == "CANCELLED"
    assert not Path(f"/proc/{task_pid}").exists() or "zombie" in Path(f"/proc/{task_pid}/status").read_text()


def test_local_timeout_checkpoints_requeues_and_resumes(tmp_path):
    # 9 s limit, signal 5 s before: the first attempt (20 x 0.4 s) is signalled around step 10
    stage = _stage("count_steps", {"total_steps": 20, "step_s": 0.4, "resumed_step_s": 0.01})
    cfg = {"name": "local", "profiles": {"default": {"timeout_min": 0.15}}}
    jobs = submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs")
    [rec] = wait_jobs(jobs, poll_s=0.1)
    out = stage.out_dir(tmp_path / "r")
    assert rec["summary"]["steps"] == 20
    assert 0 < rec["summary"]["resumed_from"] < 20
    starts = [line for line in (out / "steps.log").read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 2
    assert starts[0].endswith("from_step=0")
    assert starts[1].endswith(f"from_step={rec['summary']['resumed_from']}")
    requeues = [json.loads(line) for line in (out / REQUEUE_LOG).read_text().splitlines()]
    assert len(requeues) == 1
    # the stage's hook saved at signal time: the resumed run starts at (or after) that step
    assert int((out / "hook_called").read_text()) <= rec["summary"]["resumed_from"]


def test_local_two_task_job_forms_one_gloo_group(tmp_path):
    # rank 1 runs beside rank 0 without taking run_stage's folder lock (that would deadlock)
    stage = _stage("gloo_ranks", {}, profile="mstep")
    cfg = {"name": "local", "profiles": {"mstep": {"tasks_per_node": 2, "timeout_min": 5}}}
    [rec] = wait_jobs(submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs"), poll_s=0.1)
    assert rec["summary"] == {"rank": 0, "world_size": 2, "sum": 3.0}
    out = stage.out_dir(tmp_path / "r")
    assert (out / "rank0").exists() and (out / "rank1").exists() and (out / MARKER).exists()


@pytest.mark.parametrize("cap", [2, 6])
def test_debug_jobs_of_concurrent_trials_are_capped_by_max_parallel_jobs(tmp_path, cap):
    """Debug jobs run in whichever driver thread waits for them (one per trial in flight): six
    threads each waiting on its own stage's job run at most ``cap`` of them at once."""
    import threading

    cfg = {"name": "debug", "max_parallel_jobs": cap}
    records: list[dict] = []

    def trial(i: int) -> None:
        stage = _stage("sleep", {"seconds": 0.3, "trial": i})
        jobs = submit_stage(stage, tmp_path / "r", cfg, tmp_path / "logs" / str(i))
        records.extend(r["summary"] for r in wait_jobs(jobs, poll_s=0.01))

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(records) == 6
    assert _peak(records) == cap  # 6: uncapped, as every trial thread runs its job at once
