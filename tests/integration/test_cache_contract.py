"""A rerun that changes only performance settings is a cache hit for every stage (docs/design.md "Cache keys")."""

import json

from platform.rundir import read_ledger
from tests.realrun import TINY, _cli


def _completed(run_dir):
    return [e for e in read_ledger(run_dir) if e["status"] == "completed"]


def test_a_performance_only_rerun_computes_nothing(tmp_path):
    results = tmp_path / "r"
    common = [f"paths.results={results}", "launcher=local", *TINY, "em.iterations=2", "estep.num_shards=2"]
    _cli("platform.run", "experiment=bootstrap", *common)
    (run_dir,) = (results / "runs").iterdir()
    first = _completed(run_dir)
    assert first and not any(e["cached"] for e in first)

    _cli("platform.run", "experiment=bootstrap", *common, "sampler.batch_size=16", "mstep.num_threads=2",
         "mstep.log_every=50", "mstep.checkpoint_every=3", "estep.num_shards=3", "estep.group_docs=2")
    assert [p.name for p in (results / "runs").iterdir()] == [run_dir.name]  # the same run
    second = _completed(run_dir)[len(first):]
    assert [(e["stage"], e["iteration"]) for e in second] == [(e["stage"], e["iteration"]) for e in first]
    assert all(e["cached"] for e in second), json.dumps(second, indent=1)
