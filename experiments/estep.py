"""The E-step (PAPER.md "E-step, exactly"): K posterior thoughts per chunk, importance-weighted, one resampled.

For chunk X_i of a document, with up to ``context_chunks`` previous raw chunks C:
    sample  Z_1..Z_K ~ q(Z | C, X_i)            prompt  C SoL EoL X_i SoL POSTERIOR_PREFIX, stop at EoL
    score   log p(SoL PRIOR_PREFIX Z_k EoL X_i | C)   the same model, every token after C
    log w_k = log p - log q(Z_k);  select one Z by importance resampling
Everything is in token ids: Z's sampled ids are spliced verbatim into the scoring sequence between
separately tokenized pieces (formats.encode_parts), so log p and log q cover the very same Z tokens.

All prompts of a group of documents go to the sampler in one call, and all scoring sequences in
another. Shards cache each finished group in ``cache/`` and a rerun after a crash resumes from there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from experiments.chunking import chunk_texts
from experiments.corpus import Document
from experiments.docstore import load_docs, save_thoughts
from experiments.formats import encode_parts, joint_parts, posterior_prompt, stable_seed
from experiments.importance import effective_sample_size, elbo, log_weights, resample
from experiments.samplers import Sampler, build_sampler
from experiments.tokens import EOL, POSTERIOR, PRIOR, SOL

SAMPLE_COLUMNS = [
    "doc_id", "chunk_id", "sample_idx", "thought", "thought_tokens",
    "log_p_joint", "log_q", "log_w", "selected", "finished", "chunk_text",
]
ELBO_NS = (1, 2, 4)
GROUP_DOCS = 8  # documents per resumable unit (estep.group_docs overrides)


def checkpoint_num_params(model_dir: str | Path) -> int:
    """Parameters stored in a checkpoint's safetensors files (any backend; tied weights stored once)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}; cannot count parameters for FLOPs")
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                total += int(np.prod(st.get_slice(name).get_shape()))
    return total


def infer_thoughts(
    sampler: Sampler,
    docs: Sequence[Document],
    *,
    num_samples: int,
    max_thought_tokens: int,
    temperature: float = 1.0,
    context_chunks: int = 3,
    poisson_mean: float = 7.0,
    max_sentences: int = 20,
    seed: int = 0,
    iteration: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, int]]:
    """E-step of ``docs``: (sample rows, selected thought per chunk per doc, token counts).

    At ``temperature != 1`` log q is the model's untempered density of the sampled ids (what the
    samplers record), so the weights are exact importance weights only at the paper's temperature 1.
    """
    if num_samples < 1:
        raise ValueError(f"estep.num_samples={num_samples} must be >= 1")
    tok = sampler.tokenizer
    eol_ids = tok.encode(EOL, add_special_tokens=False)
    if len(eol_ids) != 1:
        raise ValueError(f"tokenizer encodes {EOL} as {eol_ids}; the E-step needs it as one stop token")
    prompts, prefixes, pieces, keys, chunk_text = [], [], [], [], []
    for doc in docs:
        chunks = chunk_texts(doc, poisson_mean, max_sentences)
        chunk_text += chunks
        for i, chunk in enumerate(chunks):
            prompts.append(tok(posterior_prompt(chunks[:i], chunk, context_chunks))["input_ids"])
            prefix_ids, piece_ids = encode_parts(tok, *joint_parts(chunks[:i], "", chunk, context_chunks))
            prefixes.append(prefix_ids)
            pieces.append(piece_ids)
            keys.append((doc.doc_id, i))
    if not prompts:
        return [], {d.doc_id: [] for d in docs}, {"tokens_in": 0, "tokens_out": 0, "num_chunks": 0}

    samples = sampler.sample(
        prompts, n=num_samples, max_tokens=max_thought_tokens, temperature=temperature,
        stop_token_id=eol_ids[0], seed=stable_seed("estep", seed, iteration) % 2**31,
    )
    score_prefixes, conts = [], []
    for prefix_ids, (sol, prior, _, eol, body), outs in zip(prefixes, pieces, samples):
        for s in outs:  # the sampled Z ids verbatim, between the separately tokenized pieces
            score_prefixes.append(prefix_ids)
            conts.append(sol + prior + list(s.token_ids) + eol + body)
    log_p = sampler.score(score_prefixes, conts)

    rows: list[dict[str, Any]] = []
    thoughts: dict[str, list[str]] = {d.doc_id: [] for d in docs}
    for c, ((doc_id, chunk_id), outs) in enumerate(zip(keys, samples)):
        lp = np.asarray(log_p[c * num_samples : (c + 1) * num_samples])
        lq = np.asarray([s.logprob_sum for s in outs])
        lw = log_weights(lp, lq)
        pick = resample(lw, np.random.default_rng(stable_seed(seed, iteration, doc_id, chunk_id)))
        thoughts[doc_id].append(outs[pick].text)
        for k, s in enumerate(outs):
            rows.append({
                "doc_id": doc_id, "chunk_id": chunk_id, "sample_idx": k, "thought": s.text,
                "thought_tokens": len(s.token_ids), "log_p_joint": float(lp[k]), "log_q": float(lq[k]),
                "log_w": float(lw[k]), "selected": k == pick, "finished": bool(s.finished),
                "chunk_text": chunk_text[c],
            })
    generated = sum(len(s.token_ids) + int(s.finished) for outs in samples for s in outs)
    counts = {
        "tokens_in": sum(map(len, prompts)) + sum(len(p) + len(c) for p, c in zip(score_prefixes, conts)),
        "tokens_out": generated,
        "num_chunks": len(keys),
    }
    return rows, thoughts, counts


def chunk_metrics(samples: pd.DataFrame) -> dict[str, float]:
    """ELBO_n (n <= K), ESS, thought length and selection statistics, averaged over chunks."""
    if samples.empty:
        return {}
    per_chunk = samples.sort_values("sample_idx").groupby(["doc_id", "chunk_id"], sort=False)["log_w"].apply(np.asarray)
    k = min(len(v) for v in per_chunk)
    out = {f"elbo_{n}": float(np.mean([elbo(v, n) for v in per_chunk])) for n in ELBO_NS if n <= k}
    out["ess"] = float(np.mean([effective_sample_size(v) for v in per_chunk]))
    out["thought_tokens_mean"] = float(samples["thought_tokens"].mean())
    out["selected_idx_mean"] = float(samples.loc[samples["selected"], "sample_idx"].mean())
    out["log_w_mean"] = float(samples["log_w"].mean())
    out["finished_frac"] = float(samples["finished"].mean())
    # thoughts the model wrote a format marker into (SoL / Prior: / Posterior: before EoL): kept verbatim,
    # since masking them would change q; a high share says the latent format is not learnt yet
    markers = "|".join(re.escape(m) for m in (SOL, PRIOR, POSTERIOR))
    out["marker_in_thought_frac"] = float(samples["thought"].str.contains(markers, regex=True).mean())
    return out


# ------------------------------------------------------------------ stage entry points
def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _group_paths(cache: Path, g: int) -> tuple[Path, Path]:
    return cache / f"group_{g:05d}.parquet", cache / f"group_{g:05d}.json"


def _load_group(cache: Path, g: int, doc_ids: list[str]):
    table, meta = _group_paths(cache, g)
    if not meta.exists():  # the json is written last: its presence marks a complete group
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("doc_ids") != doc_ids:
        return None  # a different document list (should not happen within one stage key): recompute
    return pd.read_parquet(table), info


def run_shard(ctx) -> dict[str, Any]:
    """Stage entry: the E-step of shard ``ctx.shard_index`` of the documents in em_docs.json."""
    cfg, est, data = ctx.config, ctx.config["estep"], ctx.config.get("data", {})
    iteration = int(next((v for v in (cfg.get("iteration"), ctx.iteration) if v is not None), 0))
    data_dir, model_dir = Path(ctx.inputs["data"]), Path(ctx.inputs["model"]) / "model"
    docs = {d.doc_id: d for d in load_docs(data_dir / "train_docs.jsonl")}
    em_ids = json.loads((data_dir / "em_docs.json").read_text(encoding="utf-8"))
    missing = [d for d in em_ids if d not in docs]
    if missing:
        raise ValueError(f"{data_dir / 'em_docs.json'}: {len(missing)} doc_ids not in train_docs.jsonl, e.g. {missing[:3]}")
    mine = em_ids[ctx.shard_index :: ctx.num_shards]
    size = int(est.get("group_docs", GROUP_DOCS))
    groups = [mine[i : i + size] for i in range(0, len(mine), size)]
    out = Path(ctx.out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    sampler = None
    frames, thoughts = [], {}
    totals = {"tokens_in": 0, "tokens_out": 0, "num_chunks": 0}
    for g, ids in enumerate(tqdm(groups, desc=f"estep[{iteration}] shard {ctx.shard_index}", unit="group")):
        cached = _load_group(cache, g, ids)
        if cached is None:
            if sampler is None:  # loaded lazily: a fully cached shard never loads the model
                sampler = build_sampler(cfg.get("sampler", {}), model_dir)
            rows, zs, counts = infer_thoughts(
                sampler, [docs[d] for d in ids],
                num_samples=int(est["num_samples"]), max_thought_tokens=int(est["max_thought_tokens"]),
                temperature=float(est.get("temperature", 1.0)), context_chunks=int(est.get("context_chunks", 3)),
                poisson_mean=float(data.get("chunk_poisson_mean", 7.0)),
                max_sentences=int(data.get("chunk_max_sentences", 20)), seed=ctx.seed, iteration=iteration,
            )
            frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
            info = {"doc_ids": ids, "thoughts": zs, "counts": counts}
            table, meta = _group_paths(cache, g)
            _write_atomic(table, lambda p: frame.to_parquet(p, index=False))
            _write_atomic(meta, lambda p: p.write_text(json.dumps(info), encoding="utf-8"))
        else:
            frame, info = cached
        frames.append(frame)
        thoughts.update(info["thoughts"])
        for k in totals:
            totals[k] += int(info["counts"][k])

    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SAMPLE_COLUMNS)
    _write_atomic(out / "estep_samples.parquet", lambda p: samples.to_parquet(p, index=False))
    _write_atomic(out / "thoughts.jsonl", lambda p: save_thoughts(p, {d: thoughts[d] for d in mine}))
    n_params = checkpoint_num_params(model_dir)
    summary = {**totals, "num_docs": len(mine), "n_params": n_params,
               "flops": 2.0 * n_params * (totals["tokens_in"] + totals["tokens_out"])}
    (out / "estep_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def merge(ctx) -> dict[str, Any]:
    """Stage merge: concatenate the shards' samples and thoughts, write metrics, sum the shards' compute."""
    out = Path(ctx.out_dir)
    shard_dirs = [out / "shards" / f"{i:05d}" for i in range(ctx.num_shards)]
    absent = [str(d) for d in shard_dirs if not (d / "estep_summary.json").exists()]
    if absent:
        raise FileNotFoundError(f"E-step merge: shards without output: {absent}")
    samples = pd.concat([pd.read_parquet(d / "estep_samples.parquet") for d in shard_dirs], ignore_index=True)
    samples.to_parquet(out / "estep_samples.parquet", index=False)
    with open(out / "thoughts.jsonl", "w", encoding="utf-8") as f:
        for d in shard_dirs:
            f.write((d / "thoughts.jsonl").read_text(encoding="utf-8"))
    metrics = chunk_metrics(samples)
    ctx.write_metrics([{"name": k, "step": 0, "value": v} for k, v in metrics.items()])
    summary: dict[str, Any] = {"tokens_in": 0, "tokens_out": 0, "flops": 0.0, "num_chunks": 0, "num_docs": 0}
    for d in shard_dirs:
        part = json.loads((d / "estep_summary.json").read_text(encoding="utf-8"))
        for k in summary:
            summary[k] += part[k]
    return {**summary, **metrics}
