"""Plotly figures, each a pure function of DataFrames (no database, no Streamlit).

Column contracts are the outputs of ``dashboard.data``: ``aggregate_over_seeds`` and
``reference_levels`` for the across-iterations figure, ``estep_samples``/``chunk_stats`` rows for
the E-step diagnostics, ``with_weights`` for the thought browser.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = px.colors.qualitative.Plotly
REFERENCE_STYLE = {  # dash pattern and colour of each reference line
    "raw-token-match": ("dash", "#636363"),
    "raw-flop-match": ("dot", "#252525"),
    "synthetic thoughts": ("dashdot", "#2ca02c"),
    "warm start": ("longdash", "#ff7f0e"),
}
X_TITLES = {
    "iteration": "EM iteration",
    "train_tokens": "training tokens (cumulative)",
    "flops": "FLOPs (cumulative, all stages)",
    "gpu_hours": "GPU-hours (cumulative, all stages)",
}


def _facet_values(df: pd.DataFrame, col: Optional[str]) -> list:
    return sorted(df[col].dropna().unique().tolist()) if col and col in df else [None]


def _facet_title(row_value, col_value, facet_row: Optional[str], facet_col: Optional[str]) -> str:
    parts = (f"{facet_row}={row_value}" if row_value is not None else "",
             f"{facet_col}={col_value}" if col_value is not None else "")
    return ", ".join(t for t in parts if t)


def _facet_cell(agg: pd.DataFrame, facet_row: Optional[str], row_value, facet_col: Optional[str], col_value) -> pd.DataFrame:
    cell = agg
    if row_value is not None:
        cell = cell[cell[facet_row] == row_value]
    if col_value is not None:
        cell = cell[cell[facet_col] == col_value]
    return cell


def _setting_line(setting: str, line: pd.DataFrame, metric: str, color: str, showlegend: bool) -> go.Scatter:
    """One bootstrap setting: mean per iteration, error bars = standard error over seeds."""
    return go.Scatter(
        x=line["x"], y=line["mean"], mode="lines+markers", name=setting, legendgroup=setting,
        showlegend=showlegend, line=dict(color=color),
        error_y=dict(type="data", array=line["se"].fillna(0), visible=True),
        customdata=line[["iteration", "n"]],
        hovertemplate=f"{setting}<br>iteration %{{customdata[0]}} (n=%{{customdata[1]}})"
        f"<br>{metric} %{{y:.4g}}<extra></extra>",
    )


def _add_reference(fig: go.Figure, ref, metric: str, x: str) -> None:
    """A reference level as a horizontal line on every subplot (band = its standard error)."""
    dash, color = REFERENCE_STYLE.get(ref.label, ("dash", "#7f7f7f"))
    if pd.notna(ref.se) and ref.se > 0:
        fig.add_hrect(y0=ref.mean - ref.se, y1=ref.mean + ref.se, fillcolor=color, opacity=0.08,
                      line_width=0, row="all", col="all")
    fig.add_hline(y=ref.mean, line=dict(dash=dash, color=color, width=1.5), row="all", col="all")
    # A legend entry (the hline itself has none) that also marks the reference's own x.
    fig.add_trace(go.Scatter(
        x=[ref.x] if x != "iteration" else [None], y=[ref.mean], mode="markers", name=f"{ref.label} (n={ref.n})",
        marker=dict(color=color, symbol="diamond", size=9), line=dict(dash=dash, color=color),
        hovertemplate=f"{ref.label}<br>{metric} %{{y:.4g}}<extra></extra>",
    ), row=1, col=1)


def across_iterations(
    agg: pd.DataFrame,
    refs: pd.DataFrame,
    metric: str,
    x: str = "iteration",
    facet_col: Optional[str] = None,
    facet_row: Optional[str] = None,
) -> go.Figure:
    """Bootstrap settings as lines (mean, error bars = standard error over seeds), one subplot
    per facet value, with the reference levels as horizontal lines (band = their standard error)."""
    cols, rows = _facet_values(agg, facet_col), _facet_values(agg, facet_row)
    titles = [_facet_title(r, c, facet_row, facet_col) for r in rows for c in cols]
    fig = make_subplots(rows=len(rows), cols=len(cols), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=titles if any(titles) else None,
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(agg["setting"].unique()))}
    shown: set[str] = set()
    for r_i, r in enumerate(rows, start=1):
        for c_i, c in enumerate(cols, start=1):
            for setting, line in _facet_cell(agg, facet_row, r, facet_col, c).groupby("setting", sort=True):
                fig.add_trace(_setting_line(setting, line.sort_values("iteration"), metric, colors[setting],
                                            setting not in shown), row=r_i, col=c_i)
                shown.add(setting)
    for ref in refs.dropna(subset=["mean"]).itertuples():
        _add_reference(fig, ref, metric, x)
    fig.update_xaxes(title_text=X_TITLES.get(x, x), row=len(rows))
    if x == "iteration":
        fig.update_xaxes(dtick=1)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(height=max(380, 300 * len(rows)), legend=dict(title="setting / reference"),
                      margin=dict(t=40, l=60, r=20, b=50))
    return fig


def _compact(fig: go.Figure, height: int = 340) -> go.Figure:
    """The small-multiples layout every page uses: fixed height, thin margins."""
    fig.update_layout(height=height, margin=dict(t=50, l=50, r=20, b=40))
    return fig


def runs_by_kind(runs: pd.DataFrame) -> go.Figure:
    counts = runs.groupby(["kind", "status"], dropna=False).size().reset_index(name="runs")
    fig = px.bar(counts, x="kind", y="runs", color="status", barmode="stack", title="Runs by kind and status")
    return _compact(fig, 320)


def trial_objectives(trials: pd.DataFrame) -> go.Figure:
    """First objective value of each finished trial against its number, one colour per study."""
    done = trials.dropna(subset=["values"]).copy()
    done["objective 0"] = [v[0] if len(v) else None for v in done["values"]]
    fig = px.scatter(done, x="number", y="objective 0", color="study", hover_data=["state", "params"],
                     title="Trials: first objective by trial number")
    return _compact(fig, 320)


def replicate_values(table: pd.DataFrame, name: str) -> go.Figure:
    """Each trial's objective: the mean over its replicate seeds, with the standard error as a bar."""
    fig = go.Figure(go.Scatter(
        x=table["trial"], y=table[name], mode="markers", marker=dict(size=9, color="#3182bd"),
        error_y=_error_bars(table, f"{name}_se"), text=table["params"],
        hovertemplate="trial %{x}<br>%{text}<br>%{y:.4g} ± %{error_y.array:.2g} (SE)<extra></extra>"))
    fig.update_layout(xaxis_title="trial", yaxis_title=f"{name} (mean over seeds ± SE)",
                      title=f"{name} per trial over replicate seeds", xaxis=dict(tickmode="linear", dtick=1))
    return _compact(fig)


def _histogram_by_iteration(samples: pd.DataFrame, column: str, title: str) -> go.Figure:
    fig = px.histogram(samples, x=column, color=samples["iteration"].astype(str), barmode="overlay",
                       opacity=0.6, nbins=40, labels={"color": "iteration"}, title=title)
    return _compact(fig)


def logw_histogram(samples: pd.DataFrame) -> go.Figure:
    return _histogram_by_iteration(samples, "log_w", "log w by iteration")


def ess_by_iteration(stats: pd.DataFrame) -> go.Figure:
    """Per-chunk effective sample size (1 = one sample takes all the weight, K = uniform)."""
    fig = px.box(stats, x=stats["iteration"].astype(str), y="ess", points="outliers",
                 labels={"x": "iteration", "ess": "effective sample size"}, title="ESS per chunk")
    return _compact(fig)


def elbo_by_iteration(elbo: pd.DataFrame, title: str = "ELBO_1/2/4 by iteration") -> go.Figure:
    """``elbo``: long rows (iteration, name, value), one line per name (ELBO_1/2/4 by default)."""
    fig = px.line(elbo.sort_values("iteration"), x="iteration", y="value", color="name", markers=True, title=title)
    fig.update_xaxes(dtick=1)
    return _compact(fig)


CORRECTNESS_NAMES = {"thought_correct_selected": "selected", "thought_correct_random": "random sample",
                     "thought_correct_best_of_k": "best of K"}


def thought_correctness(logged: pd.DataFrame) -> go.Figure:
    """Share of E-step thoughts that are the oracle derivation (chunks the corpus annotates), per
    iteration: the resampled one, a random one and the best of the K; their gap is what the
    importance weights contribute."""
    rows = logged[logged["name"].isin(list(CORRECTNESS_NAMES))].assign(name=lambda d: d["name"].map(CORRECTNESS_NAMES))
    fig = elbo_by_iteration(rows, "Thoughts equal to the oracle derivation")
    fig.update_yaxes(range=[0, 1], title="share of answer chunks")
    return fig


def by_chunk_type(logged: pd.DataFrame, metric: str) -> go.Figure:
    """``metric`` (e.g. ess, elbo_4) split by chunk type: chunks the corpus annotates with reasoning
    (answers) and the rest (questions, whose right thought is empty)."""
    names = {f"{metric}_annotated": "annotated chunks", f"{metric}_unannotated": "other chunks", metric: "all chunks"}
    rows = logged[logged["name"].isin(list(names))].assign(name=lambda d: d["name"].map(names))
    return elbo_by_iteration(rows, f"{metric.upper()} by chunk type")


def thought_lengths(samples: pd.DataFrame) -> go.Figure:
    return _histogram_by_iteration(samples, "thought_tokens", "Thought length (tokens)")


def shard_walls(shards: pd.DataFrame) -> go.Figure:
    """Wall seconds of each E-step shard per iteration: the slowest shard sets the iteration's time."""
    fig = px.bar(shards, x="shard", y="wall_s", color=shards["iteration"].astype(str), barmode="group",
                 labels={"color": "iteration", "wall_s": "wall (s)"}, title="E-step shards: wall time",
                 hover_data=["job_id", "host", "tokens_out"])
    fig.update_xaxes(dtick=1)
    return _compact(fig)


def selected_index(samples: pd.DataFrame) -> go.Figure:
    """How often each sample index is the one resampled; uniform when the weights carry no signal."""
    picked = samples[samples["selected"].astype(bool)]
    counts = picked.groupby(["iteration", "sample_idx"]).size().reset_index(name="chunks")
    fig = px.bar(counts, x="sample_idx", y="chunks", color=counts["iteration"].astype(str), barmode="group",
                 labels={"color": "iteration"}, title="Index of the selected sample")
    fig.update_xaxes(dtick=1)
    return _compact(fig)


def chunk_weights(doc: pd.DataFrame) -> go.Figure:
    """Normalised weight of each of the K thoughts per chunk; the selected one outlined."""
    doc = doc.sort_values(["chunk_id", "sample_idx"])
    fig = go.Figure(go.Bar(  # two-level x (chunk, sample) puts each chunk's K bars side by side
        x=[[f"chunk {c}" for c in doc["chunk_id"]], [f"#{i}" for i in doc["sample_idx"]]], y=doc["weight"],
        marker=dict(color=[PALETTE[i % len(PALETTE)] for i in doc["sample_idx"]],
                    line=dict(color=["black" if s else "rgba(0,0,0,0)" for s in doc["selected"]], width=3)),
        customdata=doc[["sample_idx", "log_w"]],
        hovertemplate="sample %{customdata[0]}<br>weight %{y:.3f}<br>log w %{customdata[1]:.3f}<extra></extra>",
    ))
    fig.update_layout(height=320, yaxis_title="normalised weight", yaxis_range=[0, 1.02],
                      title="Importance weights per chunk (outlined: selected)", margin=dict(t=50, l=50, r=20, b=40))
    return fig


def _error_bars(points: pd.DataFrame, column: Optional[str]) -> Optional[dict]:
    if column is None or column not in points:
        return None
    return dict(type="data", array=points[column].fillna(0.0).tolist(), visible=True, thickness=1.2)


def pareto_front(points: pd.DataFrame, x: str, y: str, on_front: pd.Series,
                 x_title: Optional[str] = None, y_title: Optional[str] = None,
                 x_err: Optional[str] = None, y_err: Optional[str] = None) -> go.Figure:
    """Every run's (or trial's) final (x, y), with standard-error bars from the columns ``x_err``
    and ``y_err`` where given; the non-dominated points joined as a step line."""
    x_title, y_title = x_title or x, y_title or y
    front = points[on_front].sort_values(x)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=points[x], y=points[y], mode="markers", name="runs", marker=dict(color="#9ecae1", size=8),
                             error_x=_error_bars(points, x_err), error_y=_error_bars(points, y_err),
                             text=points.get("params"), hovertemplate="%{text}<br>%{x:.3g}, %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", line_shape="hv", name="Pareto front",
                             marker=dict(color="#d62728", size=10)))
    fig.update_layout(height=380, xaxis_title=x_title, yaxis_title=y_title, title=f"Pareto front: {y_title} vs {x_title}",
                      xaxis_type="log", margin=dict(t=50, l=50, r=20, b=40))
    return fig
