"""The orchestrator's one view of launching: ``build_launcher`` -> ``Launcher`` (submit, wait, cancel, reattach)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from launchers import Launcher, SlurmLauncher, StageJobError, build_launcher
from platform.stage import Stage

TOY = "tests.launchers.toy_stages"
ROOT = Path(__file__).resolve().parents[2]


def _stage(fn: str, config: dict, num_shards: int = 1) -> Stage:
    return Stage(name="toy", fn=f"{TOY}:{fn}", params=config, num_shards=num_shards)


def test_the_config_names_the_kind():
    assert type(build_launcher({"name": "debug"})) is Launcher
    assert type(build_launcher({"name": "local"})) is Launcher
    assert type(build_launcher({})) is Launcher  # the schema's default is local
    assert isinstance(build_launcher({"name": "slurm"}), SlurmLauncher)
    assert Launcher.JobFailed is StageJobError


@pytest.mark.parametrize("name", ["debug", "local"])
def test_submit_and_wait_through_the_interface(tmp_path, name):
    launcher = build_launcher({"name": name, "poll_interval_s": 0.05})
    jobs = launcher.submit(_stage("echo", {"value": 3}, num_shards=2), tmp_path / "r", tmp_path / "logs",
                           shard_indices=[0, 1])
    assert [r["summary"]["value"] for r in launcher.wait(jobs)] == [30, 31]
    with pytest.raises(launcher.JobFailed) as err:
        launcher.wait(launcher.submit(_stage("fail", {"fail_shards": [0]}), tmp_path / "r", tmp_path / "logs"))
    assert not err.value.lost  # the stage raised: a traceback, not a lost job


@pytest.mark.parametrize("name", ["debug", "local"])
def test_jobs_that_die_with_their_driver_are_never_reattached(tmp_path, name):
    launcher = build_launcher({"name": name})
    [job] = launcher.submit(_stage("echo", {"value": 1}), tmp_path / "r", tmp_path / "logs")
    launcher.wait([job])
    assert launcher.reattach(tmp_path / "logs", [str(job.job_id)]) == []


def test_a_job_without_result_or_traceback_is_lost():
    lost = StageJobError("7", "Job 7 (task: 0) with path /x/7_0_log.out has not produced any output", "CANCELLED")
    assert lost.lost
    raised = StageJobError("8", "Traceback (most recent call last):\n  ...\nValueError: no", "FAILED")
    assert not raised.lost


def test_the_orchestrator_knows_no_slurm_and_launchers_no_orchestrator():
    orchestrator = (ROOT / "platform" / "orchestrator.py").read_text()
    assert "slurm" not in orchestrator.lower()
    for state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
        assert state not in orchestrator
    for path in (ROOT / "launchers").glob("*.py"):
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import)
                     for a in n.names}
        assert not any(m and m.startswith(("platform.orchestrator", "experiments")) for m in imported), path
