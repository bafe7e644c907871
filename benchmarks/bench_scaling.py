"""Section 6: how E-step and M-step cost grow with K, thought length and corpus size.

Each series varies one knob of the embedded workload and times the real code (HFSampler.sample for
the E-step, experiments.mstep.train for the M-step). The slope of log(seconds) on log(knob)
(numpy.polyfit) says how cost grows: 1 is linear; below 1 means batching absorbs part of the growth.
The plot is an interactive Plotly HTML (no kaleido/matplotlib here for a PNG).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks import median_time, section


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) against log(x): the exponent b of y ~ a x^b."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"loglog_slope needs >= 2 paired points, got {len(xs)} x and {len(ys)} y")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("loglog_slope needs positive values")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _estep_series(sampler, prompts, knob: str, values: list[int], base: dict[str, int], repeat: int) -> list[dict]:
    rows = []
    for v in values:
        p = {**base, knob: v}
        work = (prompts * (p["prompts"] // len(prompts) + 1))[: p["prompts"]]
        sec, _ = median_time(lambda: sampler.sample(work, n=p["k"], max_tokens=p["max_tokens"], seed=3), repeat)
        rows.append({"stage": "estep", "knob": knob, "value": v, "seconds": sec,
                     "tokens": p["prompts"] * p["k"] * p["max_tokens"], **{f"at_{k}": p[k] for k in p if k != knob}})
    return rows


def _mstep_series(model, tok, values: list[int], window: int, batch: int) -> list[dict]:
    from benchmarks.bench_mstep import mstep_config, prepare_inputs, train_once

    rows = []
    for n_windows in values:
        with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
            root = Path(tmp)
            inputs = prepare_inputs(root, model, tok, n_windows=n_windows, window=window)
            steps = max(1, n_windows // batch)  # one epoch over the corpus
            import time

            t0 = time.perf_counter()
            res = train_once(root, inputs, mstep_config(batch, steps, window), "s")
            total = time.perf_counter() - t0
        # the slope is fitted on the training loop's time; model load and the final save are a fixed
        # cost that would flatten it at these small sizes (reported as fixed_s)
        train_s = res["tokens_in"] / res["tokens_per_s"]
        rows.append({"stage": "mstep", "knob": "corpus_windows", "value": n_windows, "seconds": train_s,
                     "total_s": total, "fixed_s": total - train_s, "tokens": n_windows * window,
                     "at_window": window, "at_batch": batch})
    return rows


def plot_html(rows: list[dict], slopes: list[dict]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series = sorted({(r["stage"], r["knob"]) for r in rows})
    fig = make_subplots(rows=1, cols=len(series), subplot_titles=[
        f"{s} vs {k} (slope {next(x['slope'] for x in slopes if x['stage'] == s and x['knob'] == k):.2f})"
        for s, k in series])
    for i, (s, k) in enumerate(series, start=1):
        pts = [r for r in rows if r["stage"] == s and r["knob"] == k]
        fig.add_trace(go.Scatter(x=[r["value"] for r in pts], y=[r["seconds"] for r in pts], mode="lines+markers",
                                 name=f"{s}: {k}"), row=1, col=i)
        fig.update_xaxes(type="log", title_text=k, row=1, col=i)
        fig.update_yaxes(type="log", title_text="seconds" if i == 1 else None, row=1, col=i)
    fig.update_layout(title="Cost scaling (log-log)", height=420, width=360 * len(series))
    return fig.to_html(include_plotlyjs="cdn", full_html=True)


def run(smoke: bool, embedded: Optional[tuple] = None) -> dict[str, Any]:
    from benchmarks.bench_estep import build_embedded, estep_prompts, shipped_batch_size
    from experiments.samplers.hf import HFSampler

    model, tok, docs = embedded or build_embedded(60 if smoke else 200)
    sampler = HFSampler(model, tok, batch_size=shipped_batch_size())
    prompts = estep_prompts(tok, docs, 32)
    if smoke:
        base, repeat = {"k": 2, "max_tokens": 4, "prompts": 2}, 1
        grid = {"k": [1, 2], "max_tokens": [2, 4], "prompts": [1, 2]}
        m_values, window, batch = [4, 8], 32, 4
    else:
        base, repeat = {"k": 4, "max_tokens": 32, "prompts": 8}, 3
        grid = {"k": [1, 2, 4, 8, 16], "max_tokens": [8, 16, 32, 64], "prompts": [4, 8, 16, 32]}
        m_values, window, batch = [64, 128, 256, 512], 128, 16
    rows = []
    for knob, values in grid.items():
        rows += _estep_series(sampler, prompts, knob, values, base, repeat)
    rows += _mstep_series(model, tok, m_values, window, batch)
    slopes = []
    for stage, knob in sorted({(r["stage"], r["knob"]) for r in rows}):
        pts = [r for r in rows if r["stage"] == stage and r["knob"] == knob]
        slopes.append({"stage": stage, "knob": knob, "values": f"{pts[0]['value']}..{pts[-1]['value']}",
                       "slope": loglog_slope([r["value"] for r in pts], [r["seconds"] for r in pts])})
    notes = [f"E-step base point: {base} (HFSampler, batch_size {shipped_batch_size()} as shipped, thoughts to the cap); M-step: one epoch over "
             f"N windows of {window} tokens, batch {batch} (seconds = the training loop; model load and final save are fixed_s)",
             "plot: scaling.html (Plotly; no kaleido or matplotlib installed for a PNG)"]
    summary = {f"{s['stage']}:{s['knob']}": round(s["slope"], 3) for s in slopes}
    out = section("Scaling", {"points": rows, "slopes": slopes}, summary, notes)
    out["files"] = {"scaling.html": plot_html(rows, slopes)}
    return out
