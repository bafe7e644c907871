"""Raw baselines matched to a latent run, as BoLT defines them (docs/method.md "Baselines")."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

BASELINES = ("raw_token_match", "raw_flop_match", "compute_match")


def matched_train_tokens(baseline: str, reference: dict[str, Any], raw_tokens: int, epochs: float,
                         n_params: int) -> int:
    """Training tokens of a raw baseline matched to a latent (reference) M-step, as BoLT defines them.

    - ``raw_token_match``: as many raw tokens as the latent run saw: its epochs over the raw text of
      the same documents (BoLT's NUM_RAW_TOKENS).
    - ``raw_flop_match``: as many training tokens as the latent run trained on, thoughts included, so
      the same training FLOPs (NUM_TOTAL_TOKENS).
    - ``compute_match``: that plus the FLOPs of generating the thoughts, at 6N per trained token:
      the teacher's ``generation_flops`` where it reports them, else 2N (the student) per thought token.
    """
    if baseline == "raw_token_match":
        return int(math.ceil(epochs * raw_tokens))
    total = int(reference["tokens_in"])
    if baseline == "raw_flop_match":
        return total
    if baseline == "compute_match":
        gen = reference.get("generation_flops")
        if gen is None:
            gen = 2.0 * n_params * int(reference.get("thought_tokens", 0))
        return total + int(math.ceil(float(gen) / (6.0 * n_params)))
    raise ValueError(f"experiment.baseline: must be one of {list(BASELINES)} or none; got {baseline!r}")


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "_COMPLETE.json").read_text())["summary"]


def run_mstep_matched(ctx: Any) -> dict[str, Any]:
    """The M-step of a raw baseline whose token budget matches a reference latent M-step."""
    from experiments.mstep import run_mstep

    ref = _summary(ctx.inputs["reference"])
    raw = json.loads((ctx.inputs["train"] / "meta.json").read_text())
    thoughts = [_summary(ctx.inputs[k]) for k in sorted(ctx.inputs) if k.startswith("reference_thoughts")]
    ref = {**ref, "thought_tokens": sum(int(t.get("thought_tokens", 0)) for t in thoughts),
           "generation_flops": (sum(float(t["generation_flops"]) for t in thoughts)
                                if thoughts and all("generation_flops" in t for t in thoughts) else None)}
    params = ctx.params
    budget = matched_train_tokens(params.baseline, ref, raw["num_tokens"], params.reference_epochs, int(ref["n_params"]))
    mstep = dataclasses.replace(params.mstep, train_tokens=budget)
    summary = run_mstep(dataclasses.replace(ctx, params=mstep))
    return {**summary, "train_tokens_budget": budget, "reference_tokens": int(ref["tokens_in"]),
            "raw_tokens": int(raw["num_tokens"])}
