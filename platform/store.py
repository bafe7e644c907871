"""The DuckDB results store. One writer (the ingester) that holds the file only briefly.

DuckDB lets one process hold a database file for writing and no other process open it meanwhile,
so every write opens, writes in one transaction, and closes. Writers take turns on a lock file
(:func:`writer_lock`), so two never meet on DuckDB's own lock; readers retry while the file is
locked, and so does a writer that meets a reader. Jobs never open the database: they write files
that the ingester loads.

The tables and views are defined once, in ``schema.sql``. A writer applies the whole file, which
upgrades a store written by an earlier version in place (``ADD COLUMN IF NOT EXISTS``, ``CREATE OR
REPLACE VIEW``). A reader cannot change the file, so every read-only connection also defines the
file's views as temporary views, which take precedence: readers (``platform.query``, the dashboard)
see the views as ``schema.sql`` defines them now, even in a store no writer has opened since.

The E-step samples are not copied in: ``estep_samples`` is a view over the Parquet files the E-step
wrote, listed in ``estep_files`` (``platform/samples.py``); every write redefines it.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import duckdb

from platform import samples
from platform.locks import FileLock, named_lock
from platform.samples import check_user_sql  # noqa: F401 (the sandbox's statement check)

SCHEMA = Path(__file__).with_name("schema.sql")
DB_NAME = "platform.duckdb"
_VIEW = re.compile(r"^\s*CREATE\s+OR\s+REPLACE\s+VIEW\b", re.IGNORECASE | re.MULTILINE)
# Forbids file access beyond the database (COPY TO, read_csv, ATTACH) and locks that setting.
SANDBOX = {"enable_external_access": False, "lock_configuration": True}


class StoreUnavailable(RuntimeError):
    """The store cannot be opened: not a database, or (subclasses) missing or locked throughout."""


class StoreMissing(StoreUnavailable, FileNotFoundError):
    """No database file yet."""


class StoreLocked(StoreUnavailable, TimeoutError):
    """Another process held the file through every retry."""


def db_path(results: str | Path) -> Path:
    return Path(results) / DB_NAME


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


def connect(path: str | Path, read_only: bool = False, retries: int = 100, wait_s: float = 0.1,
            config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database, retrying while another process holds its lock (about 10 s by default)."""
    last: Exception | None = None
    for _ in range(retries):
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):  # not a writer's lock: retrying will not help
                raise StoreUnavailable(f"cannot open results database {path}: {exc}") from exc
            last = exc
            time.sleep(wait_s)
    raise StoreLocked(f"{path}: still locked by another process through {retries} attempts "
                      f"({retries * wait_s:.0f} s); retry in a moment ({last})")


def writer_lock(results: str | Path) -> FileLock:
    """Held by whoever writes the store, for as long as it has the file open: one writer at a time
    across processes and machines (``platform.locks``), each waiting its turn instead of spending
    DuckDB's lock retries on another writer."""
    return named_lock(results, "duckdb")


@contextmanager
def writing(results: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that may write, schema.sql applied, under the writer lock; the caller's
    transactions (:func:`transaction`) are its own."""
    path = db_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(results):
        con = connect(path)
        try:
            con.execute(SCHEMA.read_text())
            with transaction(con):
                samples.upgrade(con, results)  # a store that copied the E-step rows in
            samples.remember(con)  # the E-step files as listed now: unchanged ones are not read again
            yield con
            # The estep_samples view over the files listed now. Readers cannot open the file before
            # this (the connection holds it), and until it commits the file's view stays consistent:
            # files listed since are not in it yet (no place in its list).
            with transaction(con):
                samples.refresh(con, results)
        finally:
            con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@contextmanager
def writer(results: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open, one transaction, close: how the store is written."""
    with writing(results) as con, transaction(con):
        yield con


@lru_cache(maxsize=4)
def _temp_views(schema: str, mtime_ns: int) -> tuple[str, ...]:
    """The CREATE OR REPLACE VIEW statements of ``schema``, as temporary views, in file order."""
    return tuple(_VIEW.sub("CREATE OR REPLACE TEMP VIEW", s.query, count=1)
                 for s in duckdb.extract_statements(Path(schema).read_text()) if _VIEW.search(s.query))


def define_views(con: duckdb.DuckDBPyConnection) -> None:
    """Define schema.sql's views on ``con`` as temporary views (they shadow the file's own)."""
    for statement in _temp_views(str(SCHEMA), SCHEMA.stat().st_mtime_ns):
        try:
            con.execute(statement)
        except (duckdb.CatalogException, duckdb.BinderException):
            pass  # a file without the tables a view reads (never written): its own views, if any, stay


def _sandbox(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """:data:`SANDBOX`, except that the E-step files the view reads stay readable (DuckDB checks every
    file a query opens, a view's included); statements that name files are refused before they run
    (:func:`platform.samples.check_user_sql`), since an allowed path could also be written."""
    if files:
        con.execute("SET allowed_paths = ?", [files])
    for name, value in SANDBOX.items():  # lock_configuration last
        con.execute(f"SET {name} = {str(value).lower()}")


def read_only(results_or_db: str | Path, retries: int = 100, wait_s: float = 0.1,
              sandbox: bool = False) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store (a results folder or its .duckdb file) with the views
    of schema.sql; ``sandbox`` also forbids file access (:data:`SANDBOX`) beyond the E-step files,
    for text a user typed (run it through :func:`check_user_sql` first)."""
    path = Path(results_or_db)
    if path.is_dir():
        path = db_path(path)
    if not path.is_file():
        raise StoreMissing(f"{path}: no results database yet (run a sweep, or python -m platform.ingest)")
    con = connect(path, read_only=True, retries=retries, wait_s=wait_s)
    try:
        define_views(con)
        files = samples.reader_view(con, path.parent, want_paths=sandbox)
        if sandbox:
            _sandbox(con, files)
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def reading(results_or_db: str | Path, **open_kw) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`read_only`, closed on leaving the block so a writer is never kept waiting."""
    con = read_only(results_or_db, **open_kw)
    try:
        yield con
    finally:
        con.close()


def query_df(results_or_db: str | Path, sql: str, params: list | None = None, **open_kw):
    """Run one read-only query and return a DataFrame (fully fetched: DuckDB 2.x trap)."""
    with reading(results_or_db, **open_kw) as con:
        return con.execute(sql, list(params or [])).fetchdf()


def query_rows(results_or_db: str | Path, sql: str, params: list | None = None, **open_kw) -> list[tuple]:
    """Run one read-only query and return its rows as tuples."""
    with reading(results_or_db, **open_kw) as con:
        return con.execute(sql, list(params or [])).fetchall()
