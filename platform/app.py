"""The one place where the generic platform meets the science it runs: the :class:`App` object.

An app module (``experiments.app``; ``$PLATFORM_APP`` names another, such as the tests' toy app)
declares ``APP = App(...)``: its config schema and how to register it with Hydra, the validation
rules of its own config sections, the plan of a config, the errors its stages raise on purpose and
which totals bucket each stage's FLOPs go into. The platform reads the science only through it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from platform.validate import Rule

DEFAULT_APP = "experiments.app"


@dataclass(frozen=True)
class App:
    """What the platform needs from a science (in the spirit of torchtitan's ``TrainSpec``).

    ``schema``: the root Config dataclass (its ``sweep``, ``launcher`` and ``paths`` sections are
    ``platform.config``'s). ``register_configs()``: stores ``schema`` in Hydra's ConfigStore as
    ``config_schema``. ``rules``: validation rules over the composed config for the app's own
    sections; the platform's (``platform.rules``) run first, always. ``build_plan(cfg)``: the
    stage graph of a typed config. ``known_errors``: exception names (as a traceback's last line
    writes them) that stages raise on purpose, reported in one line (``platform.failures``).
    ``compute_buckets``: stage name -> the run total its FLOPs add to (``{"mstep": "train_flops"}``);
    ``total_buckets``: the buckets whose sum is the run's ``total_flops``. ``summary_metrics``:
    (stage, metric) pairs the end-of-sweep summary prints by iteration for every trial, beside
    the objective (e.g. how often the E-step's selected thought was correct).
    """

    name: str
    schema: type
    register_configs: Callable[[], None]
    build_plan: Callable[[Any], Any]  # typed config -> platform.plan.Plan
    rules: tuple[Rule, ...] = ()
    known_errors: tuple[str, ...] = ()
    compute_buckets: dict[str, str] = field(default_factory=dict)
    total_buckets: tuple[str, ...] = ()
    summary_metrics: tuple[tuple[str, str], ...] = ()


def load_app() -> App:
    """The app ``$PLATFORM_APP`` (default ``experiments.app``) declares as ``APP``, its configs registered."""
    module_name = os.environ.get("PLATFORM_APP", DEFAULT_APP)
    app = getattr(importlib.import_module(module_name), "APP", None)
    if not isinstance(app, App):
        raise TypeError(f"{module_name}.APP: must be a platform.app.App, got {type(app).__name__}")
    app.register_configs()
    return app
