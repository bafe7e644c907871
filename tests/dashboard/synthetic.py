"""A results folder that mimics a sweep: platform.duckdb (platform/schema.sql) plus the Optuna
journal, with rows shaped like the ones the pipeline writes.

Used by the dashboard tests until they run on a real small run (PLATFORM_FIXTURE_RESULTS), and by
benchmarks/bench_dashboard.py to fill the database with 1,000 runs. Numbers are seeded, so every
build of the same arguments is identical; the effects (bootstrap accuracy rises with iterations
and with K) are built in so figures have something to show.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import optuna
import pandas as pd

from platform import samples
from platform.store import SCHEMA

STUDY = "em_compute"
T0 = datetime(2025, 3, 1, 9, 0, 0)


def bootstrap_settings(n: int) -> list[dict]:
    """The first ``n`` points of a K x thought-length x mix-ratio grid."""
    grid = itertools.product([1, 2, 4, 8], [16, 32, 64, 128, 256], [0.05 * i for i in range(17)])
    return [
        {"estep.num_samples": k, "estep.max_thought_tokens": t, "data.raw_mix_ratio": round(m, 3)}
        for k, t, m in itertools.islice(grid, n)
    ]


def build_synthetic_results(
    results: Path,
    settings: list[dict] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    iterations: int = 3,
    docs: int = 3,
    chunks: int = 2,
    estep_samples: bool = True,
    journal: bool = True,
) -> Path:
    """Write ``results/platform.duckdb`` (and ``results/optuna/<study>.journal``); return the db path."""
    settings = settings if settings is not None else [
        {"estep.num_samples": k, "estep.max_thought_tokens": t, "data.raw_mix_ratio": 0.0}
        for k, t in itertools.product([2, 4], [32, 64])
    ]
    rng = np.random.default_rng(0)
    results.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {t: [] for t in ("runs", "trials", "stages", "metrics", "estep_samples")}
    tokens_per_mstep = 100_000

    def add_run(run_id, experiment, kind, seed, params, trial=None, start=T0):
        config = {"experiment": {"name": experiment, "kind": kind, "baseline": params.get("baseline", "none")},
                  "estep": {"num_samples": 4, "max_thought_tokens": 64}, "data": {"raw_mix_ratio": 0.0}, "seed": seed}
        rows["runs"].append((run_id, experiment, kind, STUDY if trial is not None else None, trial, seed,
                             json.dumps(params), json.dumps(config), "abc1234", False, "completed", None,
                             f"results/runs/{run_id}", start, start + timedelta(hours=1)))

    def add_stage(run_id, stage, it, tokens_in, flops, start):
        rows["stages"].append((run_id, stage, it, f"{stage}{it}{run_id}"[-16:], "1", "completed", False, start,
                               start + timedelta(minutes=5), 300.0, tokens_in, tokens_in // 10, flops,
                               flops / 3.6e17, f"artifacts/{stage}/x"))

    def add_eval(run_id, it, acc, seed):
        nll = 2.0 - acc
        for name, value in [("accuracy", acc), ("nll", nll), ("elbo_1", -nll - 0.3), ("elbo_2", -nll - 0.2),
                            ("elbo_4", -nll - 0.1), ("thought_tokens_mean", 30.0 + seed)]:
            rows["metrics"].append((run_id, it, "eval", name, 0, float(value)))

    # Reference runs: raw baselines and synthetic thoughts (one eval each), per seed.
    for seed in seeds:
        for experiment, kind, params, acc, tokens in [
            ("raw_baseline", "raw", {"baseline": "raw_token_match"}, 0.30, 4 * tokens_per_mstep),
            ("raw_baseline", "raw", {"baseline": "raw_flop_match"}, 0.35, 6 * tokens_per_mstep),
            ("synthetic_thoughts", "synthetic", {}, 0.55, 4 * tokens_per_mstep),
        ]:
            run_id = f"{experiment}-{params.get('baseline', 'syn')}-s{seed}"
            add_run(run_id, experiment, kind, seed, params)
            add_stage(run_id, "prepare_data", None, 0, 0.0, T0)
            add_stage(run_id, "mstep", 1, tokens, 6.0 * 6e5 * tokens, T0)
            add_eval(run_id, 1, acc + 0.02 * seed, seed)

    trial = 0
    for s_idx, params in enumerate(settings):
        k, length = params["estep.num_samples"], params["estep.max_thought_tokens"]
        for seed in seeds:
            run_id = f"bootstrap-t{trial:04d}-s{seed}"
            start = T0 + timedelta(minutes=10 * trial)
            add_run(run_id, "bootstrap", "bootstrap", seed, params, trial=trial, start=start)
            add_stage(run_id, "prepare_data", None, 0, 0.0, start)
            add_stage(run_id, "warm_start", 0, tokens_per_mstep, 6.0 * 6e5 * tokens_per_mstep, start)
            acc = 0.40 + 0.01 * seed
            add_eval(run_id, 0, acc, seed)
            for it in range(1, iterations + 1):
                estep_tokens = docs * chunks * k * length
                add_stage(run_id, "estep", it, estep_tokens, 2.0 * 6e5 * estep_tokens * 50, start)
                add_stage(run_id, "mstep", it, tokens_per_mstep, 6.0 * 6e5 * tokens_per_mstep, start)
                acc = min(0.95, acc + 0.03 * np.log2(2 * k) + float(rng.normal(0, 0.01)))
                add_eval(run_id, it, acc, seed)
                for name, value in [("ess", k * 0.6), ("log_w_mean", -5.0 + it), ("selected_idx_mean", (k - 1) / 2),
                                    ("elbo_1", -3.0 + 0.2 * it), ("elbo_2", -2.9 + 0.2 * it), ("elbo_4", -2.8 + 0.2 * it),
                                    ("thought_tokens_mean", length * 0.6),
                                    ("thought_correct_selected", min(1.0, 0.2 * it * np.log2(2 * k))),
                                    ("thought_correct_random", 0.15 * it), ("thought_correct_best_of_k", min(1.0, 0.3 * it * k)),
                                    ("ess_annotated", k * 0.5), ("ess_unannotated", k * 0.8),
                                    ("elbo_4_annotated", -4.0 + 0.3 * it), ("elbo_4_unannotated", -1.5 + 0.1 * it)]:
                    rows["metrics"].append((run_id, it, "estep", name, 0, float(value)))
                for step in range(0, 50, 10):
                    rows["metrics"].append((run_id, it, "mstep", "loss", step, 3.0 - 0.02 * step - 0.1 * it))
                if estep_samples:
                    for d, c in itertools.product(range(docs), range(chunks)):
                        log_w = rng.normal(-4.0 + it, 1.5, size=k)
                        w = np.exp(log_w - log_w.max())
                        pick = int(rng.choice(k, p=w / w.sum()))
                        for i in range(k):
                            n_tok = int(rng.integers(4, length + 1))
                            rows["estep_samples"].append(
                                (run_id, it, f"doc{d:03d}", c, i, f"thought {i} for doc{d} chunk {c}: 3*7=21. 21+5=26.",
                                 n_tok, float(log_w[i] - 2.0), -2.0, float(log_w[i]), i == pick, f"artifacts/mstep/{it - 1}",
                                 f"Chunk {c} of doc{d}: what is 3*7+5? It is 26.", n_tok < length))
            value = (acc, 2.0 * 6e5 * docs * chunks * k * length * 50 * iterations)
            rows["trials"].append((STUDY, trial, "COMPLETE", json.dumps(params), list(value), run_id, None,
                                   start, start + timedelta(hours=1)))
            trial += 1

    db = results / "platform.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute(SCHEMA.read_text())
    con.execute("INSERT INTO studies (study, experiment, directions, storage, created_at, n_trials) "
                "VALUES (?, 'bootstrap', ?, ?, ?, ?)",
                [STUDY, ["maximize", "minimize"], str(results / "optuna" / f"{STUDY}.journal"), T0, trial])
    for table, data in rows.items():
        if data and table != "estep_samples":  # those stay in Parquet files (_write_samples)
            # the rows fill the table's first columns; columns added to the schema later stay NULL
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()][:len(data[0])]
            frame = pd.DataFrame(data, columns=cols)  # noqa: F841 (read by DuckDB's replacement scan)
            names = ", ".join('"' + c + '"' for c in cols)
            con.execute(f"INSERT INTO {table} ({names}) SELECT * FROM frame")
    _write_samples(con, results, rows["estep_samples"])
    con.close()
    if journal:
        _write_journal(results, rows["trials"])
    return db


SAMPLE_COLUMNS = ["run_id", "iteration", "doc_id", "chunk_id", "sample_idx", "thought", "thought_tokens",
                  "log_p_joint", "log_q", "log_w", "selected", "model_path", "chunk_text", "finished"]


def _write_samples(con: duckdb.DuckDBPyConnection, results: Path, rows: list[tuple]) -> None:
    """E-step samples as the pipeline leaves them: one Parquet file per (run, iteration) in its stage
    folder, listed in the store and read through the estep_samples view (platform/samples.py)."""
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    for (run_id, it), part in frame.groupby(["run_id", "iteration"], sort=True):
        art = results / "artifacts" / "estep" / f"{run_id}-{it}"
        art.mkdir(parents=True, exist_ok=True)
        part.drop(columns=["run_id", "iteration", "model_path"]).to_parquet(art / "estep_samples.parquet", index=False)
        samples.register(con, results, art, {"run_id": run_id, "iteration": int(it), "stage": "estep",
                                             "cache_key": f"{run_id}-{it}", "model_path": part["model_path"].iloc[0],
                                             "model_key": None})
    samples.refresh(con, results)


def _write_journal(results: Path, trials: list[tuple]) -> None:
    path = results / "optuna" / f"{STUDY}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=storage, directions=["maximize", "minimize"])
    dists = {
        "estep.num_samples": optuna.distributions.CategoricalDistribution([1, 2, 4, 8]),
        "estep.max_thought_tokens": optuna.distributions.IntDistribution(16, 256, log=True),
        "data.raw_mix_ratio": optuna.distributions.FloatDistribution(0.0, 0.6),
    }
    for _, number, state, params, values, *_ in trials:
        study.add_trial(optuna.trial.create_trial(params=json.loads(params), distributions=dists, values=values))
    study.add_trial(optuna.trial.create_trial(
        params={"estep.num_samples": 8, "estep.max_thought_tokens": 256, "data.raw_mix_ratio": 0.0},
        distributions=dists, state=optuna.trial.TrialState.FAIL))
