"""Across iterations: a metric against EM iteration (or compute) for bootstrap settings, mean and
standard error over seeds, with raw-token-match, raw-FLOP-match, synthetic thoughts and the warm
start as reference lines."""

import streamlit as st

from dashboard import data, figures

st.title("Across iterations")

runs = data.numeric_facets(data.load(data.ITERATIONS_SQL))
if runs.empty:
    st.info("No evaluated runs yet: the eval stage writes the metrics this page plots.")
    st.stop()

available = [m for m in data.METRICS if runs[m].notna().any()] or data.METRICS
with st.sidebar:
    metric = st.selectbox("Metric", available, key="it_metric")
    x = st.radio("x axis", list(figures.X_TITLES), format_func=figures.X_TITLES.get, key="it_x")
    facet_names = ["none", *data.FACETS]
    facet_col = data.FACETS.get(st.selectbox("Facet columns by", facet_names, key="it_fcol"))
    facet_row = data.FACETS.get(st.selectbox("Facet rows by", facet_names, key="it_frow"))
    experiments = sorted(runs.loc[runs["kind"] == "bootstrap", "experiment"].dropna().unique())
    chosen = st.multiselect("Bootstrap experiments", experiments, default=experiments, key="it_exp")

if facet_row is not None and facet_row == facet_col:
    st.warning("Rows and columns facet by the same parameter; showing columns only.")
    facet_row = None
facets = [f for f in (facet_col, facet_row) if f is not None]
if runs[x].isna().all():
    st.warning(f"No run recorded `{x}` in its stages; plotting against EM iteration instead.")
    x = "iteration"

boot = runs[(runs["kind"] != "bootstrap") | runs["experiment"].isin(chosen)]
agg = data.aggregate_over_seeds(boot, metric, x, facets)
refs = data.reference_levels(runs, metric, x)
n_settings = agg["setting"].nunique()
top = n_settings
if n_settings > 1:  # a slider needs min < max
    top = st.sidebar.slider("Settings shown (best final value)", 1, n_settings, min(n_settings, 8), key="it_top")
agg = agg[agg["setting"].isin(data.top_settings(agg, metric, top))]

st.caption(f"{n_settings} bootstrap settings over {runs['run_id'].nunique()} runs; error bars and bands: "
           "standard error over seeds. Compute axes are cumulative over every stage up to the iteration.")
st.plotly_chart(figures.across_iterations(agg, refs, metric, x, facet_col, facet_row), key="it_chart")

with st.expander("Values"):
    st.dataframe(agg, hide_index=True)
    st.dataframe(refs, hide_index=True)
    st.download_button("Download CSV", agg.to_csv(index=False), file_name=f"{metric}_by_{x}.csv", mime="text/csv")
