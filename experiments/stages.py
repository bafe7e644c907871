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
    from experiments.estep import check_thoughts, chunk_oracles, expected_thought_chunks
    from experiments.teacher import TeacherError, ThoughtRequest, build_teacher
    from experiments.tokenization import load_tokenizer

    data = _data_cfg(ctx)
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    if ctx.config["subset"] == "warm":
        keep = set(json.loads((ctx.inputs["data"] / "warm_docs.json").read_text()))
        docs = [d for d in docs if d.doc_id in keep]
    requests = []
    for doc in docs:
        texts = _chunks_of(doc, data)[1]
        expected = expected_thought_chunks(doc, data)  # the E-step samples exactly these chunks
        oracles = chunk_oracles(doc, data["chunk_poisson_mean"], data["chunk_max_sentences"])
        for i, text in enumerate(texts):
            if not expected[i]:
                continue
            requests.append(ThoughtRequest(doc.doc_id, i, texts[i - 1] if i else "", text, oracles[i]))
    if ctx.config["teacher"].get("kind", "oracle") == "oracle" and requests and not any(r.oracle for r in requests):
        raise TeacherError(
            f"teacher.kind=oracle: none of the {len(requests)} chunks of this corpus has a worked solution, so "
            "every thought would be empty; use teacher=lm (teacher.model_path=...) or teacher=openai_compatible")
    teacher = build_teacher(ctx.config["teacher"], ctx.out_dir / "cache", sampler_cfg=ctx.config.get("sampler"),
                            seed=ctx.seed)
    thoughts = teacher.thoughts(requests)
    by_doc: dict[str, list[Optional[str]]] = {d.doc_id: [None] * len(_chunks_of(d, data)[1]) for d in docs}
    for req, z in zip(requests, thoughts):
        by_doc[req.doc_id][req.chunk_index] = z
    check_thoughts(by_doc, docs, data, f"teacher ({ctx.config['teacher'].get('kind', 'oracle')})")
    docstore.save_thoughts(ctx.out_dir / "thoughts.jsonl", by_doc)
    tok = load_tokenizer(ctx.inputs["init"] / "model")
    thought_tokens = sum(len(tok.encode(z, add_special_tokens=False)) for z in thoughts if z)
    return {"docs": len(docs), "chunks": len(requests), "thought_tokens": thought_tokens,
            "requests_sent": getattr(teacher, "requests_sent", 0),
            # lm: the teacher's own prompt / generated tokens and 2N FLOPs per token of both; else none spent here
            "tokens_in": getattr(teacher, "prompt_tokens", 0),
            "tokens_out": getattr(teacher, "generated_tokens", thought_tokens),
            "flops": getattr(teacher, "generation_flops", 0.0),
            "generation_flops": getattr(teacher, "generation_flops", 0.0),
            "teacher_params": getattr(teacher, "num_params", 0)}


def build_train(ctx: Any) -> dict[str, Any]:
    """Thought-augmented (and raw-mixed) training text, tokenized with BOS/EOS and packed to windows.

    ``views`` readings of the corpus are packed one after another (``meta.view_windows``): with
    ``data.form_coin=fresh`` each flips its own prior/posterior and raw-mix coins per document,
    seeded by (seed, iteration, view), so the M-step's epoch e reads view e mod views (the authors'
    loader draws the coin each time it reads a document). ``frozen`` packs one view drawn by
    (seed, document) alone, the same in every epoch and EM iteration.
    """
    from experiments.formats import build_training_texts, encode_documents, pack_windows
    from experiments.tokenization import load_tokenizer

    data = _data_cfg(ctx)
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    thoughts: dict[str, list[Optional[str]]] = {}
    for name in sorted(k for k in ctx.inputs if k.startswith("thoughts")):
        thoughts.update(docstore.load_thoughts(ctx.inputs[name] / "thoughts.jsonl"))
    if ctx.config["docs"] == "with_thoughts":
        docs = [d for d in docs if d.doc_id in thoughts]
    tok = load_tokenizer(ctx.inputs["init"] / "model")
    fresh = data.get("form_coin", "fresh") == "fresh"
    views = int(ctx.config.get("views", 1)) if fresh else 1
    iteration = ctx.iteration if ctx.iteration is not None else 0
    packed, view_tokens, texts = [], [], []
    for v in range(views):
        texts = build_training_texts(docs, thoughts, data["format"], data["raw_mix_ratio"], ctx.seed,
                                     data["chunk_poisson_mean"], data["chunk_max_sentences"],
                                     draw=(iteration, v) if fresh else ())
        ids = encode_documents(tok, texts)
        packed.append(pack_windows(ids, data["window"], tok.pad_token_id))
        view_tokens.append(int(sum(len(x) for x in ids)))
    windows = np.concatenate(packed)
    np.save(ctx.out_dir / "windows.npy", windows)
    meta = {"pad_id": tok.pad_token_id, "num_docs": len(docs), "num_tokens": view_tokens[0],
            "num_windows": int(windows.shape[0]), "window": data["window"],
            "view_windows": [int(p.shape[0]) for p in packed], "view_tokens": view_tokens}
    (ctx.out_dir / "meta.json").write_text(json.dumps(meta))
    (ctx.out_dir / "sample.txt").write_text("\n\n=====\n\n".join(texts[:5]))  # for eyeballing formats
    return {**{k: v for k, v in meta.items() if not k.startswith("view_")}, "views": views,
            "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


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


def _summary(folder: Any) -> dict[str, Any]:
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
    budget = matched_train_tokens(ctx.config["baseline"], ref, raw["num_tokens"], float(ctx.config["reference_epochs"]),
                                  int(ref["n_params"]))
    config = {**ctx.config, "mstep": {**ctx.config["mstep"], "train_tokens": budget}}
    summary = run_mstep(dataclasses.replace(ctx, config=config))
    return {**summary, "train_tokens_budget": budget, "reference_tokens": int(ref["tokens_in"]),
            "raw_tokens": int(raw["num_tokens"])}
