"""A real, small run of the platform: the fixture that integration and dashboard tests read.

It runs the actual CLI (`platform.sweep experiment=em_compute`, whose references are the raw and
synthetic experiments) on the embedded default shrunk to seconds: the same stages, samplers,
trainer and store as `make sweep`, only fewer documents, steps and tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.num_train_docs=24", "data.num_eval_docs=12", "data.warm_start_fraction=0.5",
    "mstep.epochs=2", "em.warm_start_epochs=2", "em.epochs=2", "mstep.batch_size=8", "mstep.warmup_steps=2",
    "mstep.num_threads=1",
    "data.window=128", "estep.max_thought_tokens=12", "estep.num_shards=2",
    "eval.max_thought_tokens=12", "eval.max_new_tokens=4", "eval.elbo_docs=4",
    "sampler.batch_size=64", "sweep.live_interval_s=1",
]


def _cli(module: str, *args: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PLATFORM_APP", None)
    env.pop("PLATFORM_CONF_DIR", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def build_real_results(results: Path, launcher: str = "local") -> Path:
    """Results folder with an em_compute study (2 trials, K in {1, 4}, 1 EM iteration) and its
    references, run by the same sweep: a synthetic-thought run, raw-token-match and raw-FLOP-match."""
    common = [f"paths.results={results}", f"launcher={launcher}", *TINY]
    _cli("platform.sweep", "experiment=em_compute", "sweep.n_trials=2", "sweep.parallel=2", "em.iterations=1", *common)
    return results
