"""Pinned formats: the exact strings and token ids the model is trained and prompted on."""

import random

import numpy as np
import pytest

from experiments.corpus import make_document, Problem
from experiments.formats import (
    answer_prefix,
    augment_document,
    build_training_texts,
    choose_forms,
    encode_document,
    encode_parts,
    eval_prompt,
    joint_parts,
    pack_windows,
    parse_answer,
    posterior_prompt,
    split_separator,
)
from experiments.tokenization import train_tokenizer
from experiments.tokens import EOL, POSTERIOR, PRIOR, SOL

# encode_document of the two-chunk document below, tokenizer trained in the `tok` fixture
GOLDEN_PRIOR_IDS = [0, 278, 276, 227, 25, 16, 29, 17, 27, 37, 205, 205, 3, 5, 25, 16, 29, 35, 24, 23, 20, 227,
                    24, 23, 17, 27, 35, 24, 28, 20, 4, 267, 32, 227, 24, 28, 20, 1]
GOLDEN_POSTERIOR_IDS = [0, 278, 276, 227, 25, 16, 29, 17, 27, 37, 205, 205, 3, 4, 267, 32, 227, 24, 28, 20, 3, 6,
                        25, 16, 29, 35, 24, 23, 20, 227, 24, 23, 17, 27, 35, 24, 28, 20, 4, 1]
CHUNKS = ["What is 3*7+5?\n\n", "Answer: 26."]
THOUGHTS = [None, "3*7=21. 21+5=26."]


@pytest.fixture(scope="module")
def tok():
    texts = ["What is 3*7+5?\n\nAnswer: 26.", "Solve 2*x+4=10 for x.\n\nAnswer: 3."] * 10
    return train_tokenizer(texts, 280)


def test_separator_belongs_between_chunk_renderings():
    assert split_separator("What is 3*7+5?\n\n") == ("What is 3*7+5?", "\n\n")
    assert split_separator("Answer: 26.") == ("Answer: 26.", "")


def test_augmented_strings_in_each_form():
    assert augment_document(CHUNKS, [None, None], ["prior", "posterior"]) == "".join(CHUNKS)
    assert augment_document(CHUNKS, THOUGHTS, ["raw", "raw"]) == "".join(CHUNKS)
    prior = augment_document(CHUNKS, THOUGHTS, ["prior", "prior"])
    assert prior == f"What is 3*7+5?\n\n{SOL}{PRIOR}3*7=21. 21+5=26.{EOL}Answer: 26."
    both = ["Q1?\n\n", "A1.\n\n", "Q2?"]
    post = augment_document(both, ["z1", "z2", None], ["posterior", "posterior", "prior"])
    assert post == f"{SOL}{EOL}Q1?{SOL}{POSTERIOR}z1{EOL}\n\n{SOL}{EOL}A1.{SOL}{POSTERIOR}z2{EOL}\n\nQ2?"


def test_augment_rejects_mismatched_lengths_and_unknown_form():
    with pytest.raises(ValueError, match="2 chunks, 1 thoughts"):
        augment_document(CHUNKS, [None], ["raw", "raw"])
    with pytest.raises(ValueError, match="unknown chunk form 'middle'"):
        augment_document(CHUNKS, THOUGHTS, ["raw", "middle"])


def test_golden_token_ids(tok):
    text = augment_document(CHUNKS, THOUGHTS, ["prior", "prior"])
    ids = encode_document(tok, text)
    assert ids == GOLDEN_PRIOR_IDS
    assert tok.decode(ids) == "<|bos|>" + text + "<|eos|>"
    post = augment_document(CHUNKS, THOUGHTS, ["raw", "posterior"])
    assert encode_document(tok, post) == GOLDEN_POSTERIOR_IDS
    # every digit is its own token, and the latent markers are single ids 3..6
    assert [tok.decode([i]) for i in GOLDEN_PRIOR_IDS[12:17]] == ["<|START_OF_LATENT|>", "<|PRIOR_PREFIX|>", "3", "*", "7"]


def test_choose_forms_modes_and_fair_coin():
    rng = np.random.default_rng(0)
    forms = choose_forms(4000, "random", rng)
    assert set(forms) == {"prior", "posterior"}
    assert abs(forms.count("prior") / 4000 - 0.5) < 0.03
    assert choose_forms(3, "prior_only", rng) == ["prior"] * 3
    assert choose_forms(2, "posterior_only", random.Random(0)) == ["posterior"] * 2
    assert choose_forms(2, "raw", rng) == ["raw", "raw"]
    with pytest.raises(ValueError, match="data.format='mixed'"):
        choose_forms(2, "mixed", rng)


def test_posterior_prompt_and_joint_parts_keep_at_most_three_context_chunks():
    prev = ["c0 ", "c1 ", "c2 ", "c3\n\n"]
    assert posterior_prompt(prev, "x4 ") == f"c1 c2 c3\n\n{SOL}{EOL}x4{SOL}{POSTERIOR}"
    assert posterior_prompt(prev[:1], "x1") == f"c0 {SOL}{EOL}x1{SOL}{POSTERIOR}"
    assert posterior_prompt([], "x0", context_chunks=3) == f"{SOL}{EOL}x0{SOL}{POSTERIOR}"
    assert posterior_prompt(prev, "x4", context_chunks=0) == f"{SOL}{EOL}x4{SOL}{POSTERIOR}"
    prefix, pieces = joint_parts(prev, "Z", "x4 ", context_chunks=2)
    assert prefix == "c2 c3\n\n" and pieces == [SOL, PRIOR, "Z", EOL, "x4"]


def test_encode_parts_matches_whole_string_tokenization(tok):
    prefix, pieces = joint_parts(CHUNKS[:1], "3*7=21. 21+5=26.", CHUNKS[1])
    prefix_ids, piece_ids = encode_parts(tok, prefix, pieces)
    whole = tok(prefix + "".join(pieces))["input_ids"]
    assert prefix_ids + [i for p in piece_ids for i in p] == whole
    assert prefix_ids[0] == tok.bos_token_id
    assert encode_parts(tok, "", pieces)[0] == [tok.bos_token_id]


def test_eval_prompt_is_what_training_text_holds_before_the_answer():
    q = "What is 3*7+5?"
    train_text = augment_document(CHUNKS, THOUGHTS, ["raw", "prior"])
    latent = eval_prompt(q, latent=True)
    assert latent == f"What is 3*7+5?\n\n{SOL}{PRIOR}"
    assert train_text.startswith(latent)
    assert train_text.startswith(latent + THOUGHTS[1] + EOL + answer_prefix())
    raw = eval_prompt(q, latent=False)
    assert "".join(CHUNKS).startswith(raw + answer_prefix())
    # with empty thoughts on question chunks (the oracle under thought_chunks=all), the question
    # reads as a prior-form chunk with an empty thought, as in training
    empty = augment_document(CHUNKS, ["", THOUGHTS[1]], ["prior", "prior"])
    assert empty.startswith(eval_prompt(q, latent=True, empty_question_thought=True) + THOUGHTS[1] + EOL)
    assert eval_prompt(q, latent=False, empty_question_thought=True) == raw
    assert parse_answer(" 26.") is None and parse_answer("Answer: 26.") == "26"
    assert parse_answer("x=3<|END_OF_LATENT|>Answer: -4.\n\n") == "-4"


def test_pack_windows_pads_or_drops_the_tail():
    docs = [[0, 10, 11, 1], [0, 12, 1]]
    padded = pack_windows(docs, 3, pad_id=2)
    assert padded.dtype == np.int32
    assert padded.tolist() == [[0, 10, 11], [1, 0, 12], [1, 2, 2]]
    assert pack_windows(docs, 3, pad_id=2, drop_last=True).tolist() == [[0, 10, 11], [1, 0, 12]]
    assert pack_windows(docs, 7, pad_id=2).tolist() == [[0, 10, 11, 1, 0, 12, 1]]
    with pytest.raises(ValueError, match="data.window=1"):
        pack_windows(docs, 1, pad_id=2)


def test_build_training_texts_mixing_and_determinism():
    docs = [make_document(f"d{i}", [Problem(f"What is {i}+2?", str(i + 2), f"{i}+2={i + 2}.", "arith")] * 2)
            for i in range(40)]
    thoughts = {d.doc_id: [None, f"z{d.doc_id}", None, f"z{d.doc_id}"] for d in docs}
    texts = build_training_texts(docs, thoughts, "random", 0.0, seed=1)
    assert all(SOL in t for t in texts)
    assert texts == build_training_texts(docs, thoughts, "random", 0.0, seed=1)
    # a document's draws depend on (seed, doc_id) only, not on its neighbours
    assert build_training_texts(docs[5:6], thoughts, "random", 0.0, seed=1) == texts[5:6]
    assert texts != build_training_texts(docs, thoughts, "random", 0.0, seed=2)
    assert build_training_texts(docs, thoughts, "random", 1.0, seed=1) == [d.text for d in docs]
    mixed = build_training_texts(docs, thoughts, "random", 0.5, seed=1)
    n_raw = sum(t == d.text for t, d in zip(mixed, docs))
    assert 10 <= n_raw <= 30
    assert build_training_texts(docs, {}, "random", 0.0, seed=1) == [d.text for d in docs]
    with pytest.raises(ValueError, match="document d0: 1 thoughts for 4 chunks"):
        build_training_texts(docs[:1], {"d0": ["z"]}, "random", 0.0, seed=1)
    with pytest.raises(ValueError, match="raw_mix_ratio=1.5"):
        build_training_texts(docs, thoughts, "random", 1.5, seed=1)


def test_every_reading_of_the_corpus_flips_fresh_coins():
    """build_train's views: (iteration, view) draws give each epoch and EM iteration its own forms,
    reproducibly; no draw is the frozen coin of (seed, document) alone."""
    docs = [make_document(f"d{i}", [Problem(f"What is {i}+2?", str(i + 2), f"{i}+2={i + 2}.", "arith")] * 2)
            for i in range(40)]
    thoughts = {d.doc_id: ["", f"z{d.doc_id}", "", f"z{d.doc_id}"] for d in docs}
    read = {draw: build_training_texts(docs, thoughts, "random", 0.0, seed=1, draw=draw)
            for draw in [(), (0, 0), (0, 1), (1, 0)]}
    assert read[()] == build_training_texts(docs, thoughts, "random", 0.0, seed=1)  # frozen: the old coin
    for a, b in [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((), (0, 0))]:
        changed = sum(x != y for x, y in zip(read[a], read[b]))
        assert changed >= 30, (a, b, changed)  # 4 fair coins per document: ~94% of documents differ
    assert read[(0, 1)] == build_training_texts(docs, thoughts, "random", 0.0, seed=1, draw=(0, 1))
    # the raw-mix coin is drawn per reading too
    mixed = [build_training_texts(docs, thoughts, "random", 0.5, seed=1, draw=(0, v)) for v in range(2)]
    raw = [{d.doc_id for t, d in zip(m, docs) if t == d.text} for m in mixed]
    assert raw[0] != raw[1]


def test_batched_encoding_equals_one_by_one(tok):
    from experiments.formats import encode_document, encode_documents

    texts = ["Q: 3*7+5?\n\nAnswer: 26.", f"{SOL}{PRIOR}3*7=21.{EOL}Answer: 21.", ""]
    assert encode_documents(tok, texts) == [encode_document(tok, t) for t in texts]
