"""The science app is one declared ``App``; the platform validates its own sections itself."""

from pathlib import Path

import pytest

from platform.app import App, load_app
from platform.validate import ConfigError


def test_load_app_returns_the_declared_app(toy_env):
    app = load_app()
    assert isinstance(app, App) and app.name == "toy"
    assert app.compute_buckets["mstep"] == "train_flops" and "warm_start" not in app.compute_buckets


def test_the_real_app_declares_its_buckets(monkeypatch):
    monkeypatch.delenv("PLATFORM_APP", raising=False)
    app = load_app()
    assert app.compute_buckets == {"estep": "estep_flops", "mstep": "train_flops", "eval": "eval_flops"}
    assert app.total_buckets == ("estep_flops", "train_flops")
    assert "experiments.corpus.CorpusError" in app.known_errors


def test_a_module_without_an_app_is_refused(monkeypatch):
    monkeypatch.setenv("PLATFORM_APP", "platform.config")
    with pytest.raises(TypeError, match="platform.config.APP: must be a platform.app.App"):
        load_app()


@pytest.mark.parametrize("override, message", [
    ("sweep.n_trials=0", "sweep.n_trials: must be in [1, inf], got 0"),
    ("sweep.parallel=0", "sweep.parallel: must be in [1, inf], got 0"),
    ("launcher.max_parallel_jobs=0", "launcher.max_parallel_jobs: must be in [1, inf], got 0"),
    ("launcher.max_num_timeout=-1", "launcher.max_num_timeout: must be in [0, inf], got -1"),
    ("launcher.name=pbs", "launcher.name: must be one of debug, local, slurm; got 'pbs'"),
    ("sweep.sampler=cmaes", "sweep.sampler: must be one of tpe, random, grid, nsga2; got 'cmaes'"),
    ("sweep.pruner=hyperband", "sweep.pruner: must be one of median, none; got 'hyperband'"),
    ("sweep.objectives=[{metric: accuracy, direction: up}]",
     "sweep.objectives.0.direction: must be one of maximize, minimize; got 'up'"),
    ("sweep.search_space={work.nope: {type: categorical, choices: [1]}}",
     "sweep.search_space.work.nope: names no config field"),
    ("sweep.search_space={work.x: {type: float, low: 1.0, high: 0.0}}",
     "sweep.search_space.work.x: needs low <= high, got low=1.0 high=0.0"),
])
def test_platform_sections_are_checked_for_any_app(toy_env, override, message):
    """The toy app has no rule of its own about sweep, launcher or search space."""
    from platform.compose import compose_config

    with pytest.raises(ConfigError) as info:
        compose_config([override], rules=load_app().rules, conf_dir=Path(toy_env["PLATFORM_CONF_DIR"]))
    assert info.value.problems == [message]
