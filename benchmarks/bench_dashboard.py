"""The across-iterations page with 1,000 runs in the database: target under 2 s.

    python benchmarks/bench_dashboard.py [--runs 1000] [--repeat 3]

Builds a synthetic results folder (tests/dashboard/synthetic.py: bootstrap settings x 3 seeds plus
raw/synthetic references, 3 EM iterations each), then times, per x axis:
  query     ITERATIONS_SQL on a fresh read-only connection (what a cache miss costs)
  tables    numeric facets, mean/SE over seeds, reference levels, top settings
  figure    figures.across_iterations and its JSON (what Streamlit sends to the browser)
then the whole page in Streamlit's AppTest (script run, cold cache) for the default view, and with
--browser the wall time from opening the page URL in headless Chromium to the chart drawn
(a running `streamlit run` server, needs scripts/install_browser.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import timed  # noqa: E402
from dashboard import data, figures  # noqa: E402
from tests.dashboard.synthetic import bootstrap_settings, build_synthetic_results  # noqa: E402

SEEDS = (0, 1, 2)
TARGET_S = 2.0


def page_pipeline(db: Path, x: str, facet: str | None) -> dict[str, float]:
    runs, t_query = timed(lambda: data.numeric_facets(data.run_query(db, data.ITERATIONS_SQL)))

    def tables():
        agg = data.aggregate_over_seeds(runs, "accuracy", x, [facet] if facet else [])
        refs = data.reference_levels(runs, "accuracy", x)
        return agg[agg["setting"].isin(data.top_settings(agg, "accuracy", 8))], refs

    (agg, refs), t_tables = timed(tables)
    fig, t_fig = timed(lambda: figures.across_iterations(agg, refs, "accuracy", x, facet).to_json())
    return {"query": t_query, "tables": t_tables, "figure": t_fig}


def apptest_page(db: Path) -> float:
    from streamlit.testing.v1 import AppTest

    os.environ["PLATFORM_DB"] = str(db)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/iterations.py")
    data.cached_query.clear()
    t0 = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - t0
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.get("plotly_chart")) == 1
    return elapsed


def browser_page(db: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds to the drawn chart: opening the URL in a new tab (loads Streamlit's and plotly's
    JavaScript too), and switching to the page from the sidebar in an open app."""
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--", "--db", str(db)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        chart = "[data-testid=stPlotlyChart] .js-plotly-plot .scatterlayer"
        fresh, switch = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            for i in range(repeat + 1):  # the first round warms the server's imports: not counted
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t0 = time.perf_counter()
                page.goto(f"{url}/iterations")
                page.wait_for_selector(chart, timeout=60_000)
                t1 = time.perf_counter()
                # What a user does: from another page to this one in the sidebar.
                page.get_by_role("link", name="Overview").click()
                page.get_by_role("heading", name="Overview").first.wait_for(timeout=60_000)
                t2 = time.perf_counter()
                page.get_by_role("link", name="Across iterations").click()
                page.get_by_role("heading", name="Across iterations").first.wait_for(timeout=60_000)
                page.wait_for_selector(chart, timeout=60_000)
                if i:
                    fresh.append(t1 - t0)
                    switch.append(time.perf_counter() - t2)
                page.close()
            browser.close()
        return fresh, switch
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = ap.parse_args()
    n_settings = (args.runs - 3 * len(SEEDS)) // len(SEEDS)
    with tempfile.TemporaryDirectory() as tmp:
        db, t_build = timed(lambda: build_synthetic_results(
            Path(tmp), bootstrap_settings(n_settings), seeds=SEEDS, iterations=3, estep_samples=False, journal=False))
        n_runs = data.run_query(db, "SELECT count(*) AS n FROM runs")["n"].item()
        print(f"database: {n_runs} runs, {n_settings} bootstrap settings x {len(SEEDS)} seeds (built in {t_build:.1f} s)")
        worst = 0.0
        for x, facet in [("iteration", None), ("flops", "estep.num_samples"), ("train_tokens", "estep.max_thought_tokens")]:
            parts = [page_pipeline(db, x, facet) for _ in range(args.repeat)]
            med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
            total = sum(med.values())
            worst = max(worst, total)
            print(f"x={x:<13} facet={str(facet):<25} " + "  ".join(f"{k} {v * 1000:6.0f} ms" for k, v in med.items())
                  + f"  total {total * 1000:6.0f} ms")
        page = statistics.median(apptest_page(db) for _ in range(args.repeat))
        print(f"AppTest: across-iterations page script, cold cache: {page * 1000:.0f} ms")
        slowest = max(worst, page)
        if args.browser:
            fresh, switch = (statistics.median(t) for t in browser_page(db, args.repeat))
            print(f"Chromium: sidebar switch to the page until its chart is drawn: {switch * 1000:.0f} ms "
                  f"(a new tab, loading the app's JavaScript first: {fresh * 1000:.0f} ms)")
            slowest = max(slowest, switch)
        verdict = "OK" if slowest < TARGET_S else "OVER"
        print(f"{verdict}: slowest {slowest:.2f} s against a {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
