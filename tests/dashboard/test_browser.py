"""End to end in a real headless Chromium: `streamlit run` on 127.0.0.1, every page opened, its
charts found, a screenshot of each saved to screenshots/ (git-ignored) for a person to look at.

Needs Debian's chromium (found on PATH, or named by $CHROMIUM) and the playwright package:
scripts/install_browser.sh. Where either is missing the module skips and says which.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
SHOTS = ROOT / "screenshots"
# url path -> page title; a deep link first: a fresh server must still route it through app.py
PAGES = {"iterations": "Across iterations", "": "Overview", "sweep": "Sweep analysis",
         "estep": "E-step diagnostics", "thoughts": "Thought browser", "sql": "SQL"}


def expected_charts(path: str, facts: dict) -> int:
    """Plotly charts the page must show for what the fixture holds (see conftest.facts)."""
    return {"iterations": 1, "": 1 + facts["has_trial_values"], "sweep": 1 if facts["studies"] and facts["complete_trials"] else 0,
            "estep": (5 + facts["has_shards"]) * facts["has_estep"], "thoughts": 1 * facts["has_estep"], "sql": 0}[path]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
_MISSING = [what for what, absent in [
    ("the playwright package", sync_playwright is None),
    (f"chromium (CHROMIUM={CHROMIUM})" if os.environ.get("CHROMIUM") else "chromium on PATH",
     CHROMIUM is None or not os.access(CHROMIUM, os.X_OK)),
] if absent]
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    bool(_MISSING), reason=f"no browser here: needs {' and '.join(_MISSING)} (run scripts/install_browser.sh)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(results_db, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none",
         "--", "--db", str(results_db)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start on {url} (exit code {proc.poll()}); log: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.mark.parametrize("path", list(PAGES))
def test_page_renders_its_charts(server, browser, facts, path):
    n_charts, title = expected_charts(path, facts), PAGES[path]
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/{path}", wait_until="domcontentloaded")
    page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
    if path == "sql":
        page.get_by_role("button", name="Run").click()
        page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=60_000)
    else:
        page.wait_for_function(
            f"document.querySelectorAll('[data-testid=stPlotlyChart] .js-plotly-plot').length >= {n_charts}",
            timeout=60_000)
    page.wait_for_timeout(1500)  # let plotly finish drawing before the screenshot
    nav = page.locator("[data-testid=stSidebarNav]").inner_text()
    assert "Across iterations" in nav and "Thought browser" in nav, nav  # st.navigation titles, not file names
    assert page.locator("[data-testid=stException]").count() == 0, page.locator("[data-testid=stException]").first.inner_text()
    assert page.locator(".js-plotly-plot").count() >= n_charts
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)
    assert not errors, errors
    page.close()
