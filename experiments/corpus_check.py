"""A cheap look at a user corpus before any job starts: the file, its format, its first rows.

``experiments.corpus.load_text_corpus`` reads the whole file inside the ``prepare_data`` job; a corpus
that is missing, empty, not UTF-8, not JSON or lacks its text column would fail there, after the
jobs started. :func:`check_corpus` reads only the first ``max_rows`` lines (JSONL) or the schema and
first row batch (Parquet) and answers with the message ``load_text_corpus`` would raise
(``CorpusError``'s wording: the file, the 1-based line or row, what is wrong), or None.

A bad line further down still ends in a ``CorpusError`` inside the job; that is reported as a
short error too (README, "Bad input").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

MAX_ROWS = 100
MAX_BYTES = 32 << 20  # stop reading after this much, whatever the number of rows


def check_corpus(path: str | Path, text_column: str = "text", max_rows: int = MAX_ROWS) -> Optional[str]:
    """The first problem of the corpus at ``path`` within its first ``max_rows`` rows, or None."""
    path = Path(path)
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path}: not a file"
    if path.suffix == ".jsonl":
        return _check_jsonl(path, text_column, max_rows)
    if path.suffix == ".parquet":
        return _check_parquet(path, text_column, max_rows)
    return f"{path}: unsupported corpus format {path.suffix!r} (expected .jsonl or .parquet)"


def _bad_text(path: Path, line: int, text: object, text_column: str) -> Optional[str]:
    if not isinstance(text, str) or not text.strip():
        return f"{path}:{line}: column {text_column!r} is empty or not a string"
    return None


def _check_jsonl(path: Path, text_column: str, max_rows: int) -> Optional[str]:
    rows = read = line_no = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror})"
    with f:
        while rows < max_rows and read < MAX_BYTES:
            raw = f.readline(MAX_BYTES - read)
            if not raw:
                break
            line_no += 1
            read += len(raw)
            if read >= MAX_BYTES and not raw.endswith(b"\n"):
                return None  # a line longer than the budget, cut short: the job's full read judges it
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}:{line_no}: not UTF-8 ({e.reason} at byte {e.start})"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{path}:{line_no}: not JSON ({e.msg})"
            if not isinstance(obj, dict):
                return f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}"
            if text_column not in obj:
                return f"{path}:{line_no}: missing column {text_column!r} (has {sorted(obj)})"
            bad = _bad_text(path, line_no, obj[text_column], text_column)
            if bad:
                return bad
            rows += 1
    if rows == 0 and read < MAX_BYTES:
        return f"{path}: empty corpus (no rows)"
    return None


def _check_parquet(path: Path, text_column: str, max_rows: int) -> Optional[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        return f"{path}: not a readable Parquet file ({e})"
    names = pf.schema_arrow.names
    if text_column not in names:
        return f"{path}: missing column {text_column!r} (has {names})"
    tp = pf.schema_arrow.field(text_column).type
    if not (pa.types.is_string(tp) or pa.types.is_large_string(tp)):
        return f"{path}: column {text_column!r} holds {tp}, not text"
    if pf.metadata.num_rows == 0:
        return f"{path}: empty corpus (no rows)"
    try:
        batch = next(pf.iter_batches(batch_size=max_rows, columns=[text_column]), None)
    except Exception as e:
        return f"{path}: not a readable Parquet file ({e})"
    texts = batch.column(0).to_pylist() if batch is not None else []
    for i, text in enumerate(texts[:max_rows]):
        bad = _bad_text(path, i + 1, text, text_column)
        if bad:
            return bad
    return None
