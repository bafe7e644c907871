"""E-step samples in the store: the Parquet files stay where the E-step wrote them; DuckDB lists them.

An E-step stage writes ``artifacts/<stage>/<key>/estep_samples.parquet`` (the merge) and one file
per shard under ``shards/``. Ingesting a run no longer copies their rows: it registers the files,
one ``estep_files`` row per (run, file) with what the file itself cannot say (run id, iteration,
stage, cache key, sampling checkpoint) and what its footer does (row count, column types). The
view ``estep_samples`` reads them with one ``read_parquet`` per column signature and joins each row
to its ``estep_files`` row by the file's place in that list (``file_index``), so it has the columns
the table had, and a query for one run or iteration opens only that run's files (DuckDB turns the
join into a filter on ``file_index``). Columns a query does not name are never read: the
aggregates never decode the thoughts. Registering costs one footer read per file, whatever the
row count. (A branch per run and iteration, with its values as constants, plans in time that
grows faster than the branch count: 2 s a query at 1,000 branches.)

Every write redefines the view from the list (:func:`refresh`), in the writer's transaction. A
store written by an earlier version, which copied the rows into an ``estep_samples`` table, is
upgraded on its first write (:func:`upgrade`): rows whose Parquet file still exists become list
entries, the others move to ``estep_samples_legacy``, which the view reads too.

Paths are stored relative to the results folder; the view names them in full. A reader that
finds the folder moved defines the view afresh as a temporary view (:func:`reader_view`). A file
gone when the view is defined is left out of it; one deleted since makes the queries that open it
fail, naming it, until the next write.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import duckdb

from platform.stage import MARKER

FILE_NAME = "estep_samples.parquet"
VIEW, FILES, LEGACY = "estep_samples", "estep_files", "estep_samples_legacy"
SEEN = "estep_files_seen"  # a writer's copy of the list as it opened it (temporary)
# The view's columns, in the order and with the types of the table it replaces.
COLUMNS = (
    ("run_id", "VARCHAR"), ("iteration", "INTEGER"), ("doc_id", "VARCHAR"), ("chunk_id", "INTEGER"),
    ("sample_idx", "INTEGER"), ("thought", "VARCHAR"), ("thought_tokens", "INTEGER"), ("log_p_joint", "DOUBLE"),
    ("log_q", "DOUBLE"), ("log_w", "DOUBLE"), ("selected", "BOOLEAN"), ("model_path", "VARCHAR"),
    ("chunk_text", "VARCHAR"), ("finished", "BOOLEAN"), ("annotated", "BOOLEAN"), ("thought_correct", "BOOLEAN"),
    ("model_key", "VARCHAR"),
)
FROM_LIST = ("run_id", "iteration", "model_path", "model_key")  # the rest is in the files
# Parquet (Arrow) types the view reads without a cast; any other type is cast to the column's.
_ARROW = {"string": "VARCHAR", "large_string": "VARCHAR", "int32": "INTEGER", "double": "DOUBLE", "bool": "BOOLEAN"}
_BASE = re.compile(r"^Parquet files under (.*)$")
# Statements that open files by name: refused on a sandboxed connection, whose allowed paths (the
# registered files) would otherwise let COPY ... TO overwrite one of them.
REFUSED = ("COPY", "COPY_DATABASE", "EXPORT", "ATTACH", "DETACH", "LOAD")


def _shard_index(folder: Path) -> int:
    return int(folder.name.split("-")[0])


def stage_files(art: Path) -> list[tuple[Path, Optional[int]]]:
    """The sample files of one stage folder, as (path, shard): the merged file when there is one,
    else the shard files of its newest complete partition (``shards/NNNNN-of-MMMMM/``)."""
    if (art / FILE_NAME).is_file():
        return [(art / FILE_NAME, None)]
    partitions: dict[str, list[Path]] = {}
    for path in (art / "shards").glob(f"*/{FILE_NAME}"):
        partitions.setdefault(path.parent.name.partition("-")[2], []).append(path.parent)
    complete = []
    for name, folders in partitions.items():
        total = int(name.removeprefix("of-")) if name.startswith("of-") else len(folders)
        if len(folders) == total and all((f / MARKER).is_file() for f in folders):
            complete.append((max((f / MARKER).stat().st_mtime for f in folders), name))
    if not complete:
        return []
    folders = sorted(partitions[max(complete)[1]], key=_shard_index)
    return [(f / FILE_NAME, _shard_index(f)) for f in folders]


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:  # outside the results folder: kept absolute
        return str(path)


def remember(con: duckdb.DuckDBPyConnection) -> None:
    """What the list says of each file now, kept for this connection: a run's ingest deletes its
    rows first, and a file whose size and mtime are unchanged is not read again."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {SEEN} AS "
                f"SELECT DISTINCT ON (path) path, bytes, mtime, num_rows, columns FROM {FILES}")


def _footer(path: Path, rel: str, seen: dict) -> dict:
    """The file's size, mtime, row count and signature: from ``seen`` if unchanged, else its footer."""
    import pyarrow.parquet as pq

    stat = path.stat()
    known = seen.get(rel)
    if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return {"bytes": known[0], "mtime": known[1], "num_rows": known[2], "columns": known[3]}
    meta = pq.read_metadata(path)
    return {"bytes": stat.st_size, "mtime": stat.st_mtime_ns, "num_rows": meta.num_rows,
            "columns": _signature(meta.schema.to_arrow_schema())}


def _signature(schema) -> str:
    """The file's sample columns and their Arrow types, ``name:type,...``: files that agree share a
    ``read_parquet`` in the view."""
    names = {name for name, _ in COLUMNS} - set(FROM_LIST)
    return ",".join(f"{field.name}:{field.type}" for field in schema if field.name in names)


def register(con: duckdb.DuckDBPyConnection, results: str | Path, art: Path, row: dict) -> int:
    """List the sample files of stage folder ``art`` for one run; returns their row count.

    ``row`` holds the columns the files lack (run_id, iteration, stage, cache_key, model_path,
    model_key). Rows the legacy table holds for the same run and iteration are dropped: the files
    say what that E-step wrote now, as a re-ingest said before.
    """
    import pyarrow as pa

    base, art = Path(results).resolve(), art.resolve()
    rel_art, files = Path(_relative(art, base)), stage_files(art)
    if not files:  # most stages have no samples: spare them the catalog lookup below (a few ms)
        return 0
    if _kind(con, SEEN, temp=True) is None:
        remember(con)
    seen = {r[0]: r[1:] for r in con.execute(
        f"SELECT path, bytes, mtime, num_rows, columns FROM {SEEN} WHERE starts_with(path, ?)", [f"{rel_art}/"]).fetchall()}
    rows, now = [], datetime.now(timezone.utc).replace(tzinfo=None)
    for path, shard in files:
        rel = str(rel_art / path.relative_to(art))
        rows.append({**row, "path": rel, "shard": shard, **_footer(path, rel, seen), "registered_at": now})
    if not rows:
        return 0
    listed = pa.Table.from_pylist(rows)  # noqa: F841 (read by DuckDB's replacement scan)
    con.execute(f"INSERT INTO {FILES} BY NAME SELECT * FROM listed")
    con.execute(f"DELETE FROM {LEGACY} WHERE run_id = ? AND iteration IS NOT DISTINCT FROM ?",
                [row["run_id"], row["iteration"]])
    return sum(r["num_rows"] for r in rows)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _absolute(base: Path, path: str) -> str:
    return str(base / path)  # an absolute path stays itself


def _part_sql(part: int, signature: str, paths: list[str]) -> str:
    """One ``read_parquet`` over the files of one signature, each row joined to its file's list
    row by the file's place in the list (a filter on the list's columns becomes a filter on
    ``file_index``, and the files it rules out are never opened)."""
    present = dict(item.split(":", 1) for item in signature.split(",") if item)
    cols = []
    for name, sql_type in COLUMNS:
        if name in FROM_LIST:
            cols.append(f"f.{name}")
        elif name not in present:
            cols.append(f"CAST(NULL AS {sql_type}) AS {name}")
        else:
            cols.append(f"s.{name}" if _ARROW.get(present[name]) == sql_type else f"CAST(s.{name} AS {sql_type}) AS {name}")
    return (f"SELECT {', '.join(cols)}\nFROM read_parquet([{', '.join(map(_quote, paths))}]) s\n"
            f"JOIN {FILES} f ON f.part = {part} AND f.file_index = s.file_index")


def view_sql(parts: list[tuple[int, str, list[str]]], temp: bool = False) -> str:
    """CREATE OR REPLACE [TEMP] VIEW estep_samples over ``parts`` ((part, signature, full paths in
    file_index order)) and the legacy table."""
    legacy = f"SELECT {', '.join(name for name, _ in COLUMNS)} FROM {LEGACY}"
    body = "\nUNION ALL\n".join([_part_sql(*part) for part in parts] + [legacy])
    return f"CREATE OR REPLACE {'TEMP ' if temp else ''}VIEW {VIEW} AS\n{body}"


def _parts(con: duckdb.DuckDBPyConnection, base: Path) -> list[tuple[int, str, list[str]]]:
    parts: dict[int, tuple[str, list[str]]] = {}
    for part, signature, path in con.execute(
            f"SELECT part, columns, path FROM {FILES} WHERE part IS NOT NULL ORDER BY part, file_index").fetchall():
        parts.setdefault(part, (signature, []))[1].append(_absolute(base, path))
    return [(part, signature, paths) for part, (signature, paths) in sorted(parts.items())]


def refresh(con: duckdb.DuckDBPyConnection, results: str | Path) -> None:
    """Number the listed files that exist (a part per signature, a file_index within it, a run's
    files side by side; a file gone since it was listed gets none and stays out of the view until
    its run's next ingest forgets it) and define the view over them; a comment on it records the
    results folder its paths start with. One stat per listed file."""
    base = Path(results).resolve()
    listed = [path for (path,) in con.execute(f"SELECT DISTINCT path FROM {FILES}").fetchall()]
    gone = [path for path in listed if not os.path.exists(_absolute(base, path))]
    con.execute(f"""
        UPDATE {FILES} SET part = n.part, file_index = n.file_index FROM (
            SELECT rid, CASE WHEN NOT gone THEN dense_rank() OVER (PARTITION BY gone ORDER BY columns) - 1 END AS part,
                   CASE WHEN NOT gone THEN row_number() OVER (
                       PARTITION BY gone, columns ORDER BY run_id, iteration, shard, path, rid) - 1 END AS file_index
            FROM (SELECT rowid AS rid, *, list_contains(?, path) AS gone FROM {FILES})) n
        WHERE {FILES}.rowid = n.rid""", [gone])
    con.execute(view_sql(_parts(con, base)))
    con.execute(f"COMMENT ON VIEW {VIEW} IS {_quote(f'Parquet files under {base}')}")


def _kind(con: duckdb.DuckDBPyConnection, name: str, temp: bool = False) -> Optional[str]:
    """'BASE TABLE' or 'VIEW' for an object of the store's own schema (``temp``: of the
    connection's temporary ones), None if there is none."""
    catalog = "'temp'" if temp else "current_database()"
    found = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main' "
                        f"AND table_catalog = {catalog}", [name]).fetchall()
    return found[0][0] if found else None


def upgrade(con: duckdb.DuckDBPyConnection, results: str | Path) -> None:
    """A store whose ``estep_samples`` is a table of copied rows (an earlier version): each (run,
    iteration) whose stage folder still holds its sample files is listed instead; the other rows
    move to the legacy table. The table is then dropped (the view takes its name)."""
    if _kind(con, VIEW) != "BASE TABLE":
        return
    stages = con.execute(f"""
        SELECT DISTINCT e.run_id, e.iteration, s.stage, s.cache_key, s.model_path, s.model_key, s.artifact_dir
        FROM (SELECT DISTINCT run_id, iteration FROM {VIEW}) e
        JOIN stages s ON s.run_id = e.run_id AND s.iteration IS NOT DISTINCT FROM e.iteration
        WHERE s.status = 'completed' AND s.artifact_dir IS NOT NULL""").fetchall()
    listed = set()
    for run_id, iteration, stage, cache_key, model_path, model_key, art in stages:
        if (run_id, iteration) not in listed and stage_files(Path(art)):
            register(con, results, Path(art), {"run_id": run_id, "iteration": iteration, "stage": stage,
                                               "cache_key": cache_key, "model_path": model_path, "model_key": model_key})
            listed.add((run_id, iteration))
    con.execute(f"""INSERT INTO {LEGACY} BY NAME SELECT * FROM {VIEW} t WHERE NOT EXISTS (
        SELECT 1 FROM {FILES} f WHERE f.run_id = t.run_id AND f.iteration IS NOT DISTINCT FROM t.iteration)""")
    con.execute(f"DROP TABLE {VIEW}")


def _view_base(con: duckdb.DuckDBPyConnection) -> Optional[str]:
    found = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = ? AND NOT temporary "
                        "AND database_name = current_database()", [VIEW]).fetchall()
    match = _BASE.match(found[0][0] or "") if found else None
    return match.group(1) if match else None


def reader_view(con: duckdb.DuckDBPyConnection, results: str | Path, want_paths: bool = False) -> list[str]:
    """On a read-only connection: define the view as a temporary one when the file has none (its
    tables were made by hand) or the results folder is no longer where the last writer saw it and
    its files came along (moved, mounted elsewhere; a copy of platform.duckdb alone still reads the
    files where they were). Returns the full paths the view reads when ``want_paths`` (a sandbox
    allows exactly those)."""
    if _kind(con, FILES) != "BASE TABLE" or _kind(con, VIEW) == "BASE TABLE":
        return []  # not written since the upgrade: its table, if any, is read as is
    base, written = Path(results).resolve(), _view_base(con)
    if written == str(base) and not want_paths:
        return []
    parts = _parts(con, base)
    if written is None or (written != str(base) and (not parts or os.path.exists(parts[0][2][0]))):
        try:
            con.execute(view_sql(parts, temp=True))
        except duckdb.Error:
            pass  # a listed file gone since the last write: the file's own view, if any, stays
    elif written != str(base):
        parts = _parts(con, Path(written))
    return sorted({path for _, _, paths in parts for path in paths})


def _scans(node: dict) -> list[dict]:
    name = str(node.get("name", "")).upper()
    own = [node] if "SCAN" in name or "READ_PARQUET" in name else []
    return own + [scan for child in node.get("children", []) for scan in _scans(child)]


def scanned_columns(con: duckdb.DuckDBPyConnection, sql: str, params: Optional[list] = None) -> set[str]:
    """The columns the scans in ``sql``'s plan read (EXPLAIN): Parquet projection means a query that
    names no text column never decodes one."""
    plan = json.loads(con.execute("EXPLAIN (FORMAT JSON) " + sql, list(params or [])).fetchall()[0][1])
    columns: set[str] = set()
    for scan in (s for node in (plan if isinstance(plan, list) else [plan]) for s in _scans(node)):
        listed = scan.get("extra_info", {}).get("Projections", [])
        columns.update(c.strip() for c in (listed.split("\n") if isinstance(listed, str) else listed))
    return columns


def check_user_sql(sql: str) -> None:
    """Refuse the statements that name files (COPY, EXPORT, ATTACH, ...) before a sandboxed
    connection runs ``sql``: its allowed paths are the registered files, readable for the view."""
    for statement in duckdb.extract_statements(sql):
        kind = statement.type.name
        if kind in REFUSED:
            raise duckdb.PermissionException(
                f"Permission Error: {kind} is refused here: file system operations are disabled on this "
                "connection (it reads the registered E-step files and nothing else)")

