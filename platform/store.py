"""The DuckDB results store. One writer (the ingester) that holds the file only briefly.

DuckDB lets one process hold a database file for writing and no other process open it meanwhile,
so every write opens, writes in one transaction, and closes; both writers and readers retry while
the file is locked. Jobs never open the database: they write files that the ingester loads.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

SCHEMA = Path(__file__).with_name("schema.sql")
DB_NAME = "platform.duckdb"


def db_path(results: str | Path) -> Path:
    return Path(results) / DB_NAME


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


def connect(path: str | Path, read_only: bool = False, retries: int = 100, wait_s: float = 0.1) -> duckdb.DuckDBPyConnection:
    """Open the database, retrying while another process holds its lock (about 10 s by default)."""
    last: Exception | None = None
    for _ in range(retries):
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise
            last = exc
            time.sleep(wait_s)
    raise TimeoutError(f"{path}: still locked by another process after {retries * wait_s:.0f} s ({last})")


@contextmanager
def writer(results: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    path = db_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(path)
    try:
        con.execute(SCHEMA.read_text())
        con.execute("BEGIN TRANSACTION")
        yield con
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def _read_only(results_or_db: str | Path) -> duckdb.DuckDBPyConnection:
    path = Path(results_or_db)
    if path.is_dir():
        path = db_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results database yet (run a sweep, or python -m platform.ingest)")
    return connect(path, read_only=True)


def query_df(results_or_db: str | Path, sql: str, params: list | None = None):
    """Run one read-only query and return a DataFrame (fully fetched: DuckDB 2.x trap)."""
    con = _read_only(results_or_db)
    try:
        return con.execute(sql, params or []).fetchdf()
    finally:
        con.close()


def query_rows(results_or_db: str | Path, sql: str, params: list | None = None) -> list[tuple]:
    """Run one read-only query and return its rows as tuples."""
    con = _read_only(results_or_db)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()
