"""Read-only access to the results database, and the tables the pages plot.

Every query goes through ``platform.store``: it opens the file read-only (retrying while the
ingester holds it), defines the views of ``platform/schema.sql``, fetches the result fully and
closes the file again, so a reader never blocks the ingester for long. Results are cached for a few
seconds, which keeps pages fast and still shows a running sweep's progress. The page queries build
on the store's views; none is defined here.

Nothing the user types reaches SQL here; values are bound as parameters. Only the SQL page runs
user text, through :func:`run_user_sql`, on a connection that can neither write nor touch files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import duckdb
import numpy as np
import pandas as pd
import streamlit as st

from platform import store

DEFAULT_DB = "results/platform.duckdb"
CACHE_TTL_S = 5.0
# A page waits about 3 s for a writer's lock (15 tries, 0.2 s apart), then says so.
OPEN_RETRIES, OPEN_WAIT_S = 15, 0.2
# Stages whose tokens_in count as training tokens (the warm start is M-step 0).
TRAINING_STAGES = ("mstep", "warm_start")
# Swept params a page can facet by: label -> dotted config path (the key in runs.params).
FACETS = {
    "K (E-step samples)": "estep.num_samples",
    "thought length": "estep.max_thought_tokens",
    "mixture ratio": "data.raw_mix_ratio",
}
# The metrics the across-iterations page offers: columns of the store's `iterations` view.
METRICS = ["accuracy", "nll", "elbo_1", "elbo_2", "elbo_4", "thought_tokens_mean"]
LOWER_IS_BETTER = {"nll"}
# The results database is missing, is not a database, or stayed locked through every retry.
DatabaseUnavailable = store.StoreUnavailable
NO_DB_HINT = "pass `-- --db PATH` to streamlit (or set PLATFORM_DB)"


def resolve_db_path(argv: Optional[Sequence[str]] = None, env: Optional[dict] = None) -> Path:
    """``--db PATH`` (after ``--`` on the streamlit command line), else $PLATFORM_DB, else default."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(list(argv))
    return Path(known.db or env.get("PLATFORM_DB") or DEFAULT_DB)


def connect(path: Path | str, retries: int = OPEN_RETRIES, wait_s: float = OPEN_WAIT_S, sandbox: bool = False):
    """Open ``path`` read-only with the store's views (:func:`platform.store.read_only`).

    ``sandbox`` also forbids file access beyond the database (COPY TO, read_csv, ATTACH) and
    locks that setting, for running text a user typed.
    """
    return store.read_only(path, retries=retries, wait_s=wait_s, sandbox=sandbox)


def run_query(path: Path | str, sql: str, params: Optional[Sequence[Any]] = None) -> pd.DataFrame:
    """Run one fixed query with bound ``params``; the connection is closed before returning."""
    return store.query_df(path, sql, list(params or []), retries=OPEN_RETRIES, wait_s=OPEN_WAIT_S)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def cached_query(path: str, sql: str, params: tuple = ()) -> pd.DataFrame:
    return run_query(path, sql, params)


def run_user_sql(path: Path | str, sql: str) -> pd.DataFrame:
    """The SQL page: any statement, on a read-only, file-sandboxed connection.

    A write raises duckdb.Error naming the read-only database; the page shows it as is. Statements
    that name files (COPY, EXPORT, ATTACH) are refused before they run: the connection can read the
    E-step Parquet files behind the estep_samples view, and nothing may write them.
    """
    store.check_user_sql(sql)
    with store.reading(path, retries=OPEN_RETRIES, wait_s=OPEN_WAIT_S, sandbox=True) as con:
        result = con.execute(sql)
        return result.fetchdf() if result.description else pd.DataFrame()


def load(sql: str, *params: Any) -> pd.DataFrame:
    """A page's query: cached for a few seconds; an unavailable database stops the page with a
    message rather than a traceback."""
    try:
        return cached_query(str(resolve_db_path()), sql, tuple(params))
    except DatabaseUnavailable as exc:
        st.error(unavailable_message(exc))
        st.stop()


def load_optional(sql: str, *params: Any) -> pd.DataFrame:
    """``load`` for a section that a store written before its columns existed cannot show: empty
    instead of an error until the next ingest upgrades the store in place."""
    import duckdb

    try:
        return load(sql, *params)
    except duckdb.BinderException:
        return pd.DataFrame()


def load_estep_runs() -> pd.DataFrame:
    """The runs with E-step samples (ESTEP_RUNS_SQL's rows, from the list of files: ESTEP_RUNS_LISTED_SQL);
    while there are none the page stops with a note."""
    try:
        runs = load(ESTEP_RUNS_LISTED_SQL)
    except duckdb.CatalogException:  # a store not written since it copied the rows in: no list yet
        runs = load(ESTEP_RUNS_SQL)
    if runs.empty:
        st.info("No E-step samples yet: a bootstrap run writes them in its first E-step.")
        st.stop()
    return runs


def hash_bound(n_samples: int, limit: int) -> Optional[int]:
    """A bound on hash(doc_id, chunk_id) below which about 3 x ``limit`` of ``n_samples`` rows fall;
    None when the run is small enough to read whole."""
    return None if n_samples <= 4 * limit else int(2**64 * 3 * limit / n_samples)


def load_estep_samples(run_id: str, limit: int, n_samples: int, query=None) -> pd.DataFrame:
    """ESTEP_SAMPLES_SQL's rows, cheaper for a large run: the hashed query first, whose first
    ``limit`` rows are ESTEP_SAMPLES_SQL's whenever it returns ``limit`` of them (every row it
    leaves out hashes above all it keeps); the full query otherwise. ``query(sql, *params)``:
    :func:`load` by default."""
    query = query or load
    bound = hash_bound(n_samples, limit)
    if bound is not None:
        samples = query(ESTEP_SAMPLES_HASHED_SQL, run_id, bound, limit)
        if len(samples) == limit:
            return samples
    return query(ESTEP_SAMPLES_SQL, run_id, limit)


def unavailable_message(exc: DatabaseUnavailable) -> str:
    """What a page says when the database cannot be read; for a missing one, how to name another."""
    return f"{exc}; {NO_DB_HINT}" if isinstance(exc, store.StoreMissing) else str(exc)


def optuna_storage(db_path: Path | str, study: str, storage: Optional[str] = None):
    """The study's Optuna storage: an RDB URL recorded in ``studies.storage`` as is, else a journal
    file (that path, or ``<results>/optuna/<study>.journal`` beside the database). None if absent:
    opening a missing journal would create it, and the dashboard never writes."""
    import optuna  # only the sweep page needs it

    if storage and "://" in storage:
        return storage
    results = Path(db_path).parent
    candidates = [Path(storage), results / storage] if storage else []
    candidates.append(results / "optuna" / f"{study}.journal")
    for path in candidates:
        if path.is_file():
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return None


def _facet_columns(prefix: str = "r") -> str:
    # A run's swept value (params), else its resolved config, so unswept runs still facet.
    cols = []
    for key in FACETS.values():
        section, name = key.split(".", 1)
        cols.append(
            f"coalesce({prefix}.params->>'$.\"{key}\"', {prefix}.config->>'$.{section}.{name}')"
            f" AS \"{key}\""
        )
    return ",\n       ".join(cols)


# The store's `iterations` view (eval metrics per run and iteration) with the run's facets and the
# compute spent to reach each iteration's model: every stage up to it (cumulative). E-step compute
# alone is `gain_vs_estep_compute.cum_estep_flops` (PARETO_SQL).
ITERATIONS_SQL = f"""
WITH ev AS MATERIALIZED (SELECT * FROM iterations), cost AS (
    SELECT ev.run_id, ev.iteration,
           sum(s.tokens_in) FILTER (WHERE s.stage IN {TRAINING_STAGES}) AS train_tokens,
           sum(s.flops) AS flops, sum(s.gpu_hours) AS gpu_hours
    FROM ev LEFT JOIN stages s ON s.run_id = ev.run_id AND coalesce(s.iteration, 0) <= ev.iteration
    GROUP BY ALL
)
SELECT ev.run_id, ev.experiment, ev.kind, ev.study, ev.trial, ev.seed, r.status, r.started_at,
       coalesce(r.params->>'baseline', r.config->>'$.experiment.baseline') AS baseline,
       CAST(r.params AS VARCHAR) AS params,
       {_facet_columns()},
       ev.iteration, {", ".join(f"ev.{m}" for m in METRICS)},
       cost.* EXCLUDE (run_id, iteration)
FROM ev JOIN runs r USING (run_id) LEFT JOIN cost USING (run_id, iteration)
ORDER BY ev.run_id, ev.iteration
"""

RUNS_SQL = """
SELECT run_id, experiment, kind, study, trial, seed, status, started_at, ended_at,
       CAST(params AS VARCHAR) AS params, git_commit, git_dirty, run_dir, error
FROM runs ORDER BY started_at DESC NULLS LAST, run_id
"""
STUDIES_SQL = "SELECT * FROM studies ORDER BY created_at DESC NULLS LAST, study"
TRIALS_SQL = """
SELECT study, number, state, CAST(params AS VARCHAR) AS params, "values", run_id, error,
       started_at, ended_at FROM trials ORDER BY study, number
"""
REPLICATE_TRIALS_SQL = """
SELECT number, CAST(params AS VARCHAR) AS params, "values", values_se, seeds FROM trials
WHERE study = ? AND state = 'COMPLETE' AND seeds IS NOT NULL ORDER BY number
"""
ESTEP_METRICS_SQL = """
SELECT iteration, name, arg_max(value, step) AS value FROM metrics
WHERE run_id = ? AND stage = 'estep' GROUP BY ALL ORDER BY iteration, name
"""
SHARDS_SQL = """
SELECT iteration, shard, job_id, host, wall_s, tokens_in, tokens_out, flops FROM shards
WHERE run_id = ? AND stage = 'estep' ORDER BY iteration, shard
"""
ESTEP_RUNS_SQL = """
SELECT run_id, list(DISTINCT iteration ORDER BY iteration) AS iterations, count(*) AS n_samples
FROM estep_samples GROUP BY run_id ORDER BY run_id
"""
# The same from the store's list of E-step files and their footers' row counts, reading no sample:
# ESTEP_RUNS_SQL scans every row of every run.
ESTEP_RUNS_LISTED_SQL = """
SELECT run_id, list(DISTINCT iteration ORDER BY iteration) AS iterations, CAST(sum(n) AS BIGINT) AS n_samples
FROM (SELECT run_id, iteration, num_rows AS n FROM estep_files WHERE part IS NOT NULL
      UNION ALL SELECT run_id, iteration, count(*) FROM estep_samples_legacy GROUP BY ALL)
GROUP BY run_id ORDER BY run_id
"""
# The E-step page plots distributions, so a huge run is cut to a pseudo-random set of chunks:
# ordering by a hash of the chunk keeps its K samples together and the same chunks in every iteration.
ESTEP_SAMPLES_SQL = """
SELECT iteration, doc_id, chunk_id, sample_idx, thought_tokens, log_p_joint, log_q, log_w, selected
FROM estep_samples WHERE run_id = ?
ORDER BY hash(doc_id, chunk_id), doc_id, chunk_id, iteration, sample_idx LIMIT ?
"""
# The same rows for a run of many samples: a chunk's hash decides whether it can be among the first
# `limit` at all, so the scan drops the others before decoding the rest of their columns
# (load_estep_samples checks that enough are left, else runs ESTEP_SAMPLES_SQL).
ESTEP_SAMPLES_HASHED_SQL = """
SELECT iteration, doc_id, chunk_id, sample_idx, thought_tokens, log_p_joint, log_q, log_w, selected
FROM estep_samples WHERE run_id = ? AND hash(doc_id, chunk_id) < ?
ORDER BY hash(doc_id, chunk_id), doc_id, chunk_id, iteration, sample_idx LIMIT ?
"""
DOC_IDS_SQL = """
SELECT DISTINCT doc_id FROM estep_samples WHERE run_id = ? AND iteration = ? AND doc_id ILIKE ?
ORDER BY doc_id LIMIT 500
"""
DOC_SAMPLES_SQL = """
SELECT * EXCLUDE (run_id, model_path, model_key) FROM estep_samples
WHERE run_id = ? AND iteration = ? AND doc_id = ? ORDER BY chunk_id, sample_idx
"""
PARETO_SQL = """
SELECT g.run_id, r.experiment, r.study, r.trial, r.seed, g.iteration, g.accuracy,
       g.cum_estep_flops, CAST(r.params AS VARCHAR) AS params
FROM gain_vs_estep_compute g JOIN runs r USING (run_id)
WHERE g.kind = 'bootstrap' AND g.cum_estep_flops IS NOT NULL
QUALIFY g.iteration = max(g.iteration) OVER (PARTITION BY g.run_id)
"""


# ---- pure transforms of query results (tested by hand computations) -----------------------


SHORT_NAMES = {"estep.num_samples": "K", "estep.max_thought_tokens": "len", "data.raw_mix_ratio": "mix"}


def setting_label(row: pd.Series) -> str:
    """A run's setting: its experiment and swept params without the seed (seeds are averaged)."""
    params = row.get("params")
    parsed = json.loads(params) if isinstance(params, str) and params else {}
    order = list(SHORT_NAMES) + sorted(set(parsed) - set(SHORT_NAMES))
    parts = [f"{SHORT_NAMES.get(k, k.split('.')[-1])}={parsed[k]}" for k in order
             if k in parsed and k not in ("seed", "baseline")]
    return " ".join([str(row["experiment"])] + parts)


def numeric_facets(df: pd.DataFrame) -> pd.DataFrame:
    """JSON gives facet values as text; make them numbers where they all are, so 16 sorts after 2."""
    out = df.copy()
    for col in FACETS.values():
        if col in out.columns:
            as_num = pd.to_numeric(out[col], errors="coerce")
            if as_num.notna().sum() == out[col].notna().sum():
                out[col] = as_num
    return out


def reference_label(kind: str, baseline: Optional[str]) -> Optional[str]:
    if kind == "raw":
        return f"raw-{(baseline or 'data').removeprefix('raw_').replace('_', '-')}"
    if kind == "synthetic":
        return "synthetic thoughts"
    return None


def mean_se(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se, len(v)


def aggregate_over_seeds(df: pd.DataFrame, metric: str, x: str, facets: Sequence[str] = ()) -> pd.DataFrame:
    """Bootstrap runs: mean and standard error of ``metric`` over seeds per setting and iteration."""
    boot = df[df["kind"] == "bootstrap"]
    keys = ["setting", *facets, "iteration"]
    if boot.empty:
        return pd.DataFrame(columns=[*keys, "x", "mean", "se", "n"])
    # One label per distinct (experiment, params): a thousand runs share a few hundred.
    pairs = boot[["experiment", "params"]].drop_duplicates()
    labels = {(e, p): setting_label(pd.Series({"experiment": e, "params": p})) for e, p in pairs.itertuples(index=False)}
    boot = boot.assign(setting=[labels[k] for k in zip(boot["experiment"], boot["params"])])
    out = boot.groupby(keys, dropna=False, sort=True).agg(
        x=(x, "mean"), mean=(metric, "mean"), sd=(metric, "std"), n=(metric, "count"))
    out["se"] = out["sd"] / np.sqrt(out["n"])  # std of one seed is NaN: no error bar
    return out.reset_index()[[*keys, "x", "mean", "se", "n"]]


def reference_levels(df: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    """Reference lines: raw baselines and synthetic thoughts at their last iteration, and the
    warm start (bootstrap iteration 0, one value per seed since trials share it)."""
    rows = []
    final = df[df["kind"].isin(["raw", "synthetic"])]
    final = final[final["iteration"] == final.groupby("run_id")["iteration"].transform("max")]
    for label, group in final.groupby(
        [reference_label(k, b) for k, b in zip(final["kind"], final["baseline"])], sort=True
    ):
        rows.append((label, *mean_se(group[metric]), float(group[x].mean())))
    warm = df[(df["kind"] == "bootstrap") & (df["iteration"] == 0)]
    if not warm.empty:
        per_seed = warm.groupby("seed", dropna=False)[[metric, x]].mean()
        rows.append(("warm start", *mean_se(per_seed[metric]), float(per_seed[x].mean())))
    return pd.DataFrame(rows, columns=["label", "mean", "se", "n", "x"])


def top_settings(agg: pd.DataFrame, metric: str, n: int) -> list[str]:
    """The ``n`` settings with the best value at their last iteration (lower for NLL)."""
    if agg.empty:
        return []
    last = agg[agg["iteration"] == agg.groupby("setting")["iteration"].transform("max")]
    best = last.groupby("setting")["mean"].mean().sort_values(ascending=metric in LOWER_IS_BETTER)
    return list(best.index[:n])


CHUNK_KEYS = ["iteration", "doc_id", "chunk_id"]


def _group_logsumexp(log_w: pd.Series, keys: list[pd.Series]) -> pd.Series:
    m = log_w.groupby(keys).transform("max")
    return m + np.log(np.exp(log_w - m).groupby(keys).transform("sum"))


def chunk_stats(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (iteration, doc, chunk): ESS of the normalised weights, ELBO_1/2/4 (first n samples by
    index), and the selected sample's index (-1 if none is marked)."""
    s = samples.sort_values([*CHUNK_KEYS, "sample_idx"]).reset_index(drop=True)
    keys = [s[k] for k in CHUNK_KEYS]
    w = np.exp(s["log_w"] - _group_logsumexp(s["log_w"], keys))
    out = s.groupby(CHUNK_KEYS, sort=True).agg(k=("log_w", "size"))
    out["ess"] = 1.0 / (w**2).groupby(keys).sum()
    rank = s.groupby(CHUNK_KEYS).cumcount()
    for n in (1, 2, 4):
        first = s[rank < n]
        lse = _group_logsumexp(first["log_w"], [first[k] for k in CHUNK_KEYS])
        out[f"elbo_{n}"] = (lse - np.log(n)).groupby([first[k] for k in CHUNK_KEYS]).first()
        out.loc[out["k"] < n, f"elbo_{n}"] = np.nan
    picked = s[s["selected"].astype(bool)].groupby(CHUNK_KEYS)["sample_idx"].first()
    out["selected_idx"] = picked.reindex(out.index).fillna(-1).astype(int)
    return out.reset_index()


def with_weights(samples: pd.DataFrame) -> pd.DataFrame:
    """Add each sample's normalised importance weight (softmax of log w within its chunk)."""
    out = samples.copy()
    keys = [c for c in CHUNK_KEYS if c in out.columns]
    shifted = out["log_w"] - out.groupby(keys)["log_w"].transform("max")
    out["weight"] = np.exp(shifted) / np.exp(shifted).groupby([out[k] for k in keys]).transform("sum")
    return out


def replicate_table(trials: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per trial run over replicate seeds: its params, and per objective the mean over
    seeds (``<name>``) and its standard error (``<name>_se``)."""
    rows = []
    for t in trials.itertuples(index=False):
        row = {"trial": t.number, "params": t.params, "seeds": len(t.seeds)}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values is not None else None
            row[f"{name}_se"] = t.values_se[i] if t.values_se is not None else None
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", "params", "seeds", *[c for n in names for c in (n, f"{n}_se")]])


def pareto_mask(x: pd.Series, y: pd.Series) -> pd.Series:
    """True where no other point has x <= and y >= with one strict (less compute, more accuracy)."""
    xs, ys = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
    dominated = ((xs[None, :] <= xs[:, None]) & (ys[None, :] >= ys[:, None])
                 & ((xs[None, :] < xs[:, None]) | (ys[None, :] > ys[:, None]))).any(axis=1)
    return pd.Series(~dominated, index=x.index)
