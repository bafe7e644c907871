"""Stage functions that prepare data, models, teacher thoughts and training sets.

Each takes a ``platform.stage.StageContext`` whose ``params`` is its typed input (experiments/inputs.py)
and writes into ``ctx.out_dir``. The E-step, M-step, evaluation and matched raw baselines live in their
own modules (estep.py, mstep.py, evaluate.py, baselines.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import numpy as np

from experiments import docstore
from experiments.chunking import chunk_texts


def _split_for_em(doc_ids: list[str], fraction: float, em_docs: Optional[int]) -> tuple[list[str], list[str]]:
    """Warm-start documents (teacher thoughts) and E-step documents; disjoint, deterministic."""
    n_warm = int(round(fraction * len(doc_ids)))
    warm, rest = doc_ids[:n_warm], doc_ids[n_warm:]
    return warm, rest if em_docs is None else rest[:em_docs]


def prepare_data(ctx: Any) -> dict[str, Any]:
    """Corpus -> train/eval documents, held-out problems, warm/EM split, and a tokenizer."""
    from experiments.corpus import generate_corpus, load_text_corpus, make_documents

    p = ctx.params
    if p.name == "embedded":
        train, problems = generate_corpus(p.num_train_docs, p.num_eval_docs, list(p.families), p.difficulty,
                                          p.corpus_seed)
        eval_docs = make_documents(problems, "eval", p.corpus_seed)
    else:
        docs = load_text_corpus(p.path, p.text_column)
        n_eval = min(p.num_eval_docs, max(1, len(docs) // 10))
        train, eval_docs, problems = docs[n_eval:][: p.num_train_docs], docs[:n_eval], []
    out = ctx.out_dir
    docstore.save_docs(out / "train_docs.jsonl", train)
    docstore.save_docs(out / "eval_docs.jsonl", eval_docs)
    docstore.save_problems(out / "eval_problems.jsonl", problems)
    warm, em = _split_for_em([d.doc_id for d in train], p.warm_start_fraction, p.em_docs)
    (out / "warm_docs.json").write_text(json.dumps(warm))
    (out / "em_docs.json").write_text(json.dumps(em))
    if not p.model_path:
        from experiments.tokenization import save_tokenizer, train_tokenizer

        tok = train_tokenizer((d.text for d in train), p.vocab_size)
        save_tokenizer(tok, out / "tokenizer")
    return {"train_docs": len(train), "eval_docs": len(eval_docs), "eval_problems": len(problems),
            "warm_docs": len(warm), "em_docs": len(em), "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def init_model(ctx: Any) -> dict[str, Any]:
    """The base model: built from config (embedded) or a pretrained checkpoint with latent tokens added."""
    from experiments.modeling import build_model, count_params, load_model, save_model
    from experiments.tokenization import add_latent_tokens, load_tokenizer

    spec = ctx.params.model
    if spec.path:
        tok = load_tokenizer(spec.path)
        model = load_model(spec.path, spec.dtype)
        add_latent_tokens(tok, model, seed=ctx.params.seed)
    else:
        tok = load_tokenizer(ctx.inputs["data"] / "tokenizer")
        model = build_model(dataclasses.asdict(spec), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                            ctx.params.seed)
    save_model(model, tok, ctx.out_dir / "model")
    return {"params": count_params(model), "tokens_in": 0, "tokens_out": 0, "flops": 0.0}


def _chunk_texts(doc: Any, chunking: Any) -> list[str]:
    return chunk_texts(doc, chunking.chunk_poisson_mean, chunking.chunk_max_sentences)


def teacher_thoughts(ctx: Any) -> dict[str, Any]:
    """One teacher thought per chunk (the previous chunk as prefix) for the chosen documents."""
    from experiments.estep import check_thoughts, chunk_oracles, expected_thought_chunks
    from experiments.teacher import TeacherError, ThoughtRequest, build_teacher
    from experiments.tokenization import load_tokenizer

    p = ctx.params
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    if p.subset == "warm":
        keep = set(json.loads((ctx.inputs["data"] / "warm_docs.json").read_text()))
        docs = [d for d in docs if d.doc_id in keep]
    requests = []
    for doc in docs:
        texts = _chunk_texts(doc, p.chunking)
        expected = expected_thought_chunks(doc, p.chunking, p.thought_chunks)  # the E-step samples exactly these
        oracles = chunk_oracles(doc, p.chunking.chunk_poisson_mean, p.chunking.chunk_max_sentences)
        for i, text in enumerate(texts):
            if not expected[i]:
                continue
            requests.append(ThoughtRequest(doc.doc_id, i, texts[i - 1] if i else "", text, oracles[i]))
    if p.teacher.kind == "oracle" and requests and not any(r.oracle for r in requests):
        raise TeacherError(
            f"teacher.kind=oracle: none of the {len(requests)} chunks of this corpus has a worked solution, so "
            "every thought would be empty; use teacher=lm (teacher.model_path=...) or teacher=openai_compatible")
    teacher = build_teacher(p.teacher.as_dict(), ctx.out_dir / "cache",
                            sampler_cfg=p.sampler.as_dict() if p.sampler else None, seed=p.seed)
    thoughts = teacher.thoughts(requests)
    by_doc: dict[str, list[Optional[str]]] = {d.doc_id: [None] * len(_chunk_texts(d, p.chunking)) for d in docs}
    for req, z in zip(requests, thoughts):
        by_doc[req.doc_id][req.chunk_index] = z
    check_thoughts(by_doc, docs, p.chunking, p.thought_chunks, f"teacher ({p.teacher.kind})")
    docstore.save_thoughts(ctx.out_dir / "thoughts.jsonl", by_doc)
    tok = load_tokenizer(ctx.inputs["init"] / "model" if "init" in ctx.inputs else ctx.inputs["data"] / "tokenizer")
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

    p = ctx.params
    docs = docstore.load_docs(ctx.inputs["data"] / "train_docs.jsonl")
    thoughts: dict[str, list[Optional[str]]] = {}
    for name in sorted(k for k in ctx.inputs if k.startswith("thoughts")):
        thoughts.update(docstore.load_thoughts(ctx.inputs[name] / "thoughts.jsonl"))
    if p.docs == "with_thoughts":
        docs = [d for d in docs if d.doc_id in thoughts]
    tok = load_tokenizer(ctx.inputs["init"] / "model")
    fresh = p.form_coin == "fresh"
    views = p.views if fresh else 1
    packed, view_tokens, texts = [], [], []
    for v in range(views):
        texts = build_training_texts(docs, thoughts, p.format, p.raw_mix_ratio, p.seed,
                                     p.chunking.chunk_poisson_mean, p.chunking.chunk_max_sentences,
                                     draw=(p.iteration, v) if fresh else ())
        ids = encode_documents(tok, texts)
        packed.append(pack_windows(ids, p.window, tok.pad_token_id))
        view_tokens.append(int(sum(len(x) for x in ids)))
    windows = np.concatenate(packed)
    np.save(ctx.out_dir / "windows.npy", windows)
    meta = {"pad_id": tok.pad_token_id, "num_docs": len(docs), "num_tokens": view_tokens[0],
            "num_windows": int(windows.shape[0]), "window": p.window,
            "view_windows": [int(p.shape[0]) for p in packed], "view_tokens": view_tokens}
    (ctx.out_dir / "meta.json").write_text(json.dumps(meta))
    (ctx.out_dir / "sample.txt").write_text("\n\n=====\n\n".join(texts[:5]))  # for eyeballing formats
    return {**{k: v for k, v in meta.items() if not k.startswith("view_")}, "views": views,
            "tokens_in": 0, "tokens_out": 0, "flops": 0.0}
