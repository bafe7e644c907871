"""Our package is named `platform`: the stdlib API must keep working everywhere."""

import json
import subprocess
import sys
from pathlib import Path

import platform

ROOT = Path(__file__).resolve().parents[2]
STDLIB_CALLS = "import json, platform; print(json.dumps([platform.system(), platform.python_version(), platform.machine(), list(platform.uname())]))"


def test_package_is_ours_and_stdlib_api_matches_a_clean_interpreter():
    assert hasattr(platform, "__path__") and Path(platform.__path__[0]) == ROOT / "platform"
    clean = subprocess.run([sys.executable, "-I", "-c", STDLIB_CALLS], cwd="/", capture_output=True, text=True, check=True)
    expected = json.loads(clean.stdout)
    assert [platform.system(), platform.python_version(), platform.machine(), list(platform.uname())] == expected


def test_libraries_import_beside_our_platform_package():
    code = ("import platform, sys; assert platform.__path__; "
            "import torch, uuid, pandas, duckdb, optuna, hydra, submitit, streamlit, transformers; "
            "uuid.uuid4(); print(platform.system(), torch.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == platform.system()


def test_platform_sweep_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "platform.sweep", "experiment=em_compute", "--cfg", "job"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "num_samples" in out.stdout


def test_no_submodule_shadows_a_stdlib_platform_attribute():
    import sysconfig

    ns: dict = {}
    stdlib = Path(sysconfig.get_paths()["stdlib"]) / "platform.py"
    exec(compile(stdlib.read_text(), str(stdlib), "exec"), ns)
    ours = {p.stem for p in (ROOT / "platform").glob("*.py")} | {p.name for p in (ROOT / "platform").iterdir() if p.is_dir()}
    clash = sorted(n for n in ours - {"__init__", "__pycache__"} if n in ns)
    assert clash == [], f"submodules shadow stdlib platform attributes: {clash}"
