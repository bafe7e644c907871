"""Launcher config -> submitit executor: validation errors and the resources that reach sbatch.

The SLURM executor is built without a cluster the way submitit's own tests build it:
``submitit.slurm.test_slurm.mocked_slurm`` (submitit's ``MockedSubprocess``) makes ``srun`` look
present and answers ``sbatch``/``sacct``/``scancel`` in-process, so these tests run on any machine.
The launcher against a real cluster is tests/launchers/test_slurm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import submitit
from submitit.slurm.test_slurm import mocked_slurm

from launchers.executors import (
    LAUNCHER_KEYS,
    PROFILE_KEYS,
    REPO_ROOT,
    build_executor,
    default_signal_delay_s,
    validate_launcher,
)
from platform.config import LauncherConfig, ResourceProfile


def test_misspelled_profile_key_lists_valid_keys():
    cfg = {"name": "slurm", "profiles": {"mstep": {"gpu_per_task": 2}}}
    with pytest.raises(ValueError) as err:
        build_executor(cfg, Path("/tmp/x"), "mstep")
    msg = str(err.value)
    assert "launcher.profiles.mstep" in msg and "'gpu_per_task'" in msg
    for key in PROFILE_KEYS:
        assert key in msg


def test_misspelled_launcher_key_and_unknown_profile_and_name():
    with pytest.raises(ValueError, match=r"launcher: unknown key\(s\) 'partiton'.*partition"):
        validate_launcher({"name": "slurm", "partiton": "gpu"})
    with pytest.raises(ValueError, match=r"no profile 'msetp'; valid profiles: default, estep, eval, mstep"):
        build_executor({"name": "local"}, Path("/tmp/x"), "msetp")
    with pytest.raises(ValueError, match=r"launcher.name: 'slrum' is not one of debug, local, slurm"):
        validate_launcher({"name": "slrum"})
    with pytest.raises(ValueError, match=r"launcher.profiles.estep.cpus_per_task: must be an integer >= 1, got 0"):
        validate_launcher({"profiles": {"estep": {"cpus_per_task": 0}}})
    with pytest.raises(ValueError, match=r"launcher.max_num_timeout: must be an integer >= 0, got -1"):
        validate_launcher({"max_num_timeout": -1})
    assert set(LAUNCHER_KEYS) >= {"name", "profiles", "max_parallel_jobs", "max_num_timeout"}


@pytest.fixture
def fake_slurm():
    """submitit's stand-in for a SLURM cluster (no srun/sbatch needed), as in submitit's test suite."""
    with mocked_slurm() as mock:
        yield mock


def test_requeues_after_a_time_out_are_configurable(tmp_path, fake_slurm):
    assert build_executor({"name": "slurm"}, tmp_path).max_num_timeout == 3  # submitit's own default
    assert build_executor({"name": "slurm", "max_num_timeout": 0}, tmp_path).max_num_timeout == 0
    assert build_executor({"name": "local", "max_num_timeout": 7}, tmp_path).max_num_timeout == 7
    # and it reaches the submitted job: the countdown of requeues its pickle carries to the node
    job = build_executor({"name": "slurm", "max_num_timeout": 1}, tmp_path / "logs").submit(int, "5")
    assert job.job_id == fake_slurm.last_job
    assert submitit.core.utils.DelayedSubmission.load(job.paths.submitted_pickle)._timeout_countdown == 1


def test_dataclass_config_is_accepted_and_defaults_fill_partial_profiles():
    cfg = validate_launcher(LauncherConfig(name="debug"))
    assert cfg["profiles"]["default"] == {
        "gpus_per_task": 0, "cpus_per_task": 1, "tasks_per_node": 1, "nodes": 1, "mem_gb": None, "timeout_min": 60,
    }
    partial = validate_launcher({"profiles": {"estep": {"gpus_per_task": 1}, "x": ResourceProfile(nodes=2)}})
    assert partial["profiles"]["estep"]["timeout_min"] == 60
    assert partial["profiles"]["x"]["nodes"] == 2


def test_cluster_is_chosen_by_name_not_by_what_is_on_path(tmp_path):
    assert isinstance(build_executor({"name": "debug"}, tmp_path), submitit.DebugExecutor)
    local = build_executor({"name": "local"}, tmp_path)
    assert isinstance(local, submitit.LocalExecutor)
    assert str(local.folder).endswith("%j")
    with pytest.raises(ValueError, match="local launcher runs on one node"):
        build_executor({"name": "local", "profiles": {"default": {"nodes": 2}}}, tmp_path)


def test_slurm_profile_reaches_the_sbatch_script(tmp_path, fake_slurm):
    cfg = {
        "name": "slurm",
        "partition": "gpu",
        "account": "proj",
        "qos": "high",
        "max_parallel_jobs": 3,
        "additional_parameters": {"constraint": "a100"},
        "setup": ["module load cuda"],
        "profiles": {"mstep": {"gpus_per_task": 1, "cpus_per_task": 8, "tasks_per_node": 4,
                               "nodes": 2, "mem_gb": 64, "timeout_min": 240}},
    }
    ex = build_executor(cfg, tmp_path / "logs", "mstep")
    assert isinstance(ex, submitit.SlurmExecutor)
    expected = [
        "#SBATCH --time=240",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus-per-node=4",  # 1 GPU per task x 4 tasks
        "#SBATCH --mem=65536M",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --signal=USR2@120",
        "module load cuda",
        f"#SBATCH --output={tmp_path}/logs/%j/%j_0_log.out",
        f'export PYTHONPATH={REPO_ROOT}"${{PYTHONPATH:+:$PYTHONPATH}}"',
    ]
    text = ex._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    lines = set(text.splitlines())
    for line in expected:
        assert line in lines, f"{line!r} missing from:\n{text}"
    assert ex.parameters["array_parallelism"] == 3
    # a real submission (to the mocked sbatch) writes the same lines into the job's script
    job = ex.submit(int, "5")
    assert job.job_id == fake_slurm.last_job
    written = job.paths.submission_file.read_text()
    for line in expected:
        assert line in written.splitlines(), f"{line!r} missing from:\n{written}"


def test_signal_delay_scales_with_short_limits():
    assert default_signal_delay_s(1) == 20
    assert default_signal_delay_s(60) == 120
    assert default_signal_delay_s(0.1) == 5
