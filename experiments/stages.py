"""Stage functions that prepare data, models, teacher thoughts and training sets.

Each takes a ``platform.stage.StageContext`` and writes into ``ctx.out_dir``. The E-step, M-step
and evaluation stages live in their own modules (estep.py, mstep.py, evaluate.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import numpy as np

from experiments import docstore
from experiments.chunking import chunk_document, chunk_texts


def _data_cfg(ctx: Any) -> dict[str, Any]:
    return ctx.config["data"]


def _split_for_em(doc_ids: list[str], fraction: float, em_docs: Optional[int]) -> tuple[list[str], list[str]]:
    """Warm-start documents (teacher thoughts) and E-step documents; disjoint, deterministic."""
    n_warm = int(round(fraction * len(doc_ids)))
    warm, rest = doc_ids[:n_warm], doc_ids[n_warm:]
    return warm, rest if em_docs is None else rest[:em_docs]


def prepare_data(ctx: Any) -> dict[str, Any]:
    """Corpus -> train/eval documents, held-out problems, warm/EM split, and a tokenizer."""
    from experiments.corpus import generate_corpus, load_text_corpus, make_documents

    data, model = ctx.config["data"], ctx.config["model"]
    if data["name"] == "embedded":
        train, problems = generate_corpus(data["num_train_docs"], data["num_eval_docs"], data["families"],
                                          data["difficulty"], data["seed"])
        eval_docs = make_documents(problems, "eval", data["seed"])
    else:
        docs = load_text_corpus(data["path"], data.get("text_column", "text"))
        n_eval = min(data["num_eval_docs"], max(1, len(docs) // 10))
        train, eval_docs, problems = docs[n_eval:][: data["num_train_docs"]], docs[:n_eval], []
    out = ctx.out_dir
    docstore.save_docs(out / "train_docs.jsonl", train)
    docstore.save_docs(out / "eval_docs.jsonl", eval_docs)
    docstore.save_problems(out / "eval_problems.jsonl", problems)
    warm, em = _split_for_em([d.doc_id for d in train], data["warm_start_fraction"], data.get("em_docs"))
    (out / "warm_docs.json").write_text(json.dumps(warm))
    (out / "em_docs.json").write_text(json.dumps(em))
    if not model.get("path"):
        from experiments.tokenization import save_tokenizer, train_tokenizer

        tok = train_tokenizer((d.text for d in train), model["vocab_size"])
        save_tokenizer(tok, out / "tokenizer")
    return {"train_docs": len(train), "eval_docs": len(eval_docs), "eval_problems": len(problems),
            "warm_docs": len(warm), "em_docs": len(em), "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def init_model(ctx: Any) -> dict[str, Any]:
    """The base model: built from config (embedded) or a pretrained checkpoint with latent tokens added."""
    from experiments.modeling import build_model, count_params, load_model, save_model
    from experiments.tokenization import add_latent_tokens, load_tokenizer

    model_cfg = ctx.config["model"]
    if model_cfg.get("path"):
        tok = load_tokenizer(model_cfg["path"])
        model = load_model(model_cfg["path"], model_cfg.get("dtype", "float32"))
        add_latent_tokens(tok, model)
    else:
        tok = load_tokenizer(ctx.inputs["data"] / "tokenizer")
        model = build_model(model_cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, ctx.seed)
    save_model(model, tok, ctx.out_dir / "model")
    return {"params": count_params(model), "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def _chunks_of(doc: Any, data: dict[str, Any]) -> tuple[list[list[int]], list[str]]:
    mean, cap = data["chunk_poisson_mean"], data["chunk_max_sentences"]
    return chunk_document(doc.paragraphs, mean, cap), chunk_texts(doc, mean, cap)


def teacher_thoughts(ctx: Any) -> dict[str, Any]:
    """One teacher thought per chunk (the previous chunk as prefix) for the chosen documents."""
    from experiments.teacher import ThoughtRequest, build_teacher
    from experiments.tokenization import load_tokenizer

    data = _data_cfg(ctx)
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    if ctx.config["subset"] == "warm":
        keep = set(json.loads((ctx.inputs["data"] / "warm_docs.json").read_text()))
        docs = [d for d in docs if d.doc_id in keep]
    requests, owners = [], []
    for doc in docs:
        sentence_ids, texts = _chunks_of(doc, data)
        for i, (sids, text) in enumerate(zip(sentence_ids, texts)):
            oracle = " ".join(doc.oracle[s] for s in sids if doc.oracle.get(s)) or None
            requests.append(ThoughtRequest(doc.doc_id, i, texts[i - 1] if i else "", text, oracle))
            owners.append((doc.doc_id, len(texts)))
    teacher = build_teacher(ctx.config["teacher"], ctx.out_dir / "cache")
    thoughts = teacher.thoughts(requests)
    by_doc: dict[str, list[Optional[str]]] = {}
    for (doc_id, n), req, z in zip(owners, requests, thoughts):
        by_doc.setdefault(doc_id, [None] * n)[req.chunk_index] = z
    docstore.save_thoughts(ctx.out_dir / "thoughts.jsonl", by_doc)
    tok = load_tokenizer(ctx.inputs["init"] / "model")
    thought_tokens = sum(len(tok.encode(z, add_special_tokens=False)) for z in thoughts if z)
    return {"docs": len(docs), "chunks": len(requests), "thought_tokens": thought_tokens,
            "requests_sent": getattr(teacher, "requests_sent", 0), "tokens_in": 0, "tokens_out": thought_tokens,
            "flops": 0.0}


def build_train(ctx: Any) -> dict[str, Any]:
    """Thought-augmented (and raw-mixed) training text, tokenized with BOS/EOS and packed to windows."""
    from experiments.formats import build_training_texts, encode_document
    from experiments.tokenization import load_tokenizer

    data = _data_cfg(ctx)
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    thoughts: dict[str, list[Optional[str]]] = {}
    for name in sorted(k for k in ctx.inputs if k.startswith("thoughts")):
        thoughts.update(docstore.load_thoughts(ctx.inputs[name] / "thoughts.jsonl"))
    if ctx.config["docs"] == "with_thoughts":
        docs = [d for d in docs if d.doc_id in thoughts]
    texts = build_training_texts(docs, thoughts, data["format"], data["raw_mix_ratio"], ctx.seed,
                                 data["chunk_poisson_mean"], data["chunk_max_sentences"])
    tok = load_tokenizer(ctx.inputs["init"] / "model")
    from experiments.formats import pack_windows

    ids = [encode_document(tok, t) for t in texts]
    windows = pack_windows(ids, data["window"], tok.pad_token_id)
    np.save(ctx.out_dir / "windows.npy", windows)
    num_tokens = int(sum(len(x) for x in ids))
    meta = {"pad_id": tok.pad_token_id, "num_docs": len(docs), "num_tokens": num_tokens,
            "num_windows": int(windows.shape[0]), "window": data["window"]}
    (ctx.out_dir / "meta.json").write_text(json.dumps(meta))
    (ctx.out_dir / "sample.txt").write_text("\n\n=====\n\n".join(texts[:5]))  # for eyeballing formats
    return {**meta, "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def matched_train_tokens(baseline: str, ref_tokens: int, epochs: float, thought_tokens: int) -> int:
    """Raw-Token-Match: the reference run's trained tokens. Raw-FLOP-Match: its training FLOPs plus
    the FLOPs of generating its thoughts (2N per generated token = 1/3 of a trained token's 6N)."""
    trained = int(math.ceil(epochs * ref_tokens))
    if baseline == "token_match":
        return trained
    if baseline == "flop_match":
        return trained + int(math.ceil(thought_tokens / 3))
    raise ValueError(f"experiment.baseline: must be token_match, flop_match or none; got {baseline!r}")


def run_mstep_matched(ctx: Any) -> dict[str, Any]:
    """The M-step of a raw baseline whose token budget matches a reference (synthetic) run."""
    from experiments.mstep import run_mstep

    ref = json.loads((ctx.inputs["reference"] / "meta.json").read_text())
    thought_tokens = 0
    if "reference_thoughts" in ctx.inputs:
        marker = json.loads((ctx.inputs["reference_thoughts"] / "_COMPLETE.json").read_text())
        thought_tokens = int(marker["summary"].get("thought_tokens", 0))
    budget = matched_train_tokens(ctx.config["baseline"], ref["num_tokens"], ctx.config["mstep"]["epochs"], thought_tokens)
    config = {**ctx.config, "mstep": {**ctx.config["mstep"], "train_tokens": budget}}
    summary = run_mstep(dataclasses.replace(ctx, config=config))
    return {**summary, "train_tokens_budget": budget}
