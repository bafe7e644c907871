"""Bad input ends in one clear error naming the field, before any job starts."""

import pytest

from platform.cli import load
from platform.validate import ConfigError
from tests.platform.conftest import run_cli


@pytest.mark.parametrize("override, field, allowed", [
    ("estep.num_samples=0", "estep.num_samples", "[1, inf]"),
    ("data.raw_mix_ratio=1.5", "data.raw_mix_ratio", "[0.0, 1.0]"),
    ("sweep.n_trials=-1", "sweep.n_trials", "[1, inf]"),
    ("sweep.heartbeat_interval=0", "sweep.heartbeat_interval", "[1, inf]"),
    ("sweep.grace_period=30", "sweep.grace_period", "must exceed sweep.heartbeat_interval (60)"),
    ("estep.max_thought_tokens=0", "estep.max_thought_tokens", "[1, inf]"),
    ("estep.num_sample=4", "estep.num_sample", "allowed in estep: context_chunks, group_docs, max_thought_tokens, num_samples"),
    ("bogus=1", "bogus", "unknown key"),
    ("estep.num_samples=four", "estep.num_samples", "must be an integer"),
    ("data.path=/nonexistent.jsonl", "data.path", "data.path"),
    ("model.path=/nonexistent/model", "model.path", "not a folder"),
    ("launcher=nope", "launcher=nope", "available: debug, local, slurm"),
])
def test_bad_value_is_one_clear_error(override, field, allowed):
    argv = ["experiment=em_compute", override]
    if override.startswith("data.path"):  # a run that needs no teacher: the oracle has no thoughts for a jsonl corpus
        argv = ["experiment=raw_baseline", "experiment.baseline=none", "data=jsonl", override]
    with pytest.raises(ConfigError) as info:
        load(argv)
    msg = str(info.value)
    assert field in msg and allowed in msg, msg
    assert len(info.value.problems) == 1, msg


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load(["experiment=em_compute", "estep.num_samples=0", "data.raw_mix_ratio=1.5", "sweep.n_trials=0"])
    assert len(info.value.problems) == 3


def test_cli_exits_2_before_any_job_and_writes_nothing(tmp_path):
    out = run_cli("platform.sweep", "experiment=em_compute", "estep.num_samples=0", f"paths.results={tmp_path}/r")
    assert out.returncode == 2
    assert "estep.num_samples: must be in [1, inf], got 0" in out.stderr
    assert not (tmp_path / "r").exists()


def test_overrides_reach_the_typed_config():
    c = load(["experiment=em_compute", "estep.num_samples=8", "data.raw_mix_ratio=0.25", "em.iterations=3",
              "sweep.n_trials=2", "sweep.parallel=1", "seed=7", "paths.results=/tmp/x",
              "estep.max_thought_tokens=16"]).cfg
    assert (c.estep.num_samples, c.data.raw_mix_ratio, c.em.iterations) == (8, 0.25, 3)
    assert (c.sweep.n_trials, c.sweep.parallel, c.seed, c.paths.results) == (2, 1, 7, "/tmp/x")
    assert c.estep.max_thought_tokens == 16 and c.experiment.kind == "bootstrap"
    assert c.sweep.search_space["estep.num_samples"].choices == [1, 4]


@pytest.mark.parametrize("name, kind", [("raw_baseline", "raw"), ("synthetic_thoughts", "synthetic"),
                                        ("bootstrap", "bootstrap"), ("em_compute", "bootstrap"),
                                        ("thought_length", "bootstrap"), ("mixture", "synthetic")])
def test_every_experiment_spec_composes_and_plans(name, kind):
    from platform.app import load_app

    cfg = load([f"experiment={name}"]).cfg
    assert cfg.experiment.kind == kind
    plan = load_app().build_plan(cfg)
    assert plan.kind == kind and plan.reports and plan.stages[0].name == "prepare_data"


def test_cfg_job_prints_resolved_config():
    out = run_cli("platform.sweep", "experiment=bootstrap", "estep.num_samples=3", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "num_samples: 3" in out.stdout and "kind: bootstrap" in out.stdout


def test_dry_run_prints_stage_graph_with_cache_keys_and_runs_nothing(tmp_path):
    out = run_cli("platform.sweep", "experiment=em_compute", "dry_run=true", f"paths.results={tmp_path}/r")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("trial ") == 2  # em_compute: K in {1, 4}
    assert "estep[1]" in out.stdout and "key=" in out.stdout and "[to run]" in out.stdout
    assert not (tmp_path / "r").exists()
