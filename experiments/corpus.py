"""Corpora: the embedded generated math corpus, and user corpora from JSONL / Parquet.

The embedded corpus is the 'compressed web text' of the paper in miniature: a document states 2-4
problems and their results but omits the reasoning. The worked solution of each problem
("3*7=21. 21+5=26.") is the oracle thought of its answer sentence, used by the oracle teacher.
Everything is generated from one seed with ``random.Random`` (deterministic across processes).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from experiments.formats import ANSWER_PREFIX
from experiments.seeding import document_text


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and line."""


@dataclass
class Document:
    doc_id: str
    text: str
    paragraphs: list[list[str]]  # paragraphs -> sentences
    oracle: dict[int, str] = field(default_factory=dict)  # global sentence index -> worked reasoning
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Problem:
    question: str
    answer: str
    solution: str  # the worked reasoning, e.g. "3*7=21. 21+5=26."
    family: str


FAMILIES = ("arith", "word", "equation")
DIGITS = range(2, 10)


def _arith(rng: random.Random, steps: int) -> Problem:
    """A left-to-right chain of ``steps`` operations on digits 2-9, parenthesised where needed."""
    a, b = rng.choice(DIGITS), rng.choice(DIGITS)
    op = rng.choice("*+")
    value = a * b if op == "*" else a + b
    expr, top_additive = f"{a}{op}{b}", op == "+"
    lines = [f"{a}{op}{b}={value}."]
    for _ in range(steps - 1):
        c = rng.choice(DIGITS)
        ops = ["+"] + (["-"] if value - c >= 0 else []) + (["*"] if value * c <= 999 else [])
        op = rng.choice(ops)
        new = value + c if op == "+" else value - c if op == "-" else value * c
        if op == "*" and top_additive:
            expr = f"({expr})"
        expr, top_additive = f"{expr}{op}{c}", op in "+-"
        lines.append(f"{value}{op}{c}={new}.")
        value = new
    template = rng.choice(["What is {e}?", "Compute {e}.", "Evaluate {e}."])
    return Problem(template.format(e=expr), str(value), " ".join(lines), "arith")


_NAMES = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ravi", "Zoe", "Ben"]
_ITEMS = [("bags", "apples"), ("boxes", "pens"), ("jars", "coins"), ("crates", "books"), ("baskets", "eggs")]


def _word(rng: random.Random, steps: int) -> Problem:
    """Groups of items, then items bought or given away; every number must be combined."""
    name = rng.choice(_NAMES)
    groups, items = rng.choice(_ITEMS)
    a, b = rng.choice(DIGITS), rng.choice(DIGITS)
    value = a * b
    sentences = [f"{name} has {a} {groups} with {b} {items} each."]
    lines = [f"{a}*{b}={value}."]
    for _ in range(steps - 1):
        c = rng.choice(range(2, 20))
        if value - c >= 0 and rng.random() < 0.5:
            sentences.append(f"{name} gives away {c} {items}.")
            lines.append(f"{value}-{c}={value - c}.")
            value -= c
        else:
            sentences.append(f"{name} buys {c} more {items}.")
            lines.append(f"{value}+{c}={value + c}.")
            value += c
    sentences.append(f"How many {items} does {name} have now?")
    return Problem(" ".join(sentences), str(value), " ".join(lines), "word")


def _equation(rng: random.Random, steps: int) -> Problem:
    """a*x + b1 (+/- b2 ...) = c with an integer solution x in 2-9; ``steps - 1`` constant terms."""
    a, x = rng.choice(DIGITS), rng.choice(DIGITS)
    terms = [rng.choice(DIGITS) * rng.choice([1, -1]) for _ in range(max(1, steps - 1))]
    c = a * x + sum(terms)
    lhs = f"{a}*x" + "".join(f"{t:+d}" for t in terms)
    lines, rhs = [], c
    for t in terms:  # move each constant to the right-hand side
        lines.append(f"{rhs}{-t:+d}={rhs - t}.")
        rhs -= t
    lines.append(f"{rhs}/{a}={x}.")
    lines.append(f"So x={x}.")
    return Problem(f"Solve {lhs}={c} for x.", str(x), " ".join(lines), "equation")


_GENERATORS = {"arith": _arith, "word": _word, "equation": _equation}


def sample_problem(rng: random.Random, family: str, difficulty: int) -> Problem:
    """One problem of ``family``; ``difficulty`` adds reasoning steps (1: two steps)."""
    return _GENERATORS[family](rng, difficulty + 1)


def make_document(doc_id: str, problems: Sequence[Problem]) -> Document:
    """A document stating ``problems``: per problem a question paragraph, then "Answer: N."."""
    paragraphs: list[list[str]] = []
    oracle: dict[int, str] = {}
    n_sent = 0
    for pr in problems:
        question = split_sentences(pr.question)
        paragraphs.append(question)
        n_sent += len(question)
        paragraphs.append([f"{ANSWER_PREFIX} {pr.answer}."])
        oracle[n_sent] = pr.solution  # the reasoning the raw text leaves out sits before the answer
        n_sent += 1
    return Document(doc_id, document_text(paragraphs), paragraphs, oracle, list(problems))


def make_documents(problems: Sequence[Problem], id_prefix: str, seed: int) -> list[Document]:
    """Group problems, in order, into documents of 2-4 problems (held-out documents for ELBO)."""
    rng = random.Random(f"{seed}-{id_prefix}")
    docs, i = [], 0
    while i < len(problems):
        n = rng.randint(2, 4)
        docs.append(make_document(f"{id_prefix}-{len(docs):06d}", problems[i:i + n]))
        i += n
    return docs


def generate_corpus(
    num_train_docs: int, num_eval_docs: int, families: Sequence[str], difficulty: int, seed: int
) -> tuple[list[Document], list[Problem]]:
    """Training documents (2-4 problems each) and ``num_eval_docs`` held-out problems.

    Held-out questions are drawn first and are never stated by a training document; training
    problems may repeat among themselves (the corpus is a sample of a finite world).
    """
    families = list(families)
    bad = [f for f in families if f not in FAMILIES]
    if not families or bad:
        raise ValueError(f"data.families={families} must be a non-empty subset of {list(FAMILIES)}")
    if difficulty < 1:
        raise ValueError(f"data.difficulty={difficulty} must be >= 1")
    if num_train_docs < 0 or num_eval_docs < 0:
        raise ValueError("data.num_train_docs and data.num_eval_docs must be >= 0")
    rng = random.Random(seed)
    draw: Callable[[], Problem] = lambda: sample_problem(rng, rng.choice(families), difficulty)

    eval_problems: list[Problem] = []
    held_out: set[str] = set()
    attempts = 0
    while len(eval_problems) < num_eval_docs:
        attempts += 1
        if attempts > 50 * num_eval_docs + 1000:
            raise ValueError(
                f"data.num_eval_docs={num_eval_docs}: only {len(eval_problems)} distinct problems found for "
                f"families={families}, difficulty={difficulty}; lower num_eval_docs or add families"
            )
        pr = draw()
        if pr.question not in held_out:
            held_out.add(pr.question)
            eval_problems.append(pr)

    train_docs = []
    for d in range(num_train_docs):
        problems: list[Problem] = []
        want = rng.randint(2, 4)
        tries = 0
        while len(problems) < want:
            tries += 1
            if tries > 10_000:
                raise ValueError(f"cannot find training problems outside the held-out set for families={families}")
            pr = draw()
            if pr.question not in held_out:
                problems.append(pr)
        train_docs.append(make_document(f"train-{d:06d}", problems))
    return train_docs, eval_problems


_PARA_RE = re.compile(r"\n[ \t]*\n\s*")
_SENT_RE = re.compile(r"(?<=[.!?])\s+")


def split_sentences(paragraph: str) -> list[str]:
    return [s for s in (x.strip() for x in _SENT_RE.split(paragraph.strip())) if s]


def split_paragraphs(text: str) -> list[list[str]]:
    paras = [split_sentences(p) for p in _PARA_RE.split(text.strip())]
    return [p for p in paras if p]


def text_document(doc_id: str, text: str) -> Document:
    """A Document from free text; its ``text`` is re-joined so chunks tile it exactly."""
    paragraphs = split_paragraphs(text)
    return Document(doc_id, document_text(paragraphs), paragraphs)


def load_text_corpus(path: str | Path, text_column: str = "text", id_column: Optional[str] = "id") -> list[Document]:
    """Documents from a .jsonl or .parquet file (FineMath shape: one text per row).

    Whitespace is normalised (sentences joined by one space, paragraphs by a blank line).
    Any problem is one CorpusError naming the file and line (1-based; the row for Parquet).
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path, text_column)
    elif path.suffix == ".parquet":
        rows = _read_parquet(path, text_column, id_column)
    else:
        raise CorpusError(f"{path}: unsupported corpus format {path.suffix!r} (expected .jsonl or .parquet)")
    if not rows:
        raise CorpusError(f"{path}: empty corpus (no rows)")
    docs = []
    for line, text, doc_id in rows:
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}:{line}: column {text_column!r} is empty or not a string")
        docs.append(text_document(str(doc_id) if doc_id is not None else f"{path.stem}-{line:07d}", text))
    return docs


def _read_jsonl(path: Path, text_column: str) -> list[tuple[int, object, object]]:
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{line_no}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{line_no}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            if text_column not in obj:
                raise CorpusError(f"{path}:{line_no}: missing column {text_column!r} (has {sorted(obj)})")
            rows.append((line_no, obj[text_column], obj.get("id")))
    return rows


def _read_parquet(path: Path, text_column: str, id_column: Optional[str]) -> list[tuple[int, object, object]]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    if text_column not in schema.names:
        raise CorpusError(f"{path}: missing column {text_column!r} (has {schema.names})")
    cols = [text_column] + ([id_column] if id_column and id_column in schema.names else [])
    table = pq.read_table(path, columns=cols)
    texts = table.column(text_column).to_pylist()
    ids = table.column(id_column).to_pylist() if len(cols) == 2 else [None] * len(texts)
    return [(i + 1, t, d) for i, (t, d) in enumerate(zip(texts, ids))]
