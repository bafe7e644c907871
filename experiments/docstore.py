"""JSONL persistence of documents, problems and per-chunk thoughts between stages."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

from experiments.corpus import Document, Problem


def doc_to_json(doc: Document) -> dict:
    return {"doc_id": doc.doc_id, "text": doc.text, "paragraphs": doc.paragraphs,
            "oracle": {str(k): v for k, v in doc.oracle.items()},
            "problems": [asdict(p) for p in doc.problems]}


def doc_from_json(row: dict) -> Document:
    return Document(
        doc_id=row["doc_id"], text=row["text"], paragraphs=row["paragraphs"],
        oracle={int(k): v for k, v in (row.get("oracle") or {}).items()},
        problems=[Problem(**p) for p in row.get("problems", [])],
    )


def save_docs(path: Path, docs: Iterable[Document]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc_to_json(doc)) + "\n")
            n += 1
    return n


def load_docs(path: Path) -> list[Document]:
    return [doc_from_json(json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def save_problems(path: Path, problems: Iterable[Problem]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(asdict(p)) + "\n")


def load_problems(path: Path) -> list[Problem]:
    return [Problem(**json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def save_thoughts(path: Path, thoughts: dict[str, list[Optional[str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, zs in thoughts.items():
            f.write(json.dumps({"doc_id": doc_id, "thoughts": zs}) + "\n")


def load_thoughts(path: Path) -> dict[str, list[Optional[str]]]:
    out: dict[str, list[Optional[str]]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["doc_id"]] = row["thoughts"]
    return out
