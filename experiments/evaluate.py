"""Evaluation stage: greedy accuracy on held-out problems, held-out NLL, and ELBO_1/2/4 for latent models.

Latent models write a thought first (formats.eval_prompt ends with SoL PRIOR_PREFIX), greedily, up to
EoL or ``eval.max_thought_tokens``; then EoL and ``formats.answer_prefix()`` are appended (as ids)
and the answer is generated greedily to EOS or ``eval.max_new_tokens``, cut at its first newline.
Raw models get the question and the answer prefix directly. Every generation is one batched call.

``eval.harness_tasks`` adds lm-evaluation-harness results (experiments/harness.py): GSM8K / MATH on
a cluster, or ``platform_heldout``, these held-out problems as a local lm-eval task, offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments.chunking import chunk_texts
from experiments.corpus import Document, Problem
from experiments.docstore import load_docs, load_problems
from experiments.estep import checkpoint_num_params, chunk_metrics, control_token_ids, infer_thoughts
from experiments.formats import answer_prefix, encode_document, encode_parts, eval_prompt, joint_parts
from experiments.grading import extract_answer, is_correct
from experiments.harness import LOCAL_TASK, run_harness, write_local_task
from experiments.samplers import Sampler, build_sampler
from experiments.tokens import EOL

ELBO_SAMPLES = 4  # K for held-out ELBO_1/2/4 (docs/method.md "ELBO and ESS", "Evaluation")


def greedy_answers(
    sampler: Sampler, problems: Sequence[Problem], latent: bool, max_thought_tokens: int, max_new_tokens: int,
    empty_question_thought: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One prediction row per problem (question, gold, thought, answer, pred, correct) and token counts."""
    tok = sampler.tokenizer
    prompts = [tok(eval_prompt(p.question, latent, empty_question_thought))["input_ids"] for p in problems]
    tokens_in, tokens_out = sum(map(len, prompts)), 0
    thoughts: list[Optional[str]] = [None] * len(problems)
    thought_lens = [0] * len(problems)
    answer_ids = tok.encode(answer_prefix(), add_special_tokens=False)
    if latent:
        eol = tok.encode(EOL, add_special_tokens=False)
        outs = [o[0] for o in sampler.sample(prompts, 1, max_thought_tokens, temperature=0.0, stop_token_id=eol[0],
                                             banned_token_ids=control_token_ids(tok))]
        thoughts = [o.text for o in outs]
        thought_lens = [len(o.token_ids) for o in outs]
        tokens_out += sum(len(o.token_ids) + o.finished for o in outs)
        # the stop token is not in the sample: append EoL ourselves, whether or not the cap cut the thought
        answer_prompts = [p + o.token_ids + eol + answer_ids for p, o in zip(prompts, outs)]
    else:
        answer_prompts = [p + answer_ids for p in prompts]
    tokens_in += sum(map(len, answer_prompts))
    answers = [o[0] for o in sampler.sample(answer_prompts, 1, max_new_tokens, temperature=0.0, stop_token_id=tok.eos_token_id)]
    tokens_out += sum(len(o.token_ids) + o.finished for o in answers)
    rows = []
    for p, z, n_z, a in zip(problems, thoughts, thought_lens, answers):
        text = a.text.split("\n", 1)[0]  # the answer sentence; what follows is the model going on
        pred = extract_answer(answer_prefix() + text)
        rows.append({"question": p.question, "gold": p.answer, "family": p.family, "thought": z,
                     "thought_tokens": n_z, "answer": text, "pred": pred, "correct": is_correct(pred, p.answer)})
    return rows, {"tokens_in": tokens_in, "tokens_out": tokens_out}


def heldout_nll(sampler: Sampler, docs: Sequence[Document]) -> tuple[float, int]:
    """Mean negative log-likelihood per token of BOS + text + EOS (BOS itself is not predicted)."""
    seqs = [encode_document(sampler.tokenizer, d.text) for d in docs]
    if not seqs:
        return float("nan"), 0
    logp = sampler.score([s[:1] for s in seqs], [s[1:] for s in seqs])
    n = sum(len(s) - 1 for s in seqs)
    return -float(sum(logp)) / n, n


def chunk_logp_mean(sampler: Sampler, docs: Sequence[Document], context_chunks: int, poisson_mean: float,
                    max_sentences: int) -> tuple[float, int]:
    """Mean over chunks of log p(X_i | previous raw chunks): what ELBO_n bounds from below for a latent
    model, and the same chunk-level number for a raw model, so both kinds compare on one axis."""
    prefixes, conts = [], []
    for d in docs:
        chunks = chunk_texts(d, poisson_mean, max_sentences)
        for i, c in enumerate(chunks):
            prefix, pieces = encode_parts(sampler.tokenizer, *joint_parts(chunks[:i], "", c, context_chunks))
            prefixes.append(prefix)
            conts.append(pieces[-1])
    if not conts:
        return float("nan"), 0
    return float(np.mean(sampler.score(prefixes, conts))), sum(len(p) + len(c) for p, c in zip(prefixes, conts))


def run_eval(ctx) -> dict[str, Any]:
    """Stage entry: accuracy, NLL, chunk log p and (latent models) ELBO_1/2/4; eval_predictions.jsonl."""
    p = ctx.params
    data_dir, model_dir = Path(ctx.inputs["data"]), Path(ctx.inputs["model"]) / "model"
    out = Path(ctx.out_dir)
    problems = load_problems(data_dir / "eval_problems.jsonl")
    if p.num_problems is not None:
        problems = problems[: p.num_problems]
    docs = load_docs(data_dir / "eval_docs.jsonl")
    sampler = build_sampler(p.sampler.as_dict(), model_dir)
    rows, counts = greedy_answers(sampler, problems, p.latent, p.max_thought_tokens, p.max_new_tokens,
                                  p.empty_question_thought)
    with open(out / "eval_predictions.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    metrics: dict[str, float] = {"accuracy": float(np.mean([r["correct"] for r in rows])) if rows else float("nan")}
    metrics["num_problems"] = float(len(rows))
    if p.latent and rows:
        metrics["thought_tokens_mean"] = float(np.mean([r["thought_tokens"] for r in rows]))
    nll, n_tok = heldout_nll(sampler, docs)
    metrics["nll"] = nll
    counts["tokens_in"] += n_tok + len(docs)
    elbo_docs = docs[: p.elbo_docs]
    metrics["chunk_logp_mean"], scored = chunk_logp_mean(sampler, elbo_docs, 3, p.chunking.chunk_poisson_mean,
                                                         p.chunking.chunk_max_sentences)
    counts["tokens_in"] += scored
    if p.latent and elbo_docs:
        _heldout_elbo(sampler, p, elbo_docs, metrics, counts)
    if p.harness_tasks:
        metrics.update(_harness_metrics(p, problems, model_dir, out))
    ctx.write_metrics([{"name": k, "step": 0, "value": v} for k, v in metrics.items()])
    n_params = checkpoint_num_params(model_dir)
    return {**counts, "flops": 2.0 * n_params * (counts["tokens_in"] + counts["tokens_out"]), **metrics}


def _heldout_elbo(sampler: Any, p: Any, docs: list, metrics: dict[str, float], counts: dict[str, int]) -> None:
    """ELBO_1/2/4 and ESS of held-out documents (ELBO_SAMPLES posterior thoughts per chunk)."""
    import pandas as pd

    samples, _, c = infer_thoughts(
        sampler, docs, num_samples=ELBO_SAMPLES, max_thought_tokens=p.max_thought_tokens, temperature=1.0,
        context_chunks=3, poisson_mean=p.chunking.chunk_poisson_mean, max_sentences=p.chunking.chunk_max_sentences,
        seed=p.seed, iteration=p.iteration, thought_chunks=p.thought_chunks)
    em = chunk_metrics(pd.DataFrame(samples))
    metrics.update({k: em[k] for k in ("elbo_1", "elbo_2", "elbo_4") if k in em})
    metrics["elbo_ess"] = em["ess"]
    metrics.update({k: v for k, v in em.items() if k.endswith(("_annotated", "_unannotated"))})
    counts["tokens_in"] += c["tokens_in"]
    counts["tokens_out"] += c["tokens_out"]


def _harness_metrics(p: Any, problems: list, model_dir: Path, out: Path) -> dict[str, float]:
    include = None
    if LOCAL_TASK in p.harness_tasks:
        include = write_local_task(problems, p.latent, out, p.max_new_tokens, p.max_thought_tokens,
                                   p.empty_question_thought)
    results = run_harness(model_dir, list(p.harness_tasks), out, backend=p.sampler.backend, include_path=include)
    return {f"harness/{task}/{name}": float(v) for task, vals in results.items() for name, v in vals.items()
            if isinstance(v, (int, float))}
