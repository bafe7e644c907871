"""The cache-key contract of the science stages (docs/design.md "Cache keys").

A setting that changes how fast or where a stage runs keeps every key, so a move to another GPU
type or node size reuses every finished stage; a setting that changes a result changes the keys of
exactly the stages whose result it changes, and of those downstream.
"""

import dataclasses
import functools

import pytest
import yaml

from experiments import inputs
from experiments.graphs import build_plan
from platform.cli import load
from platform.stage import Stage, perf_fields
from platform.trial import apply_params

EXPERIMENTS = ["bootstrap", "em_compute", "synthetic_thoughts", "raw_baseline", "mixture", "thought_length"]

# One override per field declared perf() in experiments/inputs.py, and the launcher/sweep/paths
# settings, which no stage reads.
PERFORMANCE = [
    "sampler.batch_size=64", "sampler.gpu_memory_utilization=0.5", "sampler.max_model_len=4096",
    "sampler.tensor_parallel_size=2", "sampler.enforce_eager=true", "sampler.kv_cache_space_gb=8",
    "mstep.micro_batch_size=4", "mstep.checkpoint_every=7", "mstep.log_every=50", "mstep.num_threads=2",
    "estep.group_docs=3", "estep.num_shards=4", "estep.sample_store=false",
    "teacher.api_key_env=OTHER_KEY", "teacher.concurrency=2", "teacher.max_retries=1", "teacher.timeout_s=5",
    "launcher.max_parallel_jobs=3", "launcher.poll_interval_s=1.0", "sweep.parallel=1", "sweep.n_trials=5",
]


@functools.lru_cache(maxsize=None)
def _composed(experiment_override: str):
    return load([experiment_override])


@functools.lru_cache(maxsize=None)
def keys(experiment_override: str, *overrides: str) -> dict[str, str]:
    """Stage keys of the experiment's plan under ``overrides``: composed once per experiment, the
    overrides applied and validated as a trial's params are (platform.trial.apply_params)."""
    composed = _composed(experiment_override)
    params = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    spec = apply_params(composed.raw, params, composed.overrides)
    return {s.display: s.key for s in build_plan(spec.cfg).stages}


def test_every_perf_field_has_an_override_here():
    """A new perf() field must be added to PERFORMANCE, so the contract covers it."""
    declared = set()
    for cls in (inputs.EStepInput, inputs.MStepInput, inputs.TeacherInput, inputs.EvalInput):
        declared |= {f.name for f in dataclasses.fields(cls) if not f.metadata.get("affects_result", True)}
    for cls in (inputs.SamplerSpec, inputs.TeacherSpec):
        declared |= {f.name for f in dataclasses.fields(cls) if not f.metadata.get("affects_result", True)}
    covered = {o.split("=")[0].split(".")[1] for o in PERFORMANCE}
    assert declared <= covered, f"perf() fields without an override in PERFORMANCE: {declared - covered}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("override", PERFORMANCE)
def test_a_performance_setting_keeps_every_key(experiment, override):
    assert keys(f"experiment={experiment}", override) == keys(f"experiment={experiment}")


def test_the_perf_fields_are_what_the_key_leaves_out():
    plan = build_plan(load(["experiment=bootstrap"]).cfg)
    estep = next(s for s in plan.stages if s.name == "estep")
    assert set(perf_fields(estep.params)) == {
        "sampler.batch_size", "sampler.gpu_memory_utilization", "sampler.max_model_len",
        "sampler.tensor_parallel_size", "sampler.enforce_eager", "sampler.kv_cache_space_gb", "group_docs",
        "sample_store"}
    assert estep.num_shards == 2  # the shard count is the stage's, not its input's


def test_k_changes_only_what_iterations_from_one_compute():
    base, k8 = keys("experiment=bootstrap"), keys("experiment=bootstrap", "estep.num_samples=8")
    changed = {name for name in base if base[name] != k8[name]}
    expected = {f"{stage}[{it}]" for it in (1, 2, 3) for stage in ("estep", "build_train", "mstep", "eval")}
    assert changed == expected


@pytest.mark.parametrize("override, first_changed", [
    ("mstep.lr=0.001", {"mstep[0]"}),
    ("mstep.batch_size=8", {"mstep[0]"}),  # the optimizer's batch, unlike the sampler's, changes training
    ("em.epochs=5", {"build_train[1]"}),  # views follow epochs under fresh coins
    ("estep.max_thought_tokens=16", {"estep[1]"}),
    ("eval.max_new_tokens=4", {"eval[0]"}),
    ("data.num_train_docs=100", {"prepare_data"}),
    ("seed=1", {"init_model"}),
])
def test_a_result_setting_changes_its_stage_and_what_follows(override, first_changed):
    base, new = keys("experiment=bootstrap"), keys("experiment=bootstrap", override)
    order = list(base)
    changed = [name for name in order if base[name] != new[name]]
    assert changed and set(changed[: len(first_changed)]) == first_changed
    assert changed == [n for n in order if n in changed]  # and nothing before it


def test_seeds_share_the_corpus_and_the_teacher():
    """The corpus and the oracle's thoughts do not involve the run seed: replicate seeds share them."""
    base, other = keys("experiment=bootstrap"), keys("experiment=bootstrap", "seed=2")
    assert base["prepare_data"] == other["prepare_data"] and base["teacher"] == other["teacher"]
    assert base["init_model"] != other["init_model"]


def test_key_names_stage_version_and_inputs_not_the_function():
    a = Stage("estep", "experiments.estep:run_shard", {"k": 1})
    moved = Stage("estep", "somewhere.else:run_shard", {"k": 1})
    bumped = Stage("estep", "experiments.estep:run_shard", {"k": 1}, version="2")
    renamed = Stage("estep2", "experiments.estep:run_shard", {"k": 1})
    assert a.key == moved.key
    assert len({a.key, bumped.key, renamed.key}) == 3
