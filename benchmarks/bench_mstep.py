"""Section 3: M-step throughput and achieved FLOP/s against this machine's measured matmul peak.

Runs the real trainer (experiments.mstep.train) on packed windows of random token ids with the
embedded model. Achieved FLOP/s = 6 N x tokens/s (compute.train_flops; attention left out, as
everywhere in the project). The peak is measured here with square float32 matmuls
(compute.measure_matmul_peak_flops); on a GPU the trainer itself reports MFU against the data-sheet
peak of the device (compute.device_peak_flops), so the same code gives real MFU there.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from benchmarks import section


def mstep_config(batch_size: int, steps: int, window: int) -> dict[str, Any]:
    """MStepConfig defaults with a token budget of exactly ``steps`` steps and no mid-run checkpoint."""
    from experiments.config import MStepConfig

    cfg = dataclasses.asdict(MStepConfig())
    cfg.update(batch_size=batch_size, train_tokens=steps * batch_size * window, warmup_steps=1,
               checkpoint_every=10**9, log_every=10**9, lr=1e-3)
    return cfg


def prepare_inputs(root: Path, model: torch.nn.Module, tok: Any, n_windows: int, window: int, seed: int = 0) -> dict[str, Path]:
    """``init/model`` (checkpoint + tokenizer) and ``train/`` (windows.npy + meta.json) as the stages write them."""
    import json

    from experiments.modeling import save_model

    init, train = root / "init", root / "train"
    save_model(model, tok, init / "model")
    train.mkdir(parents=True, exist_ok=True)
    vocab = model.get_input_embeddings().weight.shape[0]
    rng = np.random.default_rng(seed)
    # ids above the specials: no pad inside a window, so every position is a trained token
    np.save(train / "windows.npy", rng.integers(len(tok.all_special_ids) + 1, vocab, size=(n_windows, window), dtype=np.int64))
    (train / "meta.json").write_text(json.dumps({"pad_id": tok.pad_token_id, "window": window}))
    return {"init": init, "train": train}


def train_once(root: Path, inputs: dict[str, Path], cfg: dict[str, Any], tag: str) -> dict[str, Any]:
    from experiments.mstep import train
    from platform.stage import StageContext

    out = root / f"out_{tag}"  # a fresh folder: an existing one would be resumed
    ctx = StageContext(stage="mstep", key=f"bench{tag}", out_dir=out, config={"mstep": cfg, "model": {}, "seed": 0},
                       inputs=inputs)
    return train(ctx)


def run(smoke: bool, embedded: Optional[tuple] = None) -> dict[str, Any]:
    from benchmarks.bench_estep import build_embedded
    from experiments import compute

    model, tok, _ = embedded or build_embedded(60 if smoke else 200)
    window, batch, steps, repeat = (64, 4, 3, 1) if smoke else (128, 16, 24, 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mstep_") as tmp:
        root = Path(tmp)
        inputs = prepare_inputs(root, model, tok, n_windows=batch * 4, window=window)
        cfg = mstep_config(batch, steps, window)
        runs = [train_once(root, inputs, cfg, str(i)) for i in range(repeat)]
    peak = compute.measure_matmul_peak_flops("cpu", torch.float32, size=512 if smoke else 1024,
                                             seconds=0.3 if smoke else 1.5)
    tps = statistics.median(r["tokens_per_s"] for r in runs)
    n_params = runs[0]["n_params"]
    achieved = compute.train_flops(n_params, tps)
    rows.append({"model": "embedded", "params": n_params, "window": window, "batch": batch, "steps": steps,
                 "threads": torch.get_num_threads(), "tokens_per_s": tps, "achieved_flops_per_s": achieved,
                 "matmul_peak_flops_per_s": peak, "fraction_of_peak": compute.mfu(achieved, peak),
                 "trainer_reported_mfu": statistics.median(r["mfu"] for r in runs)})
    notes = [
        f"median of {repeat} trainer runs of {steps} steps x {batch} windows x {window} tokens; float32 on CPU "
        f"with {torch.get_num_threads()} threads",
        "fraction_of_peak = 6 N x tokens/s over a 1024^3 float32 matmul measured here with the same threads; "
        "6N counts the tied embedding / LM head and leaves attention out (the project's FLOP convention), so it "
        "is an estimate of useful work, not a hardware counter",
        "on a GPU, mstep's own summary reports mfu against compute.device_peak_flops(<device name>, dtype) "
        "(the data-sheet dense peak, e.g. H100 bf16 989 TFLOP/s); the issue's 40% MFU target for "
        "TinyLlama-1.1B bf16 can only be checked there",
    ]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        notes.append(f"GPU present: {name}, bf16 data-sheet peak {compute.device_peak_flops(name, 'bfloat16')}")
    return section("M-step throughput", {"mstep": rows},
                   {"tokens_per_s": tps, "fraction_of_matmul_peak": rows[0]["fraction_of_peak"]}, notes)
