"""The E-step (docs/method.md "E-step, exactly"): K posterior thoughts per chunk, importance-weighted, one resampled.

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from experiments.chunking import chunk_document, chunk_texts
from experiments.corpus import Document
from experiments.docstore import load_docs, load_thoughts, save_thoughts
from experiments.formats import encode_parts, joint_parts, posterior_prompt
from experiments.importance import effective_sample_size, elbo, log_weights, resample
from experiments.sample_store import (SampleStore, Slot, StoredSample, chunk_key, index_runs, marker_stamp,
                                     results_of)
from experiments.samplers import Sampler, build_sampler
from experiments.seeding import stable_seed
from experiments.tokens import EOL, POSTERIOR, PRIOR, SOL
from platform.files import write_atomic

SAMPLE_COLUMNS = [
    "doc_id", "chunk_id", "sample_idx", "thought", "thought_tokens",
    "log_p_joint", "log_q", "log_w", "selected", "finished", "chunk_text", "annotated", "thought_correct",
]
ELBO_NS = (1, 2, 4)


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
    thought_chunks: str = "all",
    store: Optional[SampleStore] = None,
) -> tuple[list[dict[str, Any]], dict[str, list[Optional[str]]], dict[str, int]]:
    """E-step of ``docs``: (sample rows, selected thought per chunk per doc, token counts).

    ``thought_chunks``: ``all`` samples a thought for every chunk (the paper); ``annotated`` only for
    chunks the corpus marks as carrying reasoning (``Document.oracle``), the others stay raw (None),
    which is what the oracle teacher does under the same setting.

    Sample j of a chunk depends only on (seed, iteration, the chunk's prompt ids, j), and the
    resampling draw only on (seed, iteration, document, chunk): not on which documents share a call,
    a group or a shard, so the result does not depend on batching or sharding. With a ``store``
    (experiments/sample_store.py) the samples it holds are taken as they are and only the missing
    indices are drawn and scored; the counts say what was generated and what reused.

    At ``temperature != 1`` log q is the model's untempered density of the sampled ids (what the
    samplers record), so the weights are exact importance weights only at the paper's temperature 1.
    Control tokens other than the EoL stop cannot appear in a thought: the samplers mask them
    (``control_token_ids``) and log q is that of the masked distribution, EoL included.
    """
    tok = sampler.tokenizer
    eol_ids = tok.encode(EOL, add_special_tokens=False)
    if len(eol_ids) != 1:
        raise ValueError(f"tokenizer encodes {EOL} as {eol_ids}; the E-step needs it as one stop token")
    chunks, thoughts = _estep_chunks(tok, docs, context_chunks, poisson_mean, max_sentences, thought_chunks)
    if not chunks:
        return [], thoughts, {k: 0 for k in COUNT_KEYS}
    draw = dict(temperature=temperature, stop_token_id=eol_ids[0], seed=sampler_seed(seed, iteration),
                banned_token_ids=control_token_ids(tok))

    def compute(missing: dict[int, list[int]]) -> dict[Slot, StoredSample]:
        return _draw_and_score(sampler, chunks, missing, max_thought_tokens, draw)

    if store is None:
        got = compute({i: list(range(num_samples)) for i in range(len(chunks))})
        new = set(got)
    else:
        keys = [chunk_key(c.prompt, c.pieces[:2] + c.pieces[3:] + (c.prefix,)) for c in chunks]
        got, new = store.bucket(draw, keys).fill(keys, num_samples, max_thought_tokens, compute)
    return _select(chunks, got, num_samples, seed, iteration, thoughts), thoughts, _counts(chunks, got, new)


def _select(chunks: list["_Chunk"], got: dict[Slot, StoredSample], num_samples: int, seed: int, iteration: int,
            thoughts: dict[str, list[Optional[str]]]) -> list[dict[str, Any]]:
    """Weigh each chunk's K samples, resample one into ``thoughts``; the sample rows."""
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(chunks):
        outs = [got[(i, k)] for k in range(num_samples)]
        lp = np.asarray([s.log_p for s in outs])
        lw = log_weights(lp, np.asarray([s.logprob_sum for s in outs]))
        pick = resample(lw, np.random.default_rng(stable_seed(seed, iteration, c.doc_id, c.chunk_id)))
        thoughts[c.doc_id][c.chunk_id] = outs[pick].text
        rows += [_sample_row(c, k, s, float(lp[k]), float(lw[k]), k == pick) for k, s in enumerate(outs)]
    return rows


COUNT_KEYS = ("tokens_in", "tokens_out", "num_chunks", "tokens_in_computed", "tokens_generated", "tokens_reused",
              "samples_drawn", "samples_reused")


def sampler_seed(seed: int, iteration: int) -> int:
    """The seed the E-step of (run seed, iteration) passes the sampler."""
    return stable_seed("estep", seed, iteration) % 2**31


def _score_cont(c: "_Chunk", ids: Sequence[int]) -> list[int]:
    """The scoring continuation of thought ids: SoL PRIOR Z EoL X, Z's ids verbatim between the
    separately tokenized pieces."""
    sol, prior, _, eol, body = c.pieces
    return sol + prior + list(ids) + eol + body


def _draw_and_score(sampler: Sampler, chunks: list["_Chunk"], missing: dict[int, list[int]], cap: int,
                    draw: dict[str, Any]) -> dict[Slot, StoredSample]:
    """Draw the ``missing`` indices of each chunk (one sampler call per run of indices shared by
    chunks: all chunks and 0..K-1 when nothing is stored, the call of a store-less E-step) and
    score them in one call."""
    calls: dict[tuple[int, int], list[int]] = {}
    for i, js in missing.items():
        for run in index_runs(js):
            calls.setdefault(run, []).append(i)
    drawn: dict[Slot, Any] = {}
    for (first, n), idx in calls.items():
        outs = sampler.sample([chunks[i].prompt for i in idx], n=n, max_tokens=cap, first=first, **draw)
        for i, samples in zip(idx, outs):
            drawn.update({(i, first + k): s for k, s in enumerate(samples)})
    slots = sorted(drawn)
    log_p = sampler.score([chunks[i].prefix for i, _ in slots], [_score_cont(chunks[i], drawn[(i, j)].token_ids)
                                                                 for i, j in slots])
    return {(i, j): StoredSample(tuple(drawn[(i, j)].token_ids), drawn[(i, j)].text, bool(drawn[(i, j)].finished),
                                 float(drawn[(i, j)].logprob_sum), float(lp), cap)
            for (i, j), lp in zip(slots, log_p)}


def _counts(chunks: list["_Chunk"], got: dict[Slot, StoredSample], new: set[Slot]) -> dict[str, int]:
    """Token counts: ``tokens_in`` / ``tokens_out`` what the result costs (every prompt once, every
    scoring sequence, every sampled token and stop), as drawn from scratch; ``tokens_in_computed`` /
    ``tokens_generated`` what this call computed (the prompts of its sampler calls, the scoring of
    new samples, their tokens); the rest came from the sample store."""
    def scored(slot: Slot) -> int:
        return len(chunks[slot[0]].prefix) + len(_score_cont(chunks[slot[0]], got[slot].token_ids))

    def out(slot: Slot) -> int:
        return len(got[slot].token_ids) + int(got[slot].finished)

    drawn: dict[int, list[int]] = {}
    for i, j in new:
        drawn.setdefault(i, []).append(j)
    runs = {i: len(index_runs(js)) for i, js in drawn.items()}  # one prefill of the prompt per sampler call
    counts = {
        "tokens_in": sum(len(c.prompt) for c in chunks) + sum(scored(s) for s in got),
        "tokens_out": sum(out(s) for s in got),
        "num_chunks": len(chunks),
        "tokens_in_computed": sum(len(chunks[i].prompt) * r for i, r in runs.items()) + sum(scored(s) for s in new),
        "tokens_generated": sum(out(s) for s in new),
        "samples_drawn": len(new),
        "samples_reused": len(got) - len(new),
    }
    counts["tokens_reused"] = counts["tokens_out"] - counts["tokens_generated"]
    return counts


@dataclass
class _Chunk:
    doc_id: str
    chunk_id: int
    text: str
    oracle: Optional[str]
    prompt: list[int]  # the posterior prompt q samples from
    prefix: list[int]  # the scoring sequence's context, then its pieces (SoL, PRIOR, -, EoL, X)
    pieces: tuple[list[int], ...]


def _estep_chunks(tok: Any, docs: Sequence[Document], context_chunks: int, poisson_mean: float, max_sentences: int,
                  thought_chunks: str) -> tuple[list[_Chunk], dict[str, list[Optional[str]]]]:
    """The chunks to sample (with their prompt and scoring pieces) and an empty thought list per doc."""
    out: list[_Chunk] = []
    thoughts: dict[str, list[Optional[str]]] = {}
    for doc in docs:
        texts = chunk_texts(doc, poisson_mean, max_sentences)
        oracles = chunk_oracles(doc, poisson_mean, max_sentences)
        thoughts[doc.doc_id] = [None] * len(texts)
        for i, chunk in enumerate(texts):
            if thought_chunks == "annotated" and oracles[i] is None:
                continue
            prefix, pieces = encode_parts(tok, *joint_parts(texts[:i], "", chunk, context_chunks))
            out.append(_Chunk(doc.doc_id, i, chunk, oracles[i],
                              tok(posterior_prompt(texts[:i], chunk, context_chunks))["input_ids"], prefix, tuple(pieces)))
    return out, thoughts


def _sample_row(c: _Chunk, k: int, s: Any, log_p: float, log_w: float, selected: bool) -> dict[str, Any]:
    return {
        "doc_id": c.doc_id, "chunk_id": c.chunk_id, "sample_idx": k, "thought": s.text,
        "thought_tokens": len(s.token_ids), "log_p_joint": log_p, "log_q": float(s.logprob_sum),
        "log_w": log_w, "selected": selected, "finished": bool(s.finished), "chunk_text": c.text,
        "annotated": c.oracle is not None,
        "thought_correct": thought_matches(s.text, c.oracle) if c.oracle is not None else None,
    }


def chunk_oracles(doc: Document, poisson_mean: float = 7.0, max_sentences: int = 20) -> list[Optional[str]]:
    """Per chunk, the corpus's worked reasoning of its sentences, or None where it declares none.

    The embedded corpus annotates the answer sentence of each problem; a user corpus annotates
    nothing. What the oracle teacher writes, what ``thought_chunks=annotated`` samples, and what
    thought correctness is measured against.
    """
    return [" ".join(doc.oracle[s] for s in sents if doc.oracle.get(s)) or None
            for sents in chunk_document(doc.paragraphs, poisson_mean, max_sentences)]


class MissingThoughtError(RuntimeError):
    """Chunks that should carry a thought came back without one: training on them would be raw text
    presented as augmented (a silently wrong result)."""


def expected_thought_chunks(doc: Document, chunking: Any, thought_chunks: str) -> list[bool]:
    """Which chunks of ``doc`` must carry a thought under ``data.thought_chunks``."""
    oracles = chunk_oracles(doc, chunking.chunk_poisson_mean, chunking.chunk_max_sentences)
    if thought_chunks == "annotated":
        return [z is not None for z in oracles]
    return [True] * len(oracles)


def check_thoughts(thoughts: dict[str, Sequence[Optional[str]]], docs: Sequence[Document], chunking: Any,
                   thought_chunks: str, where: str) -> None:
    """Fail loudly, naming the count, where an expected thought is missing (None)."""
    missing = total = 0
    example = None
    for doc in docs:
        got = thoughts.get(doc.doc_id) or []
        for i, want in enumerate(expected_thought_chunks(doc, chunking, thought_chunks)):
            if want:
                total += 1
                if i >= len(got) or got[i] is None:
                    missing += 1
                    example = example or f"{doc.doc_id} chunk {i}"
    if missing:
        raise MissingThoughtError(
            f"{where}: {missing} of {total} chunks that need a thought (data.thought_chunks="
            f"{thought_chunks}) came back with none, e.g. {example}; refusing to train on them")


def thought_matches(thought: str, oracle: str) -> bool:
    """A thought is correct when it is the oracle derivation, up to surrounding whitespace."""
    return " ".join(thought.split()) == " ".join(oracle.split())


def control_token_ids(tok: Any) -> list[int]:
    """Ids no thought may contain: pad, BOS, EOS, SoL and the form prefixes (EoL is the stop)."""
    ids = {getattr(tok, f"{n}_token_id", None) for n in ("pad", "bos", "eos")}
    ids |= set(tok.convert_tokens_to_ids([SOL, PRIOR, POSTERIOR]))
    ids.discard(None)
    ids.discard(tok.convert_tokens_to_ids(EOL))
    return sorted(int(i) for i in ids)


def _per_chunk_log_w(samples: pd.DataFrame) -> pd.Series:
    return samples.sort_values("sample_idx").groupby(["doc_id", "chunk_id"], sort=False)["log_w"].apply(np.asarray)


def thought_correctness(samples: pd.DataFrame) -> dict[str, float]:
    """How often the E-step's thoughts are the oracle derivation, on chunks that have one:
    the selected sample, a random one (the mean over samples) and the best of K (any sample)."""
    ann = samples[samples["thought_correct"].notna()] if "thought_correct" in samples else samples.iloc[:0]
    if ann.empty:
        return {}
    correct = ann["thought_correct"].astype(bool)
    by_chunk = correct.groupby([ann["doc_id"], ann["chunk_id"]])
    return {
        "thought_correct_selected": float(correct[ann["selected"].astype(bool)].mean()),
        "thought_correct_random": float(correct.mean()),
        "thought_correct_best_of_k": float(by_chunk.any().mean()),
    }


def chunk_metrics(samples: pd.DataFrame) -> dict[str, float]:
    """ELBO_n (n <= K), ESS, thought length and selection statistics, averaged over chunks; the same
    split by chunk type (annotated by the corpus or not), and thought correctness where known."""
    if samples.empty:
        return {}
    out = _weight_metrics(_per_chunk_log_w(samples))
    if "annotated" in samples and samples["annotated"].notna().all():
        for name, part in (("annotated", samples[samples["annotated"].astype(bool)]),
                           ("unannotated", samples[~samples["annotated"].astype(bool)])):
            if not part.empty:
                out.update({f"{k}_{name}": v for k, v in _weight_metrics(_per_chunk_log_w(part)).items()})
    out.update(thought_correctness(samples))
    out.update(_sample_metrics(samples))
    return out


def _weight_metrics(per_chunk: pd.Series) -> dict[str, float]:
    k = min(len(v) for v in per_chunk)
    out = {f"elbo_{n}": float(np.mean([elbo(v, n) for v in per_chunk])) for n in ELBO_NS if n <= k}
    out["ess"] = float(np.mean([effective_sample_size(v) for v in per_chunk]))
    return out


def _sample_metrics(samples: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    out["thought_tokens_mean"] = float(samples["thought_tokens"].mean())
    out["selected_idx_mean"] = float(samples.loc[samples["selected"], "sample_idx"].mean())
    out["log_w_mean"] = float(samples["log_w"].mean())
    out["finished_frac"] = float(samples["finished"].mean())
    # thoughts holding a format marker (SoL / Prior: / Posterior:): the samplers mask these tokens, so
    # this stays 0 unless a marker's text is spelled out of ordinary tokens
    markers = "|".join(re.escape(m) for m in (SOL, PRIOR, POSTERIOR))
    out["marker_in_thought_frac"] = float(samples["thought"].str.contains(markers, regex=True).mean())
    return out


# ------------------------------------------------------------------ stage entry points
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


def _shard_groups(data_dir: Path, shard_index: int, num_shards: int,
                  group_docs: int) -> tuple[dict[str, Document], dict[int, list[str]]]:
    """All training documents by id, and this shard's groups of E-step documents by group number.

    Groups are cut from the whole E-step document list and dealt to shards whole (group g to shard
    g mod num_shards), so every sampler call sees the same documents whatever the shard count: the
    E-step's output is the same, bit for bit, on 1 or 200 shards.
    """
    docs = {d.doc_id: d for d in load_docs(data_dir / "train_docs.jsonl")}
    em_ids = json.loads((data_dir / "em_docs.json").read_text(encoding="utf-8"))
    missing = [d for d in em_ids if d not in docs]
    if missing:
        raise ValueError(f"{data_dir / 'em_docs.json'}: {len(missing)} doc_ids not in train_docs.jsonl, e.g. {missing[:3]}")
    groups = [em_ids[i : i + group_docs] for i in range(0, len(em_ids), group_docs)]
    return docs, {g: ids for g, ids in enumerate(groups) if g % num_shards == shard_index}


def _infer_group(sampler: Sampler, p: Any, docs: list[Document], shard_index: int,
                 store: Optional[SampleStore]) -> tuple[pd.DataFrame, dict]:
    rows, zs, counts = infer_thoughts(
        sampler, docs, num_samples=p.num_samples, max_thought_tokens=p.max_thought_tokens, temperature=p.temperature,
        context_chunks=p.context_chunks, poisson_mean=p.chunking.chunk_poisson_mean,
        max_sentences=p.chunking.chunk_max_sentences, seed=p.seed, iteration=p.iteration,
        thought_chunks=p.thought_chunks, store=store)
    check_thoughts(zs, docs, p.chunking, p.thought_chunks, f"E-step shard {shard_index}")
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS), {"doc_ids": [d.doc_id for d in docs], "thoughts": zs,
                                                        "counts": counts}


def open_sample_store(ctx: Any) -> Optional[SampleStore]:
    """The sample store of this E-step's checkpoint and sampler (docs/design.md "Sample store"), or
    None: switched off (``estep.sample_store=false``), a stage folder outside a results folder's
    ``artifacts/``, or a model input without a stage key (nothing to address its samples by)."""
    p = ctx.params
    results = results_of(ctx.out_dir)
    checkpoint = (ctx.input_stages.get("model") or {}).get("key")
    if not p.sample_store or results is None or checkpoint is None:
        return None
    identity = {"backend": p.sampler.backend, "dtype": p.sampler.dtype,
                "fan_out": p.sampler.fan_out if p.sampler.backend == "vllm" else None,
                "checkpoint_stamp": marker_stamp(Path(ctx.inputs["model"]))}
    return SampleStore(results, checkpoint, identity)


def _with_defaults(counts: dict[str, Any], rows: int) -> dict[str, Any]:
    """Counts written before the sample store existed (a cached group, a shard's summary) computed
    everything they count: their ``rows`` samples were all drawn."""
    old = {"tokens_in_computed": counts["tokens_in"], "tokens_generated": counts["tokens_out"], "tokens_reused": 0,
           "samples_drawn": rows, "samples_reused": 0}
    if "flops" in counts:
        old["flops_computed"] = counts["flops"]
    return {**old, **counts}


def run_shard(ctx) -> dict[str, Any]:
    """Stage entry: the E-step of shard ``ctx.shard_index`` of the documents in em_docs.json."""
    p = ctx.params
    data_dir, model_dir = Path(ctx.inputs["data"]), Path(ctx.inputs["model"]) / "model"
    docs, groups = _shard_groups(data_dir, ctx.shard_index, ctx.num_shards, p.group_docs)
    mine = [d for ids in groups.values() for d in ids]
    out = Path(ctx.out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    sampler, store = None, open_sample_store(ctx)
    frames, thoughts = [], {}
    totals = dict.fromkeys(COUNT_KEYS, 0)
    for g, ids in tqdm(groups.items(), desc=f"estep[{p.iteration}] shard {ctx.shard_index}", unit="group"):
        cached = _load_group(cache, g, ids)
        if cached is None:
            if sampler is None:  # loaded lazily: a fully cached shard never loads the model
                sampler = build_sampler(p.sampler.as_dict(), model_dir)
            frame, info = _infer_group(sampler, p, [docs[d] for d in ids], ctx.shard_index, store)
            table, meta = _group_paths(cache, g)
            write_atomic(table, lambda path: frame.to_parquet(path, index=False))
            write_atomic(meta, lambda path: path.write_text(json.dumps(info), encoding="utf-8"))
        else:
            frame, info = cached
        frames.append(frame)
        thoughts.update(info["thoughts"])
        counts = _with_defaults(info["counts"], len(frame))
        for k in totals:
            totals[k] += int(counts[k])
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SAMPLE_COLUMNS)
    write_atomic(out / "estep_samples.parquet", lambda path: samples.to_parquet(path, index=False))
    write_atomic(out / "thoughts.jsonl", lambda path: save_thoughts(path, {d: thoughts[d] for d in mine}))
    n_params = checkpoint_num_params(model_dir)
    # flops: what the result costs, as drawn from scratch (the sweep's estep_flops objective, the same
    # with the store on or off); flops_computed: what this shard computed
    summary = {**totals, "num_docs": len(mine), "n_params": n_params,
               "flops": 2.0 * n_params * (totals["tokens_in"] + totals["tokens_out"]),
               "flops_computed": 2.0 * n_params * (totals["tokens_in_computed"] + totals["tokens_generated"])}
    (out / "estep_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def merge(ctx) -> dict[str, Any]:
    """Stage merge: the shards' samples and thoughts in one canonical order (the E-step documents'
    order, then chunk, then sample index), metrics, and the sum of the shards' compute. The order
    does not depend on the shard count, so neither does any byte of the merged output."""
    out = Path(ctx.out_dir)
    shard_dirs = ctx.shard_dirs()
    absent = [str(d) for d in shard_dirs if not (d / "estep_summary.json").exists()]
    if absent:
        raise FileNotFoundError(f"E-step merge: shards without output: {absent}")
    order = {d: i for i, d in enumerate(json.loads((Path(ctx.inputs["data"]) / "em_docs.json").read_text("utf-8")))}
    parts = [pd.read_parquet(d / "estep_samples.parquet") for d in shard_dirs]
    # a shard with no documents wrote an untyped empty table: concatenated, it would turn the float
    # columns into objects and change how the metrics sum
    samples = pd.concat([f for f in parts if len(f)] or parts[:1], ignore_index=True)
    samples = (samples.assign(_doc=samples["doc_id"].map(order)).sort_values(["_doc", "chunk_id", "sample_idx"])
               .drop(columns="_doc").reset_index(drop=True))
    samples.to_parquet(out / "estep_samples.parquet", index=False)
    thoughts: dict[str, list[Optional[str]]] = {}
    for d in shard_dirs:
        thoughts.update(load_thoughts(d / "thoughts.jsonl"))
    save_thoughts(out / "thoughts.jsonl", {d: thoughts[d] for d in sorted(thoughts, key=order.__getitem__)})
    metrics = chunk_metrics(samples)
    ctx.write_metrics([{"name": k, "step": 0, "value": v} for k, v in metrics.items()])
    summary: dict[str, Any] = {**dict.fromkeys(COUNT_KEYS, 0), "flops": 0.0, "flops_computed": 0.0, "num_docs": 0}
    for d, frame in zip(shard_dirs, parts):
        part = _with_defaults(json.loads((d / "estep_summary.json").read_text(encoding="utf-8")), len(frame))
        for k in summary:
            summary[k] += part[k]
    return {**summary, **metrics}
