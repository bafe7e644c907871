import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.chunking import chunk_document, chunk_texts
from experiments.corpus import text_document
from experiments.seeding import stable_seed

PARAS = [[f"P{p}S{s}." for s in range(n)] for p, n in enumerate([30, 1, 12, 5])]


def test_chunks_tile_each_paragraph_without_crossing():
    chunks = chunk_document(PARAS, 7.0, 20)
    assert [i for c in chunks for i in c] == list(range(48))
    starts = {0, 30, 31, 43}
    bounds = [(c[0], c[-1]) for c in chunks]
    for first, last in bounds:
        para_of = lambda i: sum(i >= s for s in sorted(starts)) - 1
        assert para_of(first) == para_of(last)
    assert {c[0] for c in chunks} >= starts
    assert all(1 <= len(c) <= 20 for c in chunks)


def test_lengths_follow_the_seeded_poisson_draws():
    # one long paragraph: every chunk but the last has exactly min(Poisson+1, cap) sentences
    para = [[f"s{i}." for i in range(400)]]
    chunks = chunk_document(para, 7.0, 20)
    rng = np.random.default_rng(stable_seed(" ".join(para[0])))
    expected = [min(int(rng.poisson(7.0)) + 1, 20) for _ in chunks]
    assert [len(c) for c in chunks[:-1]] == expected[:-1]
    assert 7.0 < np.mean([len(c) for c in chunks[:-1]]) < 9.0  # about 8 on average (docs/method.md "Chunking")
    capped = chunk_document(para, 7.0, 3)
    assert max(len(c) for c in capped) == 3
    assert all(len(c) == 1 for c in chunk_document(para, 0.0, 20))


def test_boundaries_are_identical_in_another_process():
    code = ("from experiments.chunking import chunk_document;"
            f"print(chunk_document({PARAS!r}, 2.0, 20))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert out == str(chunk_document(PARAS, 2.0, 20))
    other = [p[:] for p in PARAS]
    other[0][0] = "Changed."
    assert chunk_document(other, 2.0, 20) != chunk_document(PARAS, 2.0, 20)


def test_chunk_texts_carry_their_separator_and_rebuild_the_document():
    doc = text_document("d", "A one. A two. A three.\n\nB one? B two!\n\n\nC one.")
    texts = chunk_texts(doc, 0.0, 20)  # mean 0: one sentence per chunk
    assert texts == ["A one. ", "A two. ", "A three.\n\n", "B one? ", "B two!\n\n", "C one."]
    assert "".join(texts) == doc.text
    assert "".join(chunk_texts(doc, 7.0, 20)) == doc.text


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="data.chunk_max_sentences=0"):
        chunk_document(PARAS, 7.0, 0)
    with pytest.raises(ValueError, match="data.chunk_poisson_mean=-1"):
        chunk_document(PARAS, -1.0, 20)
