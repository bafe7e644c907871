"""The orchestrator-at-scale section at tiny sizes (``--smoke --only scale_orchestrator``): its own
report, its rows and their arithmetic. No timing is asserted (a shared 2-core machine)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_orchestrator_scale import (
    Size, linear_fit, max_overlap, merge_repeats, plans, slope_rows)
from benchmarks.run import report_stem

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("submit_ms", "poll_ms", "ingest_ms", "other_ms")


@pytest.fixture(scope="module")
def scale_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_scale")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--only", "scale_orchestrator",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (out / "latest.json").exists(), "an opt-in section run alone leaves latest.* to the full run"
    return json.loads((out / "orchestrator_scale.json").read_text()), (out / "orchestrator_scale.md").read_text()


def test_runs_count_every_job_and_stay_within_the_cap(scale_report):
    rep, md = scale_report
    assert rep["meta"]["sections_run"] == ["scale_orchestrator"] and rep["meta"]["failed"] == []
    sec = rep["sections"]["scale_orchestrator"]
    assert "## Orchestrator at scale (`scale_orchestrator`)" in md
    runs = sec["tables"]["runs"]
    assert {(r["launcher"], r["axis"]) for r in runs} == {("debug", "trials"), ("debug", "iterations"), ("local", "trials")}
    for r in runs:
        # the toy plan: prepare once (shared by the trials), then per iteration the shards, merge, M-step, eval
        assert r["jobs"] == r["trials"] * r["iterations"] * (r["shards"] + 3) + 1
        assert r["array_tasks"] == r["trials"] * r["iterations"] * r["shards"]
        assert r["trials_complete"] == r["trials"]
        assert r["cap_honoured"] is True and 1 <= r["max_concurrency"] <= r["cap"]
        assert r["driver_cpu_s"] > 0 and r["peak_rss_mb"] >= r["rss_start_mb"] > 0
    assert sec["summary"]["caps_honoured"] is True


def test_cost_parts_add_up_to_the_driver(scale_report):
    rep, _ = scale_report
    for c in rep["sections"]["scale_orchestrator"]["tables"]["cost_per_job"]:
        assert all(math.isfinite(c[p]) for p in PARTS) and c["driver_ms"] > 0
        extra = c["children_ms"] if c["launcher"] == "slurm" else 0.0
        assert sum(c[p] for p in PARTS) + extra == pytest.approx(c["driver_ms"])
        assert (c["job_body_ms"] > 0) == (c["launcher"] == "debug"), "only debug runs job bodies in the driver"
        assert (c["poll_checks_per_job"] > 0) == (c["launcher"] != "debug")
        assert c["ingest_uncoalesced_ms"] > 0 and c["stage_round_ms"] > 0  # a round per stage, after the sweep


def test_slopes_target_and_projection_rows(scale_report):
    rep, md = scale_report
    tables = rep["sections"]["scale_orchestrator"]["tables"]
    measures = {"driver", "submit", "poll", "ingest", "other", "peak memory"}
    for key in (("debug", "trials"), ("debug", "iterations")):
        assert {s["measure"] for s in tables["slopes"] if (s["launcher"], s["axis"]) == key} == measures
    assert all(0.0 <= s["r2"] <= 1.0 + 1e-9 for s in tables["slopes"])
    assert {(t["launcher"], t["axis"]) for t in tables["target"]} == {("debug", "trials"), ("debug", "iterations")}
    for t in tables["target"]:
        assert t["target_met"] == (t["under_1pct"] and t["linear_or_better"])
        assert t["share_of_600s_shard_pct"] == pytest.approx(
            100 * max(t["driver_ms_per_job"], t["marginal_ms_per_job"]) / 1e3 / 600)
    proj = [p for p in tables["paper_projection"] if "ms_per_shard_job" in p]
    assert proj[-1]["part"] == "total"
    assert proj[-1]["ms_per_shard_job"] == pytest.approx(sum(p["ms_per_shard_job"] for p in proj[:-1]))
    ingest = next(p for p in proj if p["part"] == "ingest, one round per finished stage")
    deep = max((c for c in tables["cost_per_job"] if c["axis"] == "iterations"), key=lambda c: c["iterations"])
    assert ingest["ms_per_shard_job"] == pytest.approx(max(deep["ingest_ms"], deep["ingest_uncoalesced_ms"]))
    assert sum(h["measure"].startswith("Driver CPU per job") for h in rep["headline"]) == len(tables["target"])


def test_full_plan_reaches_4800_array_tasks_on_debug():
    debug = [s for s in plans(smoke=False)["debug"] if s.axis == "trials"]
    assert [s.array_tasks for s in debug] == [600, 1800, 4800]
    assert all(s.parallel == s.trials for s in debug), "every trial of the sweep in flight"
    assert Size("slurm", 2, 3, 10, 2, 1, 0.2).overrides(Path("/r"))[2] == "launcher.max_parallel_jobs=1"


def test_helpers():
    assert max_overlap([(0, 2), (1, 3), (2, 4)]) == 2  # one ending as another starts do not overlap
    assert max_overlap([]) == 0
    slope, intercept, r2 = linear_fit([1, 2, 4], [3.0, 5.0, 9.0])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    assert merge_repeats([{"a": 1, "b": 2.0, "ok": True, "s": "x"}, {"a": 3, "b": 4.0, "ok": False, "s": "y"}]) == \
        {"a": 2, "b": 3.0, "ok": False, "s": "x"}
    assert report_stem(["scale_orchestrator"], False, None) == "orchestrator_scale"
    assert report_stem(["scale_orchestrator", "store"], False, None) == report_stem(["store"], False, None) == "latest"
    runs = [{"launcher": "debug", "axis": "trials", "jobs": j, "peak_rss_mb": 100.0 + j / 1024} for j in (10, 20)]
    costs = [{"launcher": "debug", "axis": "trials", "jobs": j, **{p: 2.0 for p in PARTS}, "driver_ms": 8.0}
             for j in (10, 20)]
    fits = {s["measure"]: s for s in slope_rows(runs, costs)}
    assert fits["driver"]["marginal_per_job"] == pytest.approx(8.0) and fits["driver"]["growth"] == "linear or better"
    assert fits["peak memory"]["marginal_per_job"] == pytest.approx(1.0)  # KB per job
