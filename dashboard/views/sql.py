"""SQL: a read-only query box over the results database, with CSV download.

The connection is read-only and sandboxed (no file access beyond the E-step files the
estep_samples view reads, settings locked), so a write fails with DuckDB's own message and a COPY
or ATTACH is refused; neither changes anything.
"""

import duckdb
import streamlit as st

from dashboard import data

MAX_ROWS_SHOWN = 10_000
EXAMPLES = {
    "Accuracy by iteration": "SELECT * FROM accuracy_by_iteration",
    "Gain vs E-step compute": "SELECT kind, iteration, params, cum_estep_flops, gain FROM gain_vs_estep_compute\n"
                              "WHERE gain IS NOT NULL ORDER BY cum_estep_flops",
    "Stage wall time": "SELECT stage, count(*) AS n, sum(wall_s) AS wall_s, sum(gpu_hours) AS gpu_hours\n"
                       "FROM stages GROUP BY stage ORDER BY wall_s DESC",
    # DISTINCT: the views are listed twice, the file's and the temporary ones the store defines over them
    "Tables": "SELECT DISTINCT name FROM (SHOW TABLES) ORDER BY name",
}

st.title("SQL")


def _use_example() -> None:
    st.session_state.sql_text = EXAMPLES[st.session_state.sql_example]


st.selectbox("Example", list(EXAMPLES), key="sql_example", on_change=_use_example)
if "sql_text" not in st.session_state:
    _use_example()
sql = st.text_area("Query (read-only)", height=140, key="sql_text")
if st.button("Run", type="primary", key="sql_run") and sql.strip():
    # Kept in session state so the result survives the reruns other widgets cause.
    try:
        st.session_state.sql_result = data.run_user_sql(data.resolve_db_path(), sql)
        st.session_state.sql_error = None
    except data.DatabaseUnavailable as exc:
        st.session_state.sql_result, st.session_state.sql_error = None, data.unavailable_message(exc)
    except duckdb.Error as exc:
        hint = " The dashboard's connection is read-only: nothing was changed." if "read-only" in str(exc) else ""
        st.session_state.sql_result, st.session_state.sql_error = None, f"Query failed: {exc}{hint}"

if st.session_state.get("sql_error"):
    st.error(st.session_state.sql_error)
result = st.session_state.get("sql_result")
if result is not None:
    more = f"; showing the first {MAX_ROWS_SHOWN}" if len(result) > MAX_ROWS_SHOWN else ""
    st.caption(f"{len(result)} rows{more}")
    st.dataframe(result.head(MAX_ROWS_SHOWN), hide_index=True)
    st.download_button("Download CSV", result.to_csv(index=False), file_name="query.csv", mime="text/csv",
                       key="sql_csv", on_click="ignore")
