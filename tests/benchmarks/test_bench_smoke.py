"""The benchmark's smoke run (tiny sizes) is a test: every section runs and the report has it all.

No timing is asserted (a shared 2-core machine); what is asserted is the report's structure, the
numbers being finite and positive where they are rates, and the helpers' arithmetic.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import median_time
from benchmarks.bench_scaling import loglog_slope
from benchmarks.report import markdown_table
from benchmarks.run import SECTIONS, merge_vllm, report_stem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "latest.json").read_text()), (out / "latest.md").read_text()


def test_report_has_meta_and_every_section(smoke_report):
    out, rep, md = smoke_report
    meta = rep["meta"]
    assert meta["smoke"] is True and meta["failed"] == []
    assert meta["git"]["commit"] and len(meta["git"]["commit"]) == 40
    assert meta["versions"]["torch"].startswith("2.") and meta["versions"]["duckdb"]
    assert meta["machine"]["cpu_count"] >= 1 and len(meta["load_average_start"]) == 3
    assert list(rep["sections"]) == list(SECTIONS)
    for key, sec in rep["sections"].items():
        assert sec["title"] and f"(`{key}`)" in md, key
    assert any(out.glob("2*.json")), "a timestamped copy is kept beside latest.json"
    assert (out / "scaling.html").read_text().count("plotly") > 0


def test_estep_rows_cover_every_k_and_both_backends(smoke_report):
    _, rep, md = smoke_report
    rows = rep["sections"]["estep"]["tables"]["sampling"]
    emb = {(r["backend"], r["k"]) for r in rows if r["model"] == "embedded"}
    assert emb >= {(b, k) for b in ("naive_generate", "hf_batched") for k in (1, 4, 8)}
    for r in rows:
        # thoughts run to the cap: the token count is prompts x K x max_tokens exactly
        assert r["tokens"] == r["prompts"] * r["k"] * r["max_tokens"]
        assert r["tokens_per_s"] > 0 and math.isfinite(r["tokens_per_s"])
    naive = {r["k"]: r["tokens_per_s"] for r in rows if r["backend"] == "naive_generate"}
    for r in rows:
        if r["backend"] == "hf_batched":
            assert r["ratio_to_naive"] == pytest.approx(r["tokens_per_s"] / naive[r["k"]])
    assert {r["backend"] for r in rep["sections"]["estep"]["tables"]["scoring"]} >= {"naive_forward", "hf_batched"}
    assert any("vLLM" in n for n in rep["sections"]["estep"]["notes"]), "the vLLM column says whether it ran"
    assert "## Summary" in md and "E-step sampling hf_batched / naive generate, embedded, K=8" in md


def test_other_sections_hold_their_measurements(smoke_report):
    _, rep, _ = smoke_report
    s = rep["sections"]
    m = s["mstep"]["tables"]["mstep"][0]
    assert m["achieved_flops_per_s"] == pytest.approx(6 * m["params"] * m["tokens_per_s"])
    assert 0 < m["fraction_of_peak"] < 1
    (paper,) = s["mstep"]["tables"]["paper_model"]  # the paper's model shape, shrunk on CPU; full size on a GPU
    assert paper["mfu"] == pytest.approx(6 * paper["params"] * paper["tokens_per_s_steady"] / paper["peak_flops_per_s"])
    assert 0 < paper["mfu"] < 1
    per_stage = {r["launcher"]: r for r in s["orchestration"]["tables"]["per_stage"]}
    assert set(per_stage) >= {"debug", "local"}
    for r in per_stage.values():
        assert r["total_s"] == pytest.approx(r["stage_wall_s"] + r["overhead_s"])
        assert r["stage_wall_s"] >= r["stage_sleep_s"]
    sweep = s["orchestration"]["tables"]["sweep"][0]
    assert sweep["complete"] == sweep["trials"] == 2
    ingest = s["store"]["tables"]["ingest"][0]
    assert ingest["rows"] == 20_000
    assert {q["query"] for q in s["store"]["tables"]["queries"]} == {
        "log_w_by_iteration", "ess_by_iteration", "ess_from_estep_metrics", "thought_length_by_iteration",
        "selected_index_by_iteration"}
    slopes = {(r["stage"], r["knob"]) for r in s["scaling"]["tables"]["slopes"]}
    assert slopes == {("estep", "k"), ("estep", "max_tokens"), ("estep", "prompts"), ("mstep", "corpus_windows")}


def test_loglog_slope_recovers_known_exponents():
    xs = [1, 2, 4, 8]
    assert loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [0.5 * x**2 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope(xs, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([0, 1], [1, 2])
    with pytest.raises(ValueError, match=">= 2 paired points"):
        loglog_slope([1], [1])


def test_median_time_is_the_median_of_the_timed_runs():
    calls = []
    med, times = median_time(lambda: calls.append(1), repeat=5, warmup=2)
    assert len(calls) == 7 and len(times) == 5 and med == sorted(times)[2]
    with pytest.raises(ValueError, match="repeat"):
        median_time(lambda: None, repeat=0)


def test_markdown_table_unions_columns_and_escapes_pipes():
    md = markdown_table([{"a": 1, "b": "x|y"}, {"a": 2.5, "c": True}])
    lines = md.strip().splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| 1 | x\\|y | - |" and lines[3] == "| 2.500 | - | yes |"


def test_merge_vllm_computes_ratio_against_the_same_model_and_k():
    sec = {"tables": {"sampling": [
        {"model": "embedded", "backend": "naive_generate", "k": 4, "tokens_per_s": 100.0},
        {"model": "embedded", "backend": "naive_generate", "k": 8, "tokens_per_s": 200.0}],
        "scoring": [{"model": "embedded", "backend": "naive_forward", "tokens_per_s": 50.0}]}, "notes": []}
    merge_vllm(sec, {"sampling": [{"model": "embedded", "backend": "vllm", "k": 8, "tokens_per_s": 1000.0},
                                  {"model": "smollm2_135m", "backend": "vllm", "k": 8, "tokens_per_s": 9.0}],
                     "scoring": [{"model": "embedded", "backend": "vllm", "tokens_per_s": 500.0}],
                     "versions": {"vllm": "0.x"}, "notes": ["n=K"]})
    vllm = [r for r in sec["tables"]["sampling"] if r["backend"] == "vllm"]
    assert vllm[0]["ratio_to_naive"] == pytest.approx(5.0) and vllm[1]["ratio_to_naive"] is None
    assert sec["tables"]["scoring"][-1]["ratio_to_naive"] == pytest.approx(10.0)
    assert sec["versions"] == {"vllm": "0.x"} and sec["notes"] == ["n=K"]


def test_scale_section_compares_the_view_with_the_copy(smoke_report):
    _, rep, md = smoke_report
    t = rep["sections"]["scale"]["tables"]
    (reg,) = t["register"]
    assert (reg["rows"], reg["files"]) == (20_000, 10) and reg["register_s"] > 0
    queries = {q["query"]: q for q in t["queries"]}
    assert {"doc_ids (thought browser)", "doc_samples (thought browser)"} <= set(queries) and len(queries) == 8
    assert all(q["view_s"] > 0 for q in queries.values())
    assert [name for name, q in queries.items() if q["copy_s"] is None] == [
        "estep_runs (both pages: the file list, ESTEP_RUNS_LISTED_SQL)"]  # today's store has no list
    # only the browser's document query reads the thoughts; the aggregates never decode them
    assert {name for name, q in queries.items() if q["reads_text"] == "yes"} == {"doc_samples (thought browser)"}
    (disk,) = t["disk"]
    assert disk["copy_store_mb"] > disk["view_store_mb"] and disk["parquet_mb"] > 0
    assert "Register an iteration of 10 E-step shards" in md


def test_a_scale_run_alone_keeps_its_own_report():
    assert report_stem(["scale"], smoke=False, out=None) == "scale"
    assert report_stem(["scale"], smoke=True, out=None) == "latest"  # written to results/smoke/
    assert report_stem(["store"], smoke=False, out=None) == "latest"
    assert report_stem(["scale", "store"], smoke=False, out=None) == "latest"
