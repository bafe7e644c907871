"""Run the benchmarks and write the report: ``python -m benchmarks.run [--smoke] [--only NAME ...] [--out DIR]``.

Sections: estep (sampling + scoring), mstep, orchestration, store, scaling, dashboard, and scale
(the results store with 10M E-step rows in 200 shards: GBs of files and minutes, so only on request,
``--only scale``, which writes ``benchmarks/results/scale.{json,md}`` and leaves ``latest`` alone).
``--smoke`` runs every section, scale included, at tiny sizes (about a minute; the test suite runs
it) and writes to ``benchmarks/results/smoke/`` unless ``--out`` says otherwise. Opt-in, run only
when ``--only`` names it: scale_orchestrator (the sweep driver at up to 4,800 array tasks, about 15
minutes here; ``benchmarks/bench_orchestrator_scale.py``), which writes its own report,
``orchestrator_scale.{json,md}``. A section that fails is recorded with
its error and the others still run; the exit status is 1 when any section failed.

Optional parts, included when present:
- vLLM (column (c) of the E-step tables): ``benchmarks/bench_sampler.py`` run with
  ``.venv-vllm/bin/python -m benchmarks.bench_sampler --json PATH [--smoke]`` (vllm is importable only
  in that venv). It gets the embedded model's folder and the workload through environment variables
  (BENCH_EMBEDDED_MODEL_DIR, BENCH_SMOLLM2_DIR, BENCH_NUM_PROMPTS, BENCH_MAX_TOKENS, BENCH_KS) and
  writes ``{"sampling": [rows], "scoring": [rows], "versions": {...}, "notes": [...]}`` with rows
  carrying ``model``, ``backend``, ``k`` (sampling), ``tokens_per_s``.
- the dashboard page timing: ``benchmarks/bench_dashboard.py`` as a subprocess (its printed lines).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import load_average, section  # noqa: E402

SECTIONS = ("estep", "mstep", "orchestration", "store", "scaling", "dashboard", "scale")
DEFAULT_SECTIONS = SECTIONS[:-1]  # a full run without --only: scale runs only when asked for
OWN_REPORT = {"scale": "scale"}  # a section run alone that keeps its own report (benchmarks/results/scale.*)
# opt-in sections (not in a plain run nor --smoke) and the report each writes when run alone
EXTRA_SECTIONS = {"scale_orchestrator": "orchestrator_scale"}
OWN_REPORT.update(EXTRA_SECTIONS)
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def _vllm_rows(smoke: bool, embedded: tuple, log: Callable[[str], None]) -> tuple[Optional[dict], str]:
    """The vLLM backend's rows from bench_sampler.py in .venv-vllm, or None and why not."""
    script = ROOT / "benchmarks" / "bench_sampler.py"
    if not script.exists():
        return None, "vLLM column skipped: benchmarks/bench_sampler.py is not there"
    if not VLLM_PYTHON.exists():
        return None, f"vLLM column skipped: {VLLM_PYTHON.relative_to(ROOT)} not found (make setup-vllm)"
    from benchmarks.bench_estep import KS, SMOLLM2_DIR
    from experiments.modeling import save_model

    model, tok, _ = embedded
    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        save_model(model, tok, Path(tmp) / "model")
        out = Path(tmp) / "vllm.json"
        env = {**os.environ, "BENCH_EMBEDDED_MODEL_DIR": str(Path(tmp) / "model"), "BENCH_SMOLLM2_DIR": str(SMOLLM2_DIR),
               "BENCH_NUM_PROMPTS": "2" if smoke else "16", "BENCH_MAX_TOKENS": "4" if smoke else "32",
               "BENCH_KS": ",".join(map(str, KS)), "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [str(VLLM_PYTHON), "-m", "benchmarks.bench_sampler", "--json", str(out), *(["--smoke"] if smoke else [])]
        log("  vllm: " + " ".join(cmd[1:]))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240 if smoke else 900)
        except subprocess.TimeoutExpired:
            return None, "vLLM column skipped: bench_sampler.py timed out"
        if proc.returncode != 0 or not out.exists():
            return None, f"vLLM column skipped: bench_sampler.py exited {proc.returncode}: {proc.stderr[-600:]}"
        return json.loads(out.read_text()), "vLLM column from benchmarks/bench_sampler.py in .venv-vllm"


def merge_vllm(sec: dict[str, Any], vllm: dict[str, Any]) -> None:
    """Add vLLM rows to the E-step tables with their ratio to the naive row of the same model (and K)."""
    import torch

    for table, naive_name in (("sampling", "naive_generate"), ("scoring", "naive_forward")):
        rows = sec["tables"].setdefault(table, [])
        for row in vllm.get(table, []):
            # the naive row measured at the threads the vLLM subprocess got (OMP_NUM_THREADS = the bench's)
            naive = [r for r in rows if r["backend"] == naive_name and r.get("model") == row.get("model")
                     and (table == "scoring" or r.get("k") == row.get("k"))
                     and r.get("threads", torch.get_num_threads()) == torch.get_num_threads()]
            ratio = row["tokens_per_s"] / naive[0]["tokens_per_s"] if naive else None
            rows.append({**row, "backend": row.get("backend", "vllm"), "ratio_to_naive": ratio})
    if vllm.get("fan_out"):  # vLLM's n=K against K repeated prompts: the per-run lists stay in the JSON only
        sec["tables"]["vllm_fan_out"] = [{k: v for k, v in r.items() if k != "runs"} for r in vllm["fan_out"]]
    sec["notes"] += list(vllm.get("notes", []))
    sec.setdefault("versions", {}).update(vllm.get("versions", {}))


def run_dashboard(smoke: bool) -> dict[str, Any]:
    script = ROOT / "benchmarks" / "bench_dashboard.py"
    if not script.exists():
        return section("Dashboard page", notes=["skipped: benchmarks/bench_dashboard.py is not there"])
    args = ["--runs", "30", "--repeat", "1"] if smoke else ["--runs", "1000", "--repeat", "3"]
    proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300 if smoke else 600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_dashboard.py exited {proc.returncode}: {proc.stderr[-1500:]}")
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    verdict = next((x for x in reversed(lines) if x.startswith(("OK", "OVER"))), None)
    return section("Dashboard page (1,000 runs)" if not smoke else "Dashboard page", {"output": [{"line": x} for x in lines]},
                   {"verdict": verdict}, [f"benchmarks/bench_dashboard.py {' '.join(args)} (target 2 s per page)"])


def _scale_headline(scale: dict[str, list], add: Callable[..., None]) -> None:
    """The scale section's rows: registering, each dashboard query, disk."""
    for r in scale.get("register", []):
        add(f"Register an iteration of {r['files']} E-step shards ({r['rows']:,} rows, no copy)",
            f"{r['register_s']:.2f} s / {r['register_second_iteration_s']:.2f} s / {r['register_tenth_iteration_s']:.2f} s "
            "(1st / 2nd / 10th iteration)",
            f"<= {r['target_s']:.0f} s", r["target_met"])
    for r in scale.get("queries", []):
        copy = f" (copy in DuckDB: {r['copy_s']:.2f} s)" if r.get("copy_s") is not None else ""
        target = "" if r["target_s"] is None else f"<= {r['target_s']:.0f} s"  # None: a reference, not a page's query
        add(f"{r['rows']:,} rows: {r['query']}", f"{r['view_s']:.2f} s{copy}, text read: {r['reads_text']}",
            target, r["target_met"])
    for r in scale.get("disk", []):
        add(f"{r['rows']:,} rows: disk (Parquet / store with the view / store with the copy)",
            f"{r['parquet_mb']:,.0f} / {r['view_store_mb']:,.1f} / {r['copy_store_mb'] or 0:,.0f} MB")


def headline(sections: dict[str, dict]) -> list[dict[str, Any]]:
    """The few numbers the README shows, with their targets."""
    rows: list[dict[str, Any]] = []

    def add(what: str, value: Any, target: str = "", met: Optional[bool] = None) -> None:
        rows.append({"measure": what, "value": value, "target": target, "met": met})

    s = sections.get("estep", {})
    for r in s.get("tables", {}).get("sampling", []):
        if r["backend"] != "naive_generate":
            target = ">= 5x naive" if r["backend"] == "hf_batched" and r["model"] == "embedded" else ""
            threads = f", {r['threads']} thread(s)" if r.get("threads") else ""
            add(f"E-step sampling {r['backend']} / naive generate, {r['model']}, K={r['k']}{threads}",
                f"{r['ratio_to_naive']:.1f}x ({r['tokens_per_s']:,.0f} tok/s)" if r.get("ratio_to_naive") else "-",
                target, r["ratio_to_naive"] >= 5 if target and r.get("ratio_to_naive") else None)
    for r in s.get("tables", {}).get("scoring", []):
        if r["backend"] != "naive_forward" and r.get("ratio_to_naive"):
            threads = f", {r['threads']} thread(s)" if r.get("threads") else ""
            add(f"Scoring {r['backend']} / per-sequence forward, {r['model']}{threads}",
                f"{r['ratio_to_naive']:.1f}x ({r['tokens_per_s']:,.0f} tok/s)")
    for r in sections.get("mstep", {}).get("tables", {}).get("mstep", []):
        add(f"M-step {r['model']} ({r['params'] / 1e6:.2f}M params)",
            f"{r['tokens_per_s']:,.0f} tok/s, {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
            f"{100 * r['fraction_of_peak']:.1f}% of a {r['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s matmul peak")
    for r in sections.get("mstep", {}).get("tables", {}).get("paper_model", []):
        on_gpu = r["device"] != "cpu"
        add(f"M-step MFU, {r['model']} ({r['params'] / 1e6:.0f}M params), {r['device']}",
            f"{100 * r['mfu']:.1f}% ({r['tokens_per_s_steady']:,.0f} tok/s)", ">= 40% on a GPU" if on_gpu else "",
            r["mfu"] >= 0.4 if on_gpu else None)
    orch = sections.get("orchestration", {}).get("tables", {})
    for r in orch.get("per_stage", []):
        add(f"Platform overhead per stage, {r['launcher']} launcher", f"{r['overhead_s']:.2f} s (median)",
            f"<= {r['target_s']} s", r["target_met"])
    for r in orch.get("sweep", []):
        add(f"Toy sweep, {r['trials']} trials, local launcher", f"{r['wall_s']:.0f} s ({r['wall_per_trial_s']:.2f} s/trial, "
            f"{r['stage_jobs_run']} stage jobs)")
    store = sections.get("store", {}).get("tables", {})
    for r in store.get("ingest", []):
        add(f"Ingest {r['rows']:,} E-step rows", f"{r['ingest_s']:.2f} s", f"<= {r['target_s']} s", r["target_met"])
    for r in store.get("queries", []):
        add(f"Query {r['query']} (DuckDB vs pandas read+query)",
            f"{1e3 * r['duckdb_s']:.0f} ms vs {1e3 * r['pandas_read_plus_query_s']:.0f} ms", f"<= {1e3 * r['target_s']:.0f} ms",
            r["target_met"])
    for r in sections.get("scaling", {}).get("tables", {}).get("slopes", []):
        add(f"Scaling: {r['stage']} cost vs {r['knob']} ({r['values']})", f"slope {r['slope']:.2f} (log-log)")
    _scale_headline(sections.get("scale", {}).get("tables", {}), add)
    dash = sections.get("dashboard", {}).get("summary", {})
    if dash.get("verdict"):
        add("Dashboard across-iterations page", dash["verdict"], "< 2 s")
    from benchmarks.bench_orchestrator_scale import headline_rows

    return rows + headline_rows(sections.get("scale_orchestrator", {}))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (about a minute)")
    ap.add_argument("--only", action="append", choices=(*SECTIONS, *EXTRA_SECTIONS),
                    help=f"run only this section (repeatable); {', '.join(EXTRA_SECTIONS)} run only when named")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine 2 threads ran 20-60x slower than 1, "
                         "spinning on descheduled workers; 0 keeps torch's default)")
    ap.add_argument("--out", help="report folder (default benchmarks/results, or benchmarks/results/smoke)")
    return ap.parse_args(argv)


def _embedded_model(smoke: bool, wanted: list[str]) -> Optional[tuple]:
    """The embedded model, tokenizer and documents, built once for the sections that use them."""
    if not {"estep", "mstep", "scaling"} & set(wanted):
        return None
    import torch

    from benchmarks.bench_estep import build_embedded

    torch.manual_seed(0)
    return build_embedded(60 if smoke else 200)


def _runners(smoke: bool, embedded: Optional[tuple]) -> dict[str, Callable[[], dict]]:
    """Per section, a call that runs it and returns its section."""
    def estep() -> dict:
        from benchmarks import bench_estep

        sec = bench_estep.run(smoke, embedded)
        vllm, note = _vllm_rows(smoke, embedded, _log)
        sec["notes"].append(note)
        if vllm:
            merge_vllm(sec, vllm)
        return sec

    def simple(name: str, with_model: bool) -> Callable[[], dict]:
        def go() -> dict:
            import importlib

            mod = importlib.import_module(f"benchmarks.bench_{name}")
            return mod.run(smoke, embedded) if with_model else mod.run(smoke)
        return go

    return {
        "estep": estep, "mstep": simple("mstep", True), "orchestration": simple("orchestration", False),
        "store": simple("store", False), "scaling": simple("scaling", True), "dashboard": lambda: run_dashboard(smoke),
        "scale": simple("scale", False),
        "scale_orchestrator": simple("orchestrator_scale", False),
    }


def _run_section(name: str, runner: Callable[[], dict]) -> tuple[dict, bool]:
    """One section, timed; a failure becomes a section holding its error. Returns (section, failed)."""
    _log(f"[bench] {name} ...")
    t0 = time.perf_counter()
    failed = False
    try:
        sec = runner()
    except Exception as exc:
        failed = True
        sec = section(name, notes=[f"FAILED: {type(exc).__name__}: {exc}"])
        sec["error"] = traceback.format_exc()
        _log(sec["error"])
    sec["seconds"] = time.perf_counter() - t0
    sec["load_average_after"] = load_average()
    _log(f"[bench] {name} done in {sec['seconds']:.1f} s")
    return sec, failed


def _meta(args: argparse.Namespace, wanted: list[str], sections: dict[str, dict], failed: list[str],
          t_start: float, load_start: list[float]) -> dict[str, Any]:
    """The report's meta block: when, where, with what, and how the run went."""
    import torch

    from benchmarks import report

    versions = report.library_versions()
    versions.update(sections.get("estep", {}).get("versions", {}))
    return {"generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "smoke": args.smoke,
            "sections_run": wanted, "torch_threads": torch.get_num_threads(), "failed": failed,
            "total_s": time.perf_counter() - t_start,
            "machine": report.machine_info(), "versions": versions, "git": report.git_state(),
            "load_average_start": load_start, "load_average_end": load_average()}


def report_stem(wanted: list[str], smoke: bool, out: Optional[str]) -> str:
    """``latest``, or the own report of a section run alone (``--only scale``: ``scale``) when it
    goes to benchmarks/results: the other sections' latest report stays as it is."""
    if len(wanted) != 1 or wanted[0] not in OWN_REPORT:
        return "latest"
    # an opt-in section always keeps its own report; scale only when it writes to benchmarks/results
    return OWN_REPORT[wanted[0]] if wanted[0] in EXTRA_SECTIONS or (not smoke and not out) else "latest"


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("smoke" if args.smoke else "")
    wanted = args.only or list(SECTIONS if args.smoke else DEFAULT_SECTIONS)
    stem = report_stem(wanted, args.smoke, args.out)

    import torch

    from benchmarks import report

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the vLLM subprocess

    t_start, load_start = time.perf_counter(), load_average()
    runners = _runners(args.smoke, _embedded_model(args.smoke, wanted))
    sections: dict[str, dict] = {}
    failed = []
    for name in wanted:
        sections[name], section_failed = _run_section(name, runners[name])
        if section_failed:
            failed.append(name)
    rep = {"meta": _meta(args, wanted, sections, failed, t_start, load_start), "headline": headline(sections),
           "sections": sections}
    paths = report.write_report(rep, out, stem)
    _log(f"[bench] wrote {paths['json']} and {paths['md']} in {rep['meta']['total_s']:.0f} s"
         + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
