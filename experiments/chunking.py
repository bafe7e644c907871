"""Sentence chunking (docs/method.md "Chunking"): runs of Poisson(mean)+1 sentences, capped, per paragraph.

Boundaries come from a generator seeded by the document text (``seeding.stable_seed``), so they are
the same in every process, every EM iteration and every run, and change only when the text changes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from experiments.seeding import PARAGRAPH_SEP, SENTENCE_SEP, document_text, stable_seed


def chunk_document(
    paragraphs: Sequence[Sequence[str]], poisson_mean: float = 7.0, max_sentences: int = 20
) -> list[list[int]]:
    """Chunks as lists of global sentence indices; a chunk never crosses a paragraph boundary.

    Each chunk's length is min(Poisson(mean) + 1, max_sentences), truncated at the paragraph's end;
    the next paragraph starts a new chunk.
    """
    if poisson_mean < 0:
        raise ValueError(f"data.chunk_poisson_mean={poisson_mean} must be >= 0")
    if max_sentences < 1:
        raise ValueError(f"data.chunk_max_sentences={max_sentences} must be >= 1")
    rng = np.random.default_rng(stable_seed(document_text(paragraphs)))
    chunks: list[list[int]] = []
    start = 0
    for para in paragraphs:
        end, i = start + len(para), start
        while i < end:
            length = min(int(rng.poisson(poisson_mean)) + 1, max_sentences)
            chunks.append(list(range(i, min(i + length, end))))
            i += length
        start = end
    return chunks


def chunk_texts(doc: Any, poisson_mean: float = 7.0, max_sentences: int = 20) -> list[str]:
    """Chunk strings of a Document, each followed by its separator: ``"".join(...) == doc.text``."""
    sentences: list[str] = []
    seps: list[str] = []  # the separator after each sentence
    n_par = len(doc.paragraphs)
    for p, para in enumerate(doc.paragraphs):
        for s, sent in enumerate(para):
            sentences.append(sent)
            last_in_para = s == len(para) - 1
            seps.append(SENTENCE_SEP if not last_in_para else (PARAGRAPH_SEP if p < n_par - 1 else ""))
    out = []
    for chunk in chunk_document(doc.paragraphs, poisson_mean, max_sentences):
        parts = []
        for idx in chunk:
            parts.append(sentences[idx])
            parts.append(seps[idx])
        out.append("".join(parts))
    return out

