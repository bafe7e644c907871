"""The results folder the dashboard tests read.

The page tests read a real small run of the platform (the ``real_results`` session fixture of
tests/conftest.py; $PLATFORM_FIXTURE_RESULTS may name one built earlier). A synthetic folder that
mimics a larger sweep (tests/dashboard/synthetic.py) serves the pure table functions.
"""

from pathlib import Path

import pytest

from tests.dashboard.synthetic import build_synthetic_results


@pytest.fixture(scope="session")
def results_db(real_results) -> Path:
    """Path of the platform.duckdb of a real small run of the platform (tests/realrun.py, or the
    folder named by $PLATFORM_FIXTURE_RESULTS)."""
    db = Path(real_results) / "platform.duckdb"
    if not db.is_file():
        pytest.fail(f"{real_results} holds no platform.duckdb")
    return db


@pytest.fixture(scope="session")
def synthetic_db(tmp_path_factory) -> Path:
    """A hand-built results folder with many settings and seeds, for the pure table functions."""
    return build_synthetic_results(tmp_path_factory.mktemp("results"))


@pytest.fixture
def dashboard_env(results_db, monkeypatch):
    """Point the app at the fixture database the way a user would (environment variable)."""
    monkeypatch.setenv("PLATFORM_DB", str(results_db))
    return results_db


@pytest.fixture(scope="session")
def facts(results_db) -> dict:
    """What the fixture holds, read independently of the dashboard, so page tests expect the right
    elements whether it came from a real run or the synthetic builder."""
    import duckdb

    con = duckdb.connect(str(results_db), read_only=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    kinds = {k for (k,) in q("SELECT DISTINCT kind FROM runs")}
    refs = {f"raw-{(b or 'data').removeprefix('raw_').replace('_', '-')}" for (b,) in q(
        "SELECT DISTINCT coalesce(params->>'baseline', config->>'$.experiment.baseline') FROM runs r "
        "WHERE kind = 'raw' AND run_id IN (SELECT run_id FROM metrics WHERE stage = 'eval')")}
    if q("SELECT 1 FROM runs WHERE kind = 'synthetic' AND run_id IN (SELECT run_id FROM metrics WHERE stage = 'eval')"):
        refs.add("synthetic thoughts")
    if q("SELECT 1 FROM runs JOIN metrics USING (run_id) WHERE kind = 'bootstrap' AND stage = 'eval' AND iteration = 0"):
        refs.add("warm start")
    facts = dict(
        kinds=kinds,
        references=refs,
        bootstrap_experiments={e for (e,) in q(
            "SELECT DISTINCT experiment FROM runs JOIN metrics USING (run_id) WHERE kind = 'bootstrap' AND stage = 'eval'")},
        studies=[s for (s,) in q("SELECT study FROM studies ORDER BY created_at DESC NULLS LAST, study")],
        n_objectives=(q("SELECT len(directions) FROM studies ORDER BY created_at DESC NULLS LAST, study LIMIT 1") or [(0,)])[0][0],
        complete_trials=(q("SELECT count(*) FROM trials WHERE state = 'COMPLETE' AND study = (SELECT study FROM studies "
                           "ORDER BY created_at DESC NULLS LAST, study LIMIT 1)"))[0][0],
        has_estep=bool(q("SELECT 1 FROM estep_samples LIMIT 1")),
        has_chunk_text=bool(q("SELECT 1 FROM estep_samples WHERE chunk_text IS NOT NULL LIMIT 1")),
        has_shards=bool(q("SELECT 1 FROM shards WHERE run_id = (SELECT min(run_id) FROM estep_samples) LIMIT 1")),
        # the E-step page's first run: thought correctness and the chunk-type split where it logged them
        has_correctness=bool(q("SELECT 1 FROM metrics WHERE stage = 'estep' AND name = 'thought_correct_selected' "
                               "AND run_id = (SELECT min(run_id) FROM estep_samples) LIMIT 1")),
        has_chunk_types=bool(q("SELECT 1 FROM metrics WHERE stage = 'estep' AND name = 'ess_annotated' "
                               "AND run_id = (SELECT min(run_id) FROM estep_samples) LIMIT 1")),
        has_trial_values=bool(q("SELECT 1 FROM trials WHERE \"values\" IS NOT NULL LIMIT 1")),
    )
    con.close()
    return facts
