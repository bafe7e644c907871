"""dashboard.figures: the traces, error bars, reference lines and facets each figure draws."""

import pandas as pd
import pytest

from dashboard import figures


def agg_frame():
    return pd.DataFrame({
        "setting": ["K=2", "K=2", "K=4", "K=4"], "estep.num_samples": [2, 2, 4, 4], "iteration": [1, 2, 1, 2],
        "x": [10.0, 20.0, 12.0, 24.0], "mean": [0.5, 0.6, 0.55, 0.7], "se": [0.01, 0.02, float("nan"), 0.03],
        "n": [3, 3, 1, 3],
    })


def refs_frame():
    return pd.DataFrame({"label": ["raw-token-match", "warm start"], "mean": [0.3, 0.4], "se": [0.01, 0.0],
                         "n": [3, 3], "x": [15.0, 5.0]})


def test_across_iterations_lines_error_bars_and_references():
    fig = figures.across_iterations(agg_frame(), refs_frame(), "accuracy", "train_tokens")
    lines = [t for t in fig.data if t.name in ("K=2", "K=4")]
    assert [t.name for t in lines] == ["K=2", "K=4"]
    assert list(lines[0].x) == [10.0, 20.0] and list(lines[0].y) == [0.5, 0.6]
    assert list(lines[1].error_y.array) == [0.0, 0.03]  # one seed: no error bar
    hlines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.y0 for s in hlines) == [0.3, 0.4]
    bands = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(bands) == 1 and (bands[0].y0, bands[0].y1) == pytest.approx((0.29, 0.31))  # warm start se=0: none
    markers = {t.name: t for t in fig.data if t.name.endswith("(n=3)")}
    assert list(markers["raw-token-match (n=3)"].x) == [15.0]
    assert fig.layout.xaxis.title.text == "training tokens (cumulative)"


def test_across_iterations_facets_one_subplot_per_value_one_legend_entry_per_setting():
    agg = pd.concat([agg_frame(), agg_frame().assign(**{"estep.max_thought_tokens": 64})])
    agg["estep.max_thought_tokens"] = agg["estep.max_thought_tokens"].fillna(32)
    fig = figures.across_iterations(agg, refs_frame(), "nll", "iteration", "estep.num_samples", "estep.max_thought_tokens")
    titles = sorted(a.text for a in fig.layout.annotations)
    assert titles == sorted(f"estep.max_thought_tokens={r}, estep.num_samples={c}" for r in (32.0, 64.0) for c in (2, 4))
    k2 = [t for t in fig.data if t.name == "K=2"]
    assert len(k2) == 2 and [t.showlegend for t in k2] == [True, False]  # only in the K=2 column
    assert {t.xaxis for t in k2} == {"x", "x3"}
    assert fig.layout.xaxis3.dtick == 1


def test_chunk_weights_outlines_the_selected_sample():
    doc = pd.DataFrame({"chunk_id": [0, 0, 1, 1], "sample_idx": [0, 1, 0, 1], "weight": [0.25, 0.75, 0.5, 0.5],
                        "log_w": [0.0, 1.1, 0.0, 0.0], "selected": [False, True, True, False]})
    bar = figures.chunk_weights(doc).data[0]
    assert list(bar.y) == [0.25, 0.75, 0.5, 0.5]
    assert list(bar.x[0]) == ["chunk 0", "chunk 0", "chunk 1", "chunk 1"]
    assert list(bar.marker.line.color) == ["rgba(0,0,0,0)", "black", "black", "rgba(0,0,0,0)"]


def test_selected_index_counts_chunks_per_index():
    s = pd.DataFrame({"iteration": [1] * 6, "sample_idx": [0, 1, 0, 1, 0, 1],
                      "selected": [True, False, True, False, False, True]})
    bar = figures.selected_index(s).data[0]
    assert list(bar.x) == [0, 1] and list(bar.y) == [2, 1]


def test_pareto_front_line_is_sorted_by_compute():
    pts = pd.DataFrame({"f": [3.0, 1.0, 2.0], "acc": [0.7, 0.5, 0.4], "params": ["a", "b", "c"]})
    fig = figures.pareto_front(pts, "f", "acc", pd.Series([True, True, False]))
    assert list(fig.data[1].x) == [1.0, 3.0] and list(fig.data[1].y) == [0.5, 0.7]


def test_runs_by_kind_counts():
    runs = pd.DataFrame({"kind": ["raw", "raw", "bootstrap"], "status": ["completed", "failed", "completed"]})
    fig = figures.runs_by_kind(runs)
    counts = {(t.name, x): y for t in fig.data for x, y in zip(t.x, t.y)}
    assert counts == {("completed", "bootstrap"): 1, ("completed", "raw"): 1, ("failed", "raw"): 1}


def test_replicate_table_and_error_bars_by_hand():
    import pandas as pd

    from dashboard import data, figures

    trials = pd.DataFrame({"number": [0, 1], "params": ['{"K": 1}', '{"K": 4}'],
                           "values": [[0.5, 10.0], [0.7, 40.0]], "values_se": [[0.05, 0.0], [0.02, 1.0]],
                           "seeds": [[0, 1, 2], [0, 1, 2]]})
    table = data.replicate_table(trials, ["accuracy", "estep_flops"])
    assert table[["accuracy", "accuracy_se", "estep_flops_se"]].values.tolist() == [[0.5, 0.05, 0.0], [0.7, 0.02, 1.0]]
    fig = figures.replicate_values(table, "accuracy")
    assert list(fig.data[0].error_y.array) == [0.05, 0.02] and list(fig.data[0].y) == [0.5, 0.7]
    front = data.pareto_mask(table["estep_flops"], table["accuracy"])
    pareto = figures.pareto_front(table, "estep_flops", "accuracy", front, x_err="estep_flops_se", y_err="accuracy_se")
    assert list(pareto.data[0].error_y.array) == [0.05, 0.02] and list(pareto.data[0].error_x.array) == [0.0, 1.0]
    assert front.tolist() == [True, True]  # more compute, more accuracy: both on the front
