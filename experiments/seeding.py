"""The hashes the science draws its randomness from, and the document text they hash.

Chunk boundaries, form and raw-mix coins, E-step resampling and the samplers' noise are pure
functions of these seeds, and cached results depend on them: a changed byte here changes results
(values pinned by tests/experiments/test_seeding.py). Python's ``hash()`` is salted per process, so
every seed is a cryptographic hash of its parts.

A document's text is its paragraphs joined by ``PARAGRAPH_SEP``, each paragraph's sentences joined
by ``SENTENCE_SEP``; its chunking seed is ``stable_seed`` of that text.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Sequence

PARAGRAPH_SEP = "\n\n"
SENTENCE_SEP = " "


def document_text(paragraphs: Sequence[Sequence[str]]) -> str:
    """The text of a document given as paragraphs of sentences."""
    return PARAGRAPH_SEP.join(SENTENCE_SEP.join(p) for p in paragraphs)


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from parts, identical in every process: SHA-256 of ``str(part)`` joined by \\x1f.

    One string part hashes that string alone, so ``stable_seed(text)`` is the seed of a text.
    """
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def prompt_seed(seed: int, prompt_ids: Sequence[int]) -> int:
    """A 64-bit hash of (seed, prompt token ids): a prompt's seed, whatever else shares its batch."""
    digest = hashlib.blake2b(struct.pack(f"<q{len(prompt_ids)}q", seed, *prompt_ids), digest_size=8).digest()
    return int.from_bytes(digest, "little")
