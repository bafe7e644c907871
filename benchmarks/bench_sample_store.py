"""The E-step sample store: tokens generated with and without it, on the embedded em_compute setting.

An em_compute sweep's trials differ in K only, so their iteration-1 E-steps all sample from the one
warm start they share (mstep[0]). This runs those E-steps one after another, K = 1, 4 and 8 (em_compute
sweeps K in {1, 4}; 8 is its widened grid), through the stages the plan builds (``run_stage``, as a
debug launcher would), first with ``estep.sample_store=false``, then, in a fresh E-step folder, with
the store on. The warm start is the em_compute one (its documents and epochs) unless told otherwise;
the E-step covers ``data.em_docs`` documents instead of all 400, which is what "reduced" means here.

    python -m benchmarks.bench_sample_store [--smoke] [--em-docs N] [--json PATH]

Reported per E-step: samples and tokens generated now and taken from the store, FLOPs computed
against the FLOPs of the result (``flops``: the same either way), wall seconds, and whether the
thoughts are those of the store-less run. Not in ``make bench``: its warm start alone takes minutes.

Measured here (2 shared cores, hf sampler, em_compute warm start, 64 E-step documents = 392 chunks,
``python -m benchmarks.bench_sample_store``): K=1 then K=4, as the em_compute sweep's two trials,
generated 17,244 tokens without the store and 13,802 with it (0.80x); K=1, 4, 8: 44,776 and 27,532
(0.61x); the same thoughts and selections in every E-step. Wall time follows less closely: K=8 after
K=4 took 12.7 s against 19.2 s from scratch, K=4 after K=1 10.7 s against 10.5 s, since on this
small model a decode step costs about the same for 3 or 4 rows per prompt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import section

KS = (1, 4, 8)
SMOKE = ["data.num_train_docs=40", "data.num_eval_docs=4", "em.warm_start_epochs=1", "estep.max_thought_tokens=8"]


def estep_stage(results: Path, k: int, store: bool, overrides: list[str]) -> Any:
    """The iteration-1 E-step stage of an em_compute trial with K = ``k``."""
    from experiments.graphs import build_plan
    from platform.cli import load

    cfg = load(["experiment=em_compute", f"paths.results={results}", f"estep.num_samples={k}",
                f"estep.sample_store={str(store).lower()}", *overrides]).cfg
    return next(s for s in build_plan(cfg).stages if s.name == "estep" and s.iteration == 1)


def ensure(stage: Any, results: Path) -> dict[str, Any]:
    """Run ``stage`` after everything it reads, each unless already complete (shards, then the merge)."""
    from platform.stage import load_record, run_stage

    for dep in stage.inputs.values():
        ensure(dep, results)
    if stage.is_complete(results):
        return load_record(stage, results) or {}
    if stage.num_shards > 1:
        for i in range(stage.num_shards):
            run_stage(stage, results, i)
    return run_stage(stage, results)


def estep_row(stage: Any, results: Path, store: bool) -> dict[str, Any]:
    import pandas as pd

    t0 = time.perf_counter()
    s = ensure(stage, results)["summary"]
    wall = time.perf_counter() - t0
    samples = pd.read_parquet(stage.out_dir(results) / "estep_samples.parquet")
    return {"store": store, "k": stage.params.num_samples, "chunks": s["num_chunks"],
            "samples_drawn": s["samples_drawn"], "samples_reused": s["samples_reused"],
            "tokens_generated": s["tokens_generated"], "tokens_reused": s["tokens_reused"],
            "flops": s["flops"], "flops_computed": s["flops_computed"], "seconds": wall,
            "_thoughts": samples[["doc_id", "chunk_id", "sample_idx", "thought", "selected"]]}


def measure(results: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """The E-steps of every K, store off, then store on (the warm start computed once, before both)."""
    ensure(estep_stage(results, KS[0], False, overrides).inputs["model"], results)
    rows = []
    for store in (False, True):
        shutil.rmtree(results / "artifacts" / "estep", ignore_errors=True)  # the same keys: a fresh folder
        rows += [estep_row(estep_stage(results, k, store, overrides), results, store) for k in KS]
    for on in rows[len(KS):]:
        off = next(r for r in rows if not r["store"] and r["k"] == on["k"])
        on["same_thoughts_as_off"] = bool(on["_thoughts"].equals(off["_thoughts"]))
    for r in rows:
        del r["_thoughts"]
    return rows


def totals(rows: list[dict[str, Any]], ks: tuple[int, ...]) -> dict[str, Any]:
    """Generated tokens of the E-steps of ``ks`` (a sweep's trials) without and with the store."""
    def gen(store: bool) -> int:
        return sum(r["tokens_generated"] for r in rows if r["store"] is store and r["k"] in ks)

    def wall(store: bool) -> float:
        return sum(r["seconds"] for r in rows if r["store"] is store and r["k"] in ks)

    off, on = gen(False), gen(True)
    return {"trials_k": list(ks), "tokens_generated_without": off, "tokens_generated_with": on,
            "generated_ratio": on / off if off else None, "seconds_without": wall(False), "seconds_with": wall(True)}


def run(smoke: bool, em_docs: Optional[int] = None, results: Optional[Path] = None) -> dict[str, Any]:
    overrides = [*(SMOKE if smoke else []), f"data.em_docs={em_docs or (4 if smoke else 64)}"]
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        rows = measure(Path(results or tmp), overrides)
    summary = {"em_compute": totals(rows, (1, 4)), "k_1_4_8": totals(rows, KS),
               "same_thoughts": all(r.get("same_thoughts_as_off", True) for r in rows)}
    notes = [f"overrides: experiment=em_compute {' '.join(overrides)}; K = {', '.join(map(str, KS))} in that order, "
             "each an iteration-1 E-step from the shared warm start (mstep[0]), run in-process by run_stage",
             "tokens_generated: sampled tokens + EoL stops computed now; tokens_reused: taken from the store; "
             "flops is what the result costs drawn from scratch (the estep_flops objective), flops_computed "
             "what this E-step computed (prompts, new samples, their scoring)"]
    return section("E-step sample store", {"esteps": rows}, summary, notes)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_sample_store", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny corpus, 1-epoch warm start, 8-token thoughts")
    ap.add_argument("--em-docs", type=int, default=None, help="documents the E-step covers (default 64, smoke 4)")
    ap.add_argument("--results", type=Path, default=None, help="results folder to keep (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the section here")
    args = ap.parse_args(argv)
    sec = run(args.smoke, args.em_docs, args.results)
    text = json.dumps(sec, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
