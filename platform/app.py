"""The one place where the generic platform meets the science it runs.

``APP`` names a module that provides ``register_configs()``, ``RULES`` (validation rules over the
composed config), ``run_kind(cfg)`` and ``build_plan(cfg) -> platform.plan.Plan``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

APP = "experiments.app"


def load_app() -> ModuleType:
    app = importlib.import_module(APP)
    app.register_configs()
    return app
