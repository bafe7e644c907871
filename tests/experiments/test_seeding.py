"""The seeds cached results hang on, pinned to the values they had when results were first cached."""

from experiments.chunking import chunk_document
from experiments.seeding import PARAGRAPH_SEP, SENTENCE_SEP, document_text, prompt_seed, stable_seed


def test_stable_seed_values():
    assert stable_seed("estep", 0, 1) == 6153463711707628866
    assert stable_seed(3, 1, "doc-7", 4) == 2364010501689737853
    # one string part hashes the string alone: the seed of a document's chunking
    assert stable_seed("A b.\n\nC d.") == 5449641368225934066


def test_document_text_and_its_chunking():
    assert (PARAGRAPH_SEP, SENTENCE_SEP) == ("\n\n", " ")
    assert document_text([["A", "b."], ["C", "d."]]) == "A b.\n\nC d."
    assert chunk_document([[f"s{i}." for i in range(60)]], 3.0, 20)[:3] == [[0, 1, 2, 3], [4, 5, 6], [7, 8]]


def test_sampler_seeds():
    from experiments.samplers.hf import row_keys
    from experiments.samplers.vllm import request_seed

    assert prompt_seed(0, [1, 2, 3]) == 16958249009808338657
    assert row_keys(0, [1, 2, 3], 3) == [1618597691, 1824941107, 28037362]
    assert request_seed(0, [1, 2, 3]) == 842985185
    assert request_seed(-5, list(range(40))) == 1998767484
