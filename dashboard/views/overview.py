"""Overview: studies, trials and runs, filtered by experiment, kind and date; refreshes while a
sweep runs."""

import datetime as dt

import pandas as pd
import streamlit as st

from dashboard import data, figures

st.title("Overview")
auto = st.toggle("Auto-refresh while a sweep runs", value=False,
                 help=f"Re-read the database every {data.CACHE_TTL_S:.0f} s")


@st.fragment(run_every=data.CACHE_TTL_S if auto else None)
def overview() -> None:
    runs = data.load(data.RUNS_SQL)
    studies = data.load(data.STUDIES_SQL)
    trials = data.load(data.TRIALS_SQL)
    if runs.empty:
        st.info("No runs in the database yet. Start one with `python -m platform.sweep ...`.")
        return

    c1, c2, c3 = st.columns([2, 2, 2])
    experiments = c1.multiselect("Experiment", sorted(runs["experiment"].dropna().unique()), key="ov_exp")
    kinds = c2.multiselect("Kind", sorted(runs["kind"].dropna().unique()), key="ov_kind")
    started = runs["started_at"].dropna()
    lo, hi = (started.min().date(), started.max().date()) if len(started) else (dt.date.today(),) * 2
    dates = c3.date_input("Started between", value=(lo, hi), key="ov_dates")

    shown = runs
    if experiments:
        shown = shown[shown["experiment"].isin(experiments)]
    if kinds:
        shown = shown[shown["kind"].isin(kinds)]
    if isinstance(dates, (tuple, list)) and len(dates) == 2:  # one date while the user is picking
        day = shown["started_at"].dt.date
        shown = shown[shown["started_at"].isna() | ((day >= dates[0]) & (day <= dates[1]))]

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Runs", len(shown))
    m2.metric("Running", int((shown["status"] == "running").sum()))
    m3.metric("Failed", int((shown["status"] == "failed").sum()))
    m4.metric("Trials complete", int((trials["state"] == "COMPLETE").sum()) if len(trials) else 0)

    g1, g2 = st.columns(2)
    g1.plotly_chart(figures.runs_by_kind(shown), width="stretch", key="ov_runs_chart")
    study_trials = trials if not experiments else trials[
        trials["study"].isin(studies.loc[studies["experiment"].isin(experiments), "study"])]
    if len(study_trials.dropna(subset=["values"])):
        g2.plotly_chart(figures.trial_objectives(study_trials), width="stretch", key="ov_trials_chart")

    st.subheader(f"Runs ({len(shown)})")
    st.dataframe(shown, hide_index=True, width="stretch")
    st.subheader("Trials")
    st.dataframe(study_trials, hide_index=True, width="stretch")
    st.subheader("Studies")
    st.dataframe(studies, hide_index=True, width="stretch")
    st.caption(f"Read at {pd.Timestamp.now():%H:%M:%S}")


overview()
