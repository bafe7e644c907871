"""Sweeps over a finite space visit each point once; repeats that happen anyway are recorded as such
and leave the compute accounting (stages.wall_s where not cached) equal to the compute spent.
On the science-free toy app."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from platform.config import ObjectiveSpec, ParamSpec, SweepConfig
from platform.store import query_rows
from platform.study import UnvisitedSampler, build_sampler, open_study
from tests.platform.conftest import ROOT, TOY_ENV, run_cli

_q = query_rows

# both params enter the stages' cache keys, so no trial is a cache hit of another
GRID_4x2 = ("sweep.search_space={work.x: {type: categorical, choices: [0.1, 0.3, 0.5, 0.7]}, "
            "work.sleep_s: {type: categorical, choices: [0.01, 0.02]}}")
TWO_OBJECTIVES = "sweep.objectives=[{metric: accuracy, direction: maximize}, {metric: train_flops, direction: minimize}]"


def _calls(results: Path) -> list[dict]:
    log = results / "calls.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _distinct_complete(res: Path) -> tuple[int, int, int]:
    """(complete trials, distinct params among them, distinct run ids among them)."""
    return _q(res, "select count(*), count(distinct params::varchar), count(distinct run_id) "
                   "from trials where state = 'COMPLETE'")[0]


def _marker_wall_s(res: Path) -> float:
    """What the jobs spent: every completion marker's wall time (each stage and shard ran once)."""
    markers = [*res.glob("artifacts/*/*/_COMPLETE.json"), *res.glob("artifacts/*/*/shards/*/_COMPLETE.json")]
    return sum(json.loads(m.read_text())["wall_s"] for m in markers)


def _accounted_wall_s(res: Path) -> float:
    """The README's 'where the time went' query, summed."""
    return _q(res, """select sum(wall_s) from (
        select wall_s from stages where not cached union all select wall_s from shards where not cached)""")[0][0]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_a_finite_space_of_n_points_in_n_trials_visits_each_once(tmp_path, sampler):
    res = tmp_path / "r"
    out = run_cli("platform.sweep", f"paths.results={res}", f"sweep.sampler={sampler}", "sweep.n_trials=8",
                  "sweep.parallel=2", "work.iterations=1", GRID_4x2, TWO_OBJECTIVES,
                  env=TOY_ENV, check=True)
    assert "8/8 finished" in out.stderr
    assert _distinct_complete(res) == (8, 8, 8)
    assert _q(res, "select count(*) from trials where duplicate_of is not null or cache_hit") == [(0,)]
    # the objectives' names label the study's values (Optuna's plots, the dashboard)
    assert _q(res, "select metric_names from studies") == [(["accuracy", "train_flops"],)]
    journal = res / "optuna" / "toy.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert optuna.load_study(study_name="toy", storage=storage).metric_names == ["accuracy", "train_flops"]


def test_a_driver_killed_in_its_first_trials_and_rerun_ends_with_n_distinct_points(tmp_path):
    res = tmp_path / "r"
    args = [f"paths.results={res}", "sweep.sampler=nsga2", "sweep.n_trials=4", "sweep.parallel=2",
            "work.sleep_s=0.3", "work.shards=2", "work.iterations=1",
            "sweep.search_space={work.x: {type: categorical, choices: [0.1, 0.3, 0.5, 0.7]}}"]
    env = {**os.environ, **TOY_ENV, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "platform.sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(c["stage"] == "train" for c in _calls(res)):
        time.sleep(0.05)  # until a trial is well into its stages
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run_cli("platform.sweep", *args, env=TOY_ENV, check=True)
    assert "interrupted by an earlier driver" in out.stdout + out.stderr
    assert _distinct_complete(res) == (4, 4, 4)
    # a re-enqueued interrupted trial kept its params (and is no duplicate)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(res / "optuna" / "toy.journal")))
    trials = optuna.load_study(study_name="toy", storage=storage).trials
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert retries, "the kill left no trial to retry"
    for t in retries:
        assert t.params == trials[t.user_attrs["retry_of"]].params and "duplicate_of" not in t.user_attrs
    # each stage's compute is counted once, in the run that computed it, resumed or not
    assert _accounted_wall_s(res) == pytest.approx(_marker_wall_s(res), rel=0.05)


def test_a_repeated_point_is_recorded_and_leaves_the_original_runs_stages_untouched(tmp_path):
    res = tmp_path / "r"
    grid = "sweep.search_space={work.x: {type: categorical, choices: [0.2, 0.8]}}"
    common = [f"paths.results={res}", "sweep.sampler=random", "sweep.parallel=1", "work.iterations=1", grid]
    run_cli("platform.sweep", *common, "sweep.n_trials=2", env=TOY_ENV, check=True)
    stages_before = _q(res, "select * from stages order by run_id, cache_key")
    calls = len(_calls(res))
    out = run_cli("platform.sweep", *common, "sweep.n_trials=3", env=TOY_ENV, check=True)  # both points visited
    assert "repeats the params of trial" in out.stdout
    assert len(_calls(res)) == calls, "the repeat computed something"
    (number, original, run_id, hit), = _q(res, "select number, duplicate_of, run_id, cache_hit from trials "
                                               "where duplicate_of is not null")
    assert number == 2 and hit is True
    assert _q(res, "select run_id from trials where number = ?", [original]) == [(run_id,)]
    assert _q(res, "select count(*) from trials where cache_hit") == [(1,)]
    # the original run still shows what it computed: same rows, real wall times, cached = false
    assert _q(res, "select * from stages order by run_id, cache_key") == stages_before
    assert _q(res, "select trial from runs where run_id = ?", [run_id]) == [(original,)]
    assert _accounted_wall_s(res) == pytest.approx(_marker_wall_s(res), rel=0.05)
    run_cli("platform.ingest", "--results", str(res), env=TOY_ENV, check=True)  # a full re-ingest: the same
    assert _q(res, "select * from stages order by run_id, cache_key") == stages_before


def _sweep_cfg(**kw) -> SweepConfig:
    space = {"a": ParamSpec(type="categorical", choices=[1, 2, 3]), "b": ParamSpec(type="int", low=0, high=1)}
    return SweepConfig(search_space=space, **kw)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_the_sampler_proposes_every_point_before_any_repeat_and_keeps_enqueued_params(sampler):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = _sweep_cfg(sampler=sampler, parallel=1)
    study = optuna.create_study(sampler=build_sampler(cfg))
    assert isinstance(study.sampler, UnvisitedSampler)

    def draw() -> optuna.Trial:
        t = study.ask()
        t.suggest_categorical("a", [1, 2, 3])
        t.suggest_int("b", 0, 1)
        return t

    running = draw()  # a trial in flight counts as visited
    for _ in range(5):
        t = draw()
        study.tell(t, float(t.params["a"] + t.params["b"]))
    study.tell(running, 0.0)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6
    study.enqueue_trial({"a": 1, "b": 0})  # a retry keeps its (visited) params
    assert draw().params == {"a": 1, "b": 0}


def test_only_finite_spaces_are_deduplicated():
    assert isinstance(build_sampler(_sweep_cfg(sampler="tpe")), UnvisitedSampler)
    grid = SweepConfig(sampler="grid", search_space={"a": ParamSpec(type="categorical", choices=[1, 2])})
    assert not isinstance(build_sampler(grid), UnvisitedSampler)  # GridSampler visits each point once itself
    floats = SweepConfig(sampler="tpe", search_space={"x": ParamSpec(type="float", low=0.0, high=1.0)})
    assert not isinstance(build_sampler(floats), UnvisitedSampler)


def test_open_study_names_the_metrics_also_of_a_study_created_without(tmp_path):
    cfg = SweepConfig(objectives=[ObjectiveSpec("accuracy", "maximize"), ObjectiveSpec("estep_flops", "minimize")],
                      sampler="random")
    journal = tmp_path / "optuna" / "s.journal"
    journal.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])  # an older study
    assert open_study(cfg, tmp_path, "s").metric_names == ["accuracy", "estep_flops"]
    assert open_study(cfg, tmp_path, "new").metric_names == ["accuracy", "estep_flops"]
