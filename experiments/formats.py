"""Every string and token format of the thought-augmented data (docs/method.md "Data format", "E-step, exactly").

Conventions, pinned by tests/experiments/test_formats.py:
- A document is paragraphs joined by ``PARAGRAPH_SEP`` ("\\n\\n"), sentences by ``SENTENCE_SEP`` (" ")
  (both in experiments/seeding.py, with the seeds that hash document text).
- A *chunk* string is the chunk's raw text followed by the separator that followed it in the document
  ("" for the last chunk), so ``"".join(chunks) == doc.text``. The separator belongs *between* chunk
  renderings: a thought never sits between a chunk's text and its separator.
- Chunk forms (``body`` = chunk text without its separator):
    raw        body + sep
    prior      SoL PRIOR_PREFIX Z EoL body + sep
    posterior  SoL EoL body SoL POSTERIOR_PREFIX Z EoL + sep
  so with every thought None the raw document comes back exactly.
- Eval: a held-out question is its question paragraph + PARAGRAPH_SEP, exactly what precedes an
  answer paragraph in training; a latent model then gets ``SoL PRIOR_PREFIX``, writes Z until EoL,
  and eval appends EoL (if not generated) and ``answer_prefix()``; a raw model gets
  ``answer_prefix()`` right away. Both then continue " N.".
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from experiments.chunking import chunk_texts
from experiments.seeding import PARAGRAPH_SEP, stable_seed
from experiments.tokens import EOL, POSTERIOR, PRIOR, SOL

ANSWER_PREFIX = "Answer:"
FORMS = ("raw", "prior", "posterior")
MODES = ("random", "prior_only", "posterior_only", "raw")

_TRAILING_WS = re.compile(r"\s*\Z")
_ANSWER_RE = re.compile(r"Answer:\s*(-?\d+(?:\.\d+)?)")


def split_separator(chunk: str) -> tuple[str, str]:
    """(body, trailing separator) of a chunk string."""
    m = _TRAILING_WS.search(chunk)
    return chunk[: m.start()], chunk[m.start():]


def render_chunk(chunk: str, thought: Optional[str], form: str) -> str:
    body, sep = split_separator(chunk)
    if thought is None or form == "raw":
        return chunk
    if form == "prior":
        return f"{SOL}{PRIOR}{thought}{EOL}{body}{sep}"
    if form == "posterior":
        return f"{SOL}{EOL}{body}{SOL}{POSTERIOR}{thought}{EOL}{sep}"
    raise ValueError(f"unknown chunk form {form!r}; expected one of {FORMS}")


def augment_document(chunks: Sequence[str], thoughts: Sequence[Optional[str]], forms: Sequence[str]) -> str:
    """The thought-augmented text of one document (see the module docstring for the forms)."""
    if not (len(chunks) == len(thoughts) == len(forms)):
        raise ValueError(
            f"augment_document: {len(chunks)} chunks, {len(thoughts)} thoughts, {len(forms)} forms; "
            "need one thought and one form per chunk"
        )
    return "".join(render_chunk(c, z, f) for c, z, f in zip(chunks, thoughts, forms))


def choose_forms(num_chunks: int, mode: str, rng: Any) -> list[str]:
    """One form per chunk. ``rng`` is anything with ``.random()`` (numpy Generator, random.Random).

    ``random`` draws a fair coin per chunk (docs/method.md "Prior and posterior forms"); the other modes draw nothing.
    """
    if mode == "random":
        return ["prior" if rng.random() < 0.5 else "posterior" for _ in range(num_chunks)]
    if mode == "prior_only":
        return ["prior"] * num_chunks
    if mode == "posterior_only":
        return ["posterior"] * num_chunks
    if mode == "raw":
        return ["raw"] * num_chunks
    raise ValueError(f"data.format={mode!r} is not one of {MODES}")


def _context(prev_chunks: Sequence[str], context_chunks: int) -> str:
    if context_chunks < 0:
        raise ValueError(f"estep.context_chunks={context_chunks} must be >= 0")
    return "".join(prev_chunks[max(0, len(prev_chunks) - context_chunks):])


def posterior_prompt(prev_chunks: Sequence[str], chunk: str, context_chunks: int = 3) -> str:
    """E-step sampling prompt for q(Z | X_i): context, SoL EoL X_i SoL POSTERIOR_PREFIX.

    The model then writes Z and stops at EoL (docs/method.md "E-step, exactly").
    """
    body, _ = split_separator(chunk)
    return f"{_context(prev_chunks, context_chunks)}{SOL}{EOL}{body}{SOL}{POSTERIOR}"


def joint_parts(
    prev_chunks: Sequence[str], thought: str, chunk: str, context_chunks: int = 3
) -> tuple[str, list[str]]:
    """The scoring string of p(Z, X_i): ``prefix`` (context, not scored) and the scored pieces.

    ``pieces == [SoL, PRIOR_PREFIX, Z, EoL, X_i]``; log p joint sums every token of the pieces.
    Every boundary between pieces is a special token, so tokenizing the pieces one by one gives the
    same ids as tokenizing the whole string (see ``encode_parts``); ``pieces[2]`` is Z's span.
    """
    body, _ = split_separator(chunk)
    return _context(prev_chunks, context_chunks), [SOL, PRIOR, thought, EOL, body]


def encode_parts(tok: Any, prefix: str, pieces: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Token ids of a scoring string: ``prefix`` with the tokenizer's BOS, each piece without."""
    prefix_ids = tok(prefix)["input_ids"]
    return list(prefix_ids), [tok.encode(p, add_special_tokens=False) for p in pieces]


def eval_prompt(question: str, latent: bool, empty_question_thought: bool = False) -> str:
    """Prompt for a held-out problem; what a training document holds right before its answer.

    ``empty_question_thought``: training gave chunks without reasoning an empty thought
    (``data.thought_chunks=all`` with the oracle teacher), so a question reads ``SoL PRIOR EoL Q``
    there, and the prompt matches it (prior form, as the answer's thought that follows).
    """
    text = question.strip() + PARAGRAPH_SEP
    if not latent:
        return text
    if empty_question_thought:
        text = f"{SOL}{PRIOR}{EOL}" + text
    return text + f"{SOL}{PRIOR}"


def answer_prefix() -> str:
    """What eval appends before the model writes the number (after EoL for latent models)."""
    return ANSWER_PREFIX


def parse_answer(text: str) -> Optional[str]:
    """The first number after "Answer:" in generated text, or None."""
    m = _ANSWER_RE.search(text)
    return m.group(1) if m else None


def encode_document(tok: Any, text: str) -> list[int]:
    """BOS + text + EOS, whatever the tokenizer's own special-token template."""
    ids = tok.encode(text, add_special_tokens=False)
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    if tok.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; documents need an end marker for packing")
    return ids + [tok.eos_token_id]


def encode_documents(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    """``encode_document`` of many texts in one batched tokenizer call (the same ids, far faster)."""
    if tok.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; documents need an end marker for packing")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    if not texts:
        return []
    return [bos + list(ids) + [tok.eos_token_id] for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def pack_windows(docs_ids: Iterable[Sequence[int]], window: int, pad_id: int, drop_last: bool = False) -> np.ndarray:
    """Concatenate documents and cut into rows of ``window`` tokens (int32, shape (N, window)).

    The last partial window is padded with ``pad_id`` (default) so small corpora lose no tokens;
    padding only ever fills the tail of the last row, and the trainer must not score pad positions.
    ``drop_last=True`` drops it instead.
    """
    if window < 2:
        raise ValueError(f"data.window={window} must be >= 2")
    flat = np.fromiter((t for ids in docs_ids for t in ids), dtype=np.int64)
    n_full, rest = divmod(len(flat), window)
    rows = flat[: n_full * window].reshape(n_full, window)
    if rest and not drop_last:
        last = np.full((1, window), pad_id, dtype=np.int64)
        last[0, :rest] = flat[n_full * window:]
        rows = np.concatenate([rows, last])
    return rows.astype(np.int32)


def build_training_texts(
    docs: Sequence[Any],
    thoughts_by_doc: dict[str, Sequence[Optional[str]]],
    mode: str,
    raw_mix_ratio: float,
    seed: int,
    poisson_mean: float = 7.0,
    max_sentences: int = 20,
    draw: tuple[Any, ...] = (),
) -> list[str]:
    """Training text of each document: raw with probability ``raw_mix_ratio``, else augmented.

    Draws come from a generator seeded by (seed, *draw, doc_id), so a document's coin and forms do
    not depend on which other documents are in the list; ``draw`` names one reading of the corpus
    (build_train passes the EM iteration and the epoch), so every reading flips fresh coins. A
    document absent from ``thoughts_by_doc`` (or with every thought None) renders as its raw text.
    """
    if not 0.0 <= raw_mix_ratio <= 1.0:
        raise ValueError(f"data.raw_mix_ratio={raw_mix_ratio} must be in [0, 1]")
    if mode not in MODES:
        raise ValueError(f"data.format={mode!r} is not one of {MODES}")
    out = []
    for doc in docs:
        rng = np.random.default_rng(stable_seed(seed, *draw, doc.doc_id))
        use_raw = rng.random() < raw_mix_ratio
        chunks = chunk_texts(doc, poisson_mean, max_sentences)
        forms = choose_forms(len(chunks), mode, rng)
        thoughts = thoughts_by_doc.get(doc.doc_id)
        if thoughts is None:
            thoughts = [None] * len(chunks)
        elif len(thoughts) != len(chunks):
            raise ValueError(
                f"document {doc.doc_id}: {len(thoughts)} thoughts for {len(chunks)} chunks "
                f"(chunking poisson_mean={poisson_mean}, max_sentences={max_sentences})"
            )
        out.append(doc.text if use_raw else augment_document(chunks, thoughts, forms))
    return out
