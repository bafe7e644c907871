import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments.chunking import chunk_texts
from experiments.corpus import (
    CorpusError,
    Problem,
    generate_corpus,
    load_text_corpus,
    make_document,
    make_documents,
    sample_problem,
)


def _check(problem: Problem):
    """Replay the worked solution: every step must be true arithmetic and end at the answer."""
    steps = re.findall(r"(-?\d+)([-+*/])(\d+)=(-?\d+)\.", problem.solution)
    assert steps, problem
    for a, op, b, c in steps:
        a, b, c = int(a), int(b), int(c)
        assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == c, problem
    assert int(steps[-1][3]) == int(problem.answer)


@pytest.mark.parametrize("family", ["arith", "word", "equation"])
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_every_family_is_correct_and_difficulty_adds_steps(family, difficulty):
    rng = random.Random(difficulty)
    for _ in range(200):
        pr = sample_problem(rng, family, difficulty)
        assert pr.family == family
        _check(pr)
        n_steps = len(re.findall(r"=-?\d+\.", pr.solution)) - (1 if family == "equation" else 0)
        assert n_steps == difficulty + 1
        if family == "arith":
            assert eval(pr.question.split(" ", 2)[-1].rstrip("?.")) == int(pr.answer)  # the question is well-posed


def test_equation_answer_solves_the_equation():
    rng = random.Random(0)
    for _ in range(100):
        pr = sample_problem(rng, "equation", 2)
        lhs, rhs = re.match(r"Solve (.*)=(-?\d+) for x\.", pr.question).groups()
        assert eval(lhs.replace("x", pr.answer)) == int(rhs)


def test_document_layout_and_oracle():
    p1 = Problem("Tom has 3 bags with 7 apples each. How many apples does Tom have now?", "21", "3*7=21.", "word")
    p2 = Problem("What is 3*7+5?", "26", "3*7=21. 21+5=26.", "arith")
    doc = make_document("d", [p1, p2])
    assert doc.text == ("Tom has 3 bags with 7 apples each. How many apples does Tom have now?\n\nAnswer: 21.\n\n"
                        "What is 3*7+5?\n\nAnswer: 26.")
    assert doc.paragraphs[1] == ["Answer: 21."] and len(doc.paragraphs[0]) == 2
    assert doc.oracle == {2: "3*7=21.", 4: "3*7=21. 21+5=26."}
    assert "21+5" not in doc.text  # the raw text omits the reasoning


def test_generate_corpus_is_deterministic_and_eval_is_held_out():
    train, held = generate_corpus(300, 100, ["arith", "word", "equation"], 1, seed=5)
    again = generate_corpus(300, 100, ["arith", "word", "equation"], 1, seed=5)
    assert (train, held) == again
    assert generate_corpus(300, 100, ["arith", "word", "equation"], 1, seed=6)[1] != held
    assert len(train) == 300 and len(held) == 100
    assert all(2 <= len(d.problems) <= 4 for d in train)
    assert len({d.doc_id for d in train}) == 300
    train_q = {p.question for d in train for p in d.problems}
    assert len({p.question for p in held}) == 100 and not train_q & {p.question for p in held}
    assert {p.family for p in held} == {"arith", "word", "equation"}
    for d in train:
        assert "".join(chunk_texts(d)) == d.text
    only = generate_corpus(5, 5, ["equation"], 2, seed=0)
    assert {p.family for d in only[0] for p in d.problems} == {"equation"}


def test_generate_corpus_errors_name_the_field():
    with pytest.raises(ValueError, match="data.families=\\['algebra'\\]"):
        generate_corpus(1, 1, ["algebra"], 1, seed=0)
    with pytest.raises(ValueError, match="data.difficulty=0"):
        generate_corpus(1, 1, ["arith"], 0, seed=0)
    with pytest.raises(ValueError, match="data.num_eval_docs=5000: only"):
        generate_corpus(1, 5000, ["equation"], 1, seed=0)  # 8*8*8*2 distinct equations exist


def test_make_documents_groups_held_out_problems():
    _, held = generate_corpus(0, 30, ["arith"], 1, seed=1)
    docs = make_documents(held, "eval", seed=0)
    assert [p for d in docs for p in d.problems] == held
    assert docs[0].doc_id == "eval-000000" and all(len(d.problems) <= 4 for d in docs)


def test_load_jsonl_and_parquet(tmp_path):
    text = "First sentence. Second one?\nStill second para line!\n\n\nNew para. x = 3.5 here."
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": text, "id": "a"}) + "\n\n" + json.dumps({"text": "Solo."}) + "\n")
    docs = load_text_corpus(path)
    assert [d.doc_id for d in docs] == ["a", "c-0000003"]
    assert docs[0].paragraphs == [["First sentence.", "Second one?", "Still second para line!"],
                                  ["New para.", "x = 3.5 here."]]
    assert docs[0].text == "First sentence. Second one? Still second para line!\n\nNew para. x = 3.5 here."
    assert docs[0].oracle == {} and docs[0].problems == []
    pq.write_table(pa.table({"content": [text, "Solo."]}), tmp_path / "c.parquet")
    pdocs = load_text_corpus(tmp_path / "c.parquet", text_column="content")
    assert [d.paragraphs for d in pdocs] == [d.paragraphs for d in docs]
    assert pdocs[1].doc_id == "c-0000002"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "c.jsonl: empty corpus"),
        (b'{"text": "ok."}\n{"body": "x"}\n', "c.jsonl:2: missing column 'text'"),
        (b'{"text": "ok."}\n{"text": "x"\n', "c.jsonl:2: not JSON"),
        (b'{"text": "ok."}\n\n{"text": "\xff\xfe"}\n', "c.jsonl:3: not UTF-8"),
        (b'{"text": "   "}\n', "c.jsonl:1: column 'text' is empty"),
        (b'["text"]\n', "c.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_jsonl_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=re.escape(message)):
        load_text_corpus(path)


def test_bad_parquet_and_paths(tmp_path):
    pq.write_table(pa.table({"body": ["x."]}), tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match="c.parquet: missing column 'text'"):
        load_text_corpus(tmp_path / "c.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorpusError, match="bad.parquet: not a readable Parquet file"):
        load_text_corpus(tmp_path / "bad.parquet")
    with pytest.raises(CorpusError, match="no such file"):
        load_text_corpus(tmp_path / "none.jsonl")
    (tmp_path / "c.csv").write_text("text\n")
    with pytest.raises(CorpusError, match="unsupported corpus format '.csv'"):
        load_text_corpus(tmp_path / "c.csv")
