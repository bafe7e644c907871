"""The experiment dashboard: compare raw, synthetic-thought and bootstrap runs across EM iterations.

    python -m streamlit run dashboard/app.py                              # results/platform.duckdb
    python -m streamlit run dashboard/app.py -- --db results/platform.duckdb
    PLATFORM_DB=/path/platform.duckdb python -m streamlit run dashboard/app.py

Run from the repository root (our package ``platform`` shadows the stdlib module). Streamlit binds
127.0.0.1 unless told otherwise (see .streamlit/config.toml or --server.address). The database is
opened read-only, one short connection per query, so a sweep's ingester can keep writing.
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))
if not hasattr(sys.modules.get("platform", sys), "__path__"):
    # the stdlib `platform` came first (the `streamlit` script): our package re-executes it, so its
    # earlier importers keep every attribute (docs/design.md "The name `platform`")
    sys.modules.pop("platform", None)

import streamlit as st  # noqa: E402

from dashboard import data  # noqa: E402

st.set_page_config(page_title="Latent-thought experiments", page_icon=":material/science:", layout="wide")

# The page scripts live in views/, not pages/: a pages/ folder beside the main script switches
# Streamlit's front end into its legacy multipage mode (file names in the sidebar, page scripts run
# without this file) for a session that opens a page URL first.
PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/table:", default=True),
    st.Page("views/iterations.py", title="Across iterations", icon=":material/trending_up:"),
    st.Page("views/sweep.py", title="Sweep analysis", icon=":material/tune:"),
    st.Page("views/estep.py", title="E-step diagnostics", icon=":material/query_stats:"),
    st.Page("views/thoughts.py", title="Thought browser", icon=":material/psychology:"),
    st.Page("views/sql.py", title="SQL", icon=":material/terminal:"),
]

page = st.navigation(PAGES)
st.sidebar.caption(f"Database: `{data.resolve_db_path()}` (read-only)")
page.run()
