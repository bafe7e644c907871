"""Every dashboard page, run headless by Streamlit's AppTest on the fixture database.

AppTest replaces sys.modules['__main__'], so this file pickles nothing.
"""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 60


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def test_overview_lists_runs_and_filters_by_kind(dashboard_env, facts):
    at = open_page()
    assert at.title[0].value == "Overview"
    total = int(at.metric[0].value)
    assert total > 0
    assert len(charts(at)) == 1 + facts["has_trial_values"]  # runs by kind (+ trial objectives)
    kind = sorted(facts["kinds"])[0]
    at.multiselect(key="ov_kind").select(kind).run()
    assert not at.exception
    runs_table = at.dataframe[0].value
    assert set(runs_table["kind"]) == {kind}
    assert int(at.metric[0].value) == len(runs_table) <= total
    assert (len(runs_table) < total) == (len(facts["kinds"]) > 1)


def trace_names(chart) -> list[str]:
    return [trace.get("name", "") for trace in json.loads(chart.proto.spec)["data"]]


def test_iterations_page_plots_bootstrap_with_references(dashboard_env, facts):
    at = open_page("views/iterations.py")
    (chart,) = charts(at)
    names = trace_names(chart)
    for ref in facts["references"]:
        assert any(n.startswith(ref + " (n=") for n in names), (ref, names)
    bootstrap_lines = [n for n in names if n.split(" ")[0] in facts["bootstrap_experiments"]]
    assert bool(bootstrap_lines) == bool(facts["bootstrap_experiments"])


@pytest.mark.parametrize("x", ["train_tokens", "flops", "gpu_hours"])
def test_iterations_page_switches_x_axis_and_facets(dashboard_env, facts, x):
    if not facts["bootstrap_experiments"]:
        pytest.skip("the fixture has no evaluated bootstrap run")
    at = open_page("views/iterations.py")
    at.radio(key="it_x").set_value(x).run()
    at.selectbox(key="it_fcol").set_value("K (E-step samples)").run()
    assert not at.exception, [e.message for e in at.exception]
    spec = json.loads(charts(at)[0].proto.spec)
    title = spec["layout"]["xaxis"]["title"]["text"]
    assert "cumulative" in title or (title == "EM iteration" and at.warning)  # no stage recorded x
    assert any(a["text"].startswith("estep.num_samples=") for a in spec["layout"]["annotations"])


def test_sweep_page_draws_optuna_and_pareto(dashboard_env, facts):
    if not facts["studies"]:
        pytest.skip("the fixture has no study")
    at = open_page("views/sweep.py")
    planned = 4 + (facts["n_objectives"] > 1)  # history, importances, parallel, slices (+ Optuna Pareto)
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in charts(at)]
    drawn = [t for t in titles if not t.startswith("Pareto front:")]  # those from optuna.visualization
    assert ("Optimization History Plot" in drawn) == (facts["complete_trials"] > 0)
    assert ("Hyperparameter Importances" in drawn) == (facts["complete_trials"] > 1)
    assert len(drawn) + sum("unavailable" in i.value for i in at.info) == planned
    assert at.subheader[-1].value == "Pareto front: accuracy vs E-step compute"


def test_estep_page_shows_diagnostics(dashboard_env, facts):
    if not facts["has_estep"]:
        pytest.skip("the fixture has no E-step samples")
    at = open_page("views/estep.py")
    # + shard wall times, thought correctness and the chunk-type split (ESS, ELBO) where the store has them
    assert len(charts(at)) == 5 + facts["has_shards"] + facts["has_correctness"] + 2 * facts["has_chunk_types"]
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts(at)]
    assert ("E-step shards: wall time" in titles) == facts["has_shards"]
    assert ("Thoughts equal to the oracle derivation" in titles) == facts["has_correctness"]
    assert ("ESS by chunk type" in titles) == facts["has_chunk_types"]
    k = int(at.metric[1].value)
    assert 1.0 <= float(at.metric[2].value.split("/")[0]) <= k


def test_thought_browser_shows_selected_thought_per_chunk(dashboard_env, facts):
    if not facts["has_estep"]:
        pytest.skip("the fixture has no E-step samples")
    at = open_page("views/thoughts.py")
    assert len(charts(at)) == 1
    chunks = [s.value for s in at.subheader]
    assert chunks and all(c.startswith("Chunk ") for c in chunks)
    assert len(at.success) == len(chunks)  # each chunk's selected sample
    if facts["has_chunk_text"]:  # the chunk X above its thoughts
        assert len(at.text) == len(chunks) and all(t.value.strip() for t in at.text)
    table = at.dataframe[0].value
    assert abs(table["weight"].sum() - 1.0) < 1e-9
    assert table["selected"].sum() == 1


def test_thought_browser_search_with_no_match_says_so(dashboard_env, facts):
    if not facts["has_estep"]:
        pytest.skip("the fixture has no E-step samples")
    at = open_page("views/thoughts.py")
    at.text_input(key="th_search").input("'; DROP TABLE runs; --").run()
    assert not at.exception
    assert "No document id contains" in at.info[0].value


def test_sql_page_runs_a_query(dashboard_env, facts):
    at = open_page("views/sql.py")
    at.text_area(key="sql_text").input("SELECT kind, count(*) AS n FROM runs GROUP BY kind ORDER BY kind").run()
    at.button(key="sql_run").click().run()
    assert not at.error
    result = at.dataframe[0].value
    assert list(result["kind"]) == sorted(facts["kinds"])


@pytest.mark.parametrize("statement", ["DELETE FROM runs", "CREATE TABLE x (a INT)",
                                       "COPY runs TO '/tmp/leak.csv'"])
def test_sql_page_refuses_writes_with_a_clear_message(dashboard_env, statement):
    at = open_page("views/sql.py")
    at.text_area(key="sql_text").input(statement).run()
    at.button(key="sql_run").click().run()
    assert not at.exception
    message = at.error[0].value
    assert message.startswith("Query failed:")
    assert "read-only" in message or "file system operations are disabled" in message


def test_missing_database_is_a_clear_message(tmp_path, monkeypatch):
    missing = tmp_path / "nope.duckdb"
    monkeypatch.setenv("PLATFORM_DB", str(missing))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    message = at.error[0].value
    assert str(missing) in message and "no results database yet" in message and "--db PATH" in message


def test_overview_follows_a_sweep_that_writes_meanwhile(results_db, tmp_path, monkeypatch):
    import shutil
    import subprocess
    import sys

    from dashboard import data

    db = tmp_path / "platform.duckdb"
    shutil.copy(results_db, db)
    monkeypatch.setenv("PLATFORM_DB", str(db))
    at = open_page()
    before, running = int(at.metric[0].value), int(at.metric[1].value)
    # The ingester adds a run and keeps the file locked a moment longer: the page must wait it out.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time; c = duckdb.connect(%r); "
        "c.execute(\"INSERT INTO runs (run_id, experiment, kind, status) VALUES ('new', 'bootstrap', 'bootstrap', 'running')\"); "
        "print('held', flush=True); time.sleep(0.6); c.close()") % str(db)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "held"
    data.cached_query.clear()  # what the cache's few-second TTL does on its own
    at.run()
    writer.wait()
    assert not at.exception and not at.error
    assert int(at.metric[0].value) == before + 1
    assert int(at.metric[1].value) == running + 1  # the new run is running
