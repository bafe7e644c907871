"""Sweep analysis from the Optuna study: optimization history, parameter importances, parallel
coordinates, slices, and the Pareto front of accuracy against E-step compute."""

import warnings
from typing import Callable

import optuna
import optuna.visualization as ov
import streamlit as st

from dashboard import data, figures

st.title("Sweep analysis")

studies = data.load(data.STUDIES_SQL)
if studies.empty:
    st.info("No studies yet: `python -m platform.sweep experiment=...` records one.")
    st.stop()
study_name = st.selectbox("Study", studies["study"].tolist(), key="sw_study")
row = studies.set_index("study").loc[study_name]
db_path = data.resolve_db_path()
storage = data.optuna_storage(db_path, study_name, row.get("storage"))


def _importances(loaded: optuna.Study, kw: dict):
    with warnings.catch_warnings():  # its "lower is better" warning: the target's sign already says so
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
        return ov.plot_param_importances(loaded, **kw)


@st.cache_data(ttl=30, show_spinner="Reading the Optuna study")
def study_figures(db: str, study: str, storage_hint: str | None, target: int) -> dict:
    """Every optuna.visualization figure for one objective; a plot that cannot be drawn (too few
    trials, one param) becomes its error text so the others still show."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=data.optuna_storage(db, study, storage_hint))
    names = loaded.metric_names or [f"objective {i}" for i in range(len(loaded.directions))]
    kw: dict = {}
    importance_kw: dict = {}
    if len(loaded.directions) > 1:
        kw = dict(target=lambda t: t.values[target], target_name=names[target])
        # With a custom target Optuna's importance evaluator assumes "lower is better".
        sign = -1.0 if loaded.directions[target] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        importance_kw = dict(target=lambda t: sign * t.values[target], target_name=names[target])
    plots: dict[str, Callable] = {
        "Optimization history": lambda: ov.plot_optimization_history(loaded, **kw),
        "Parameter importances": lambda: _importances(loaded, importance_kw),
        "Parallel coordinates": lambda: ov.plot_parallel_coordinate(loaded, **kw),
        "Slices": lambda: ov.plot_slice(loaded, **kw),
    }
    if len(loaded.directions) > 1:
        plots["Optuna Pareto front"] = lambda: ov.plot_pareto_front(loaded, target_names=names)
    complete = len(loaded.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]))
    out: dict = {"_names": names, "_n_trials": len(loaded.trials)}
    for title, make in plots.items():
        # Optuna draws empty axes rather than say so; say so.
        needed = 2 if title == "Parameter importances" else 1
        if complete < needed:
            out[title] = f"{title} unavailable: needs {needed} completed trial(s), the study has {complete}"
            continue
        try:
            out[title] = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            out[title] = f"{title} unavailable: {exc}"
    return out


if storage is None:
    st.warning(f"No Optuna storage found for study `{study_name}` (looked for {row.get('storage') or ''} and "
               f"{db_path.parent / 'optuna' / (study_name + '.journal')}); showing the database's view only.")
else:
    n_obj = len(row["directions"]) if row.get("directions") is not None else 1
    target = st.radio("Objective", list(range(max(n_obj, 1))), horizontal=True, key="sw_target",
                      format_func=lambda i: f"{i}: {row['directions'][i]}" if n_obj else str(i))
    try:
        figs = study_figures(str(db_path), study_name, row.get("storage"), target)
    except (KeyError, ValueError) as exc:  # the journal holds no study of that name
        st.error(f"Could not load study `{study_name}` from its Optuna storage: {exc}")
        figs = {}
    if figs:
        st.caption(f"{figs['_n_trials']} trials; objectives: {', '.join(figs['_names'])}")
    for title, fig in figs.items():
        if title.startswith("_"):
            continue
        st.subheader(title)
        if isinstance(fig, str):
            st.info(fig)
        else:
            st.plotly_chart(fig, key=f"sw_{title}")

replicates = data.load_optional(data.REPLICATE_TRIALS_SQL, study_name)  # stores before sweep.seeds lack the columns
if not replicates.empty:
    names = list(row["metric_names"]) if row.get("metric_names") is not None else ["objective 0"]
    table = data.replicate_table(replicates, names)
    st.subheader(f"Trials over replicate seeds ({int(table['seeds'].max())} seeds each): mean ± standard error")
    for i, name in enumerate(names):
        st.plotly_chart(figures.replicate_values(table, name), key=f"sw_rep_{i}")
    if len(names) == 2:  # the front of the means, the second objective across, the first up
        y, x = names
        directions = list(row["directions"])
        front = data.pareto_mask(table[x] * (1 if directions[1] == "minimize" else -1),
                                 table[y] * (1 if directions[0] == "maximize" else -1))
        st.plotly_chart(figures.pareto_front(table, x, y, front, x, y, x_err=f"{x}_se", y_err=f"{y}_se"),
                        key="sw_rep_pareto")
    st.dataframe(table, hide_index=True)

st.subheader("Pareto front: accuracy vs E-step compute")
points = data.load(data.PARETO_SQL)
if study_name in set(points["study"].dropna()):
    points = points[points["study"] == study_name]
if points.empty or points["accuracy"].isna().all():
    st.info("No bootstrap run with both accuracy and E-step FLOPs yet.")
else:
    points = points.dropna(subset=["accuracy", "cum_estep_flops"])
    front = data.pareto_mask(points["cum_estep_flops"], points["accuracy"])
    st.plotly_chart(figures.pareto_front(points, "cum_estep_flops", "accuracy", front,
                                         "E-step FLOPs (cumulative)", "accuracy"), key="sw_pareto_db")
    st.dataframe(points[front].sort_values("cum_estep_flops"), hide_index=True)
