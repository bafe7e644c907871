"""E-step diagnostics per iteration: log w, effective sample size, ELBO_1/2/4, thought lengths, the
index of the selected sample, thought correctness against the oracle, ESS and ELBO by chunk type, and
the shards' wall times, for one bootstrap run."""

import pandas as pd
import streamlit as st

from dashboard import data, figures

st.title("E-step diagnostics")

estep_runs = data.load_estep_runs()

c1, c2 = st.columns([3, 1])
run_id = c1.selectbox("Run", estep_runs["run_id"].tolist(), key="es_run")
limit = c2.number_input("Samples read (at most)", 1_000, 2_000_000, 50_000, step=10_000, key="es_limit",
                        help="Large runs are cut to a pseudo-random set of chunks, the same in every iteration")
n_samples = int(estep_runs.set_index("run_id").loc[run_id, "n_samples"])
samples = data.load_estep_samples(run_id, int(limit), n_samples)
iterations = sorted(samples["iteration"].unique().tolist())
chosen = st.multiselect("Iterations", iterations, default=iterations, key="es_iters")
samples = samples[samples["iteration"].isin(chosen)]
if samples.empty:
    st.info("Pick at least one iteration.")
    st.stop()
stats = data.chunk_stats(samples)

# ELBO as the E-step logged it over all its chunks; recomputed from the samples read otherwise.
logged = data.load(data.ESTEP_METRICS_SQL, run_id)
logged = logged[logged["iteration"].isin(chosen)]
elbo = logged[logged["name"].isin(["elbo_1", "elbo_2", "elbo_4"])]
source = "logged by the E-step"
if elbo.empty:
    elbo = stats.groupby("iteration")[["elbo_1", "elbo_2", "elbo_4"]].mean().reset_index().melt(
        id_vars="iteration", var_name="name", value_name="value")
    source = "recomputed from the samples shown"

k = int(stats["k"].max())
m1, m2, m3, m4 = st.columns(4)
m1.metric("Chunks", f"{len(stats):,}")
m2.metric("K (samples per chunk)", k)
m3.metric("Mean ESS", f"{stats['ess'].mean():.2f} / {k}")
m4.metric("Mean thought tokens", f"{samples['thought_tokens'].mean():.1f}")

g1, g2 = st.columns(2)
g1.plotly_chart(figures.logw_histogram(samples), key="es_logw")
g2.plotly_chart(figures.ess_by_iteration(stats), key="es_ess")
g1.plotly_chart(figures.elbo_by_iteration(elbo), key="es_elbo")
g1.caption(f"ELBO {source}.")
g2.plotly_chart(figures.thought_lengths(samples), key="es_len")
g1.plotly_chart(figures.selected_index(samples), key="es_sel")
if logged["name"].isin(list(figures.CORRECTNESS_NAMES)).any():  # corpora with oracle derivations only
    g1.plotly_chart(figures.thought_correctness(logged), key="es_correct")
if (logged["name"] == "ess_annotated").any():
    g2.plotly_chart(figures.by_chunk_type(logged, "ess"), key="es_ess_type")
    g1.plotly_chart(figures.by_chunk_type(logged, "elbo_4" if (logged["name"] == "elbo_4").any() else "elbo_1"),
                    key="es_elbo_type")
shards = data.load(data.SHARDS_SQL, run_id)
shards = shards[shards["iteration"].isin(chosen)]
if len(shards):  # runs ingested before the shards table have none
    g2.plotly_chart(figures.shard_walls(shards), key="es_shards")
    g2.caption(f"{len(shards)} shard jobs; slowest {shards['wall_s'].max():.1f} s, mean {shards['wall_s'].mean():.1f} s.")

with st.expander("Metrics logged by the E-step"):
    st.dataframe(logged.pivot_table(index="iteration", columns="name", values="value") if len(logged)
                 else pd.DataFrame(), width="stretch")
