"""The one place where the generic platform meets the science it runs.

``APP`` names a module that provides ``register_configs()``, ``RULES`` (validation rules over the
composed config), ``run_kind(cfg)`` and ``build_plan(cfg) -> platform.plan.Plan``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

APP = "experiments.app"


def load_app() -> ModuleType:
    """The science module; ``PLATFORM_APP`` names another (the platform's own tests use a toy one)."""
    app = importlib.import_module(os.environ.get("PLATFORM_APP", APP))
    app.register_configs()
    return app
