import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY_ENV = {"PLATFORM_APP": "tests.platform.toyapp.app", "PLATFORM_CONF_DIR": str(ROOT / "tests/platform/toyapp/conf")}


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 300, check: bool = False):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def toy_env(monkeypatch):
    for k, v in TOY_ENV.items():
        monkeypatch.setenv(k, v)
    import platform.compose as compose

    monkeypatch.setattr(compose, "CONF_DIR", Path(TOY_ENV["PLATFORM_CONF_DIR"]))
    return TOY_ENV
