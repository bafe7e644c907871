"""The paper's comparison as a Markdown table: mean +- standard error over seeds, from DuckDB.

    python -m experiments.results_table [--results results]

Rows: raw-token-match, raw-FLOP-match, synthetic thoughts, the warm start (bootstrap iteration 0)
and bootstrap iterations 1..n for each K; columns: accuracy, held-out NLL, ELBO_4, seeds. Then the
differences the paper's orderings are about, with their standard errors (unpaired, and paired by
seed), and the E-step's thought correctness (against the oracle derivation) and ESS by chunk type,
per K and iteration.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

from platform.store import query_df

SQL = """
select i.run_id, i.kind, i.seed, i.iteration, i.accuracy, i.nll, i.elbo_4,
       r.config->>'$.experiment.baseline' as baseline,
       (r.config->>'$.estep.num_samples')::int as k,
       (r.config->>'$.estep.max_thought_tokens')::int as thought_len
from iterations i join runs r using (run_id)
where r.status = 'completed'
"""


def _label(row) -> Optional[str]:
    if row.kind == "raw":
        return {"raw_token_match": "raw, token-match", "raw_flop_match": "raw, FLOP-match",
                "compute_match": "raw, compute-match"}.get(row.baseline, "raw")
    if row.kind == "synthetic":
        return "synthetic thoughts"
    return _boot(row.k, row.iteration)


def _mean_se(values) -> tuple[Optional[float], Optional[float]]:
    """Mean and standard error of the mean (None with fewer than 2 values), NaN and None left out."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _fmt(values) -> str:
    mean, se = _mean_se(values)
    if mean is None:
        return "-"
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


def _runs(results: str):
    df = query_df(results, SQL)
    if df.empty:
        return df
    df["label"] = [_label(r) for r in df.itertuples()]
    # a warm start shared by several K is one model per seed: count it once
    return df.drop_duplicates(subset=["label", "seed", "accuracy", "nll"])


def table(results: str) -> str:
    df = _runs(results)
    if df.empty:
        return "(no completed runs)"
    order = ["raw, token-match", "raw, FLOP-match", "raw, compute-match", "raw", "synthetic thoughts",
             "bootstrap warm start (iter 0)"]
    labels = [l for l in order if l in set(df.label)] + sorted(l for l in set(df.label) if l not in order)
    lines = ["| run | accuracy | held-out NLL/token | ELBO_4 | seeds |", "|---|---|---|---|---|"]
    for label in labels:
        g = df[df.label == label]
        lines.append(f"| {label} | {_fmt(g.accuracy.tolist())} | {_fmt(g.nll.tolist())} | "
                     f"{_fmt(g.elbo_4.tolist())} | {g.seed.nunique()} |")
    return "\n".join(lines)


CORRECTNESS_SQL = """
select r.seed, (r.config->>'$.estep.num_samples')::int as k, m.iteration, m.name, m.value
from metrics m join runs r using (run_id)
where r.status = 'completed' and r.kind = 'bootstrap' and m.stage = 'estep'
  and m.name in ('thought_correct_selected', 'thought_correct_random', 'thought_correct_best_of_k',
                 'ess_annotated', 'ess_unannotated')
"""
CORRECTNESS_COLUMNS = [("thought_correct_selected", "selected"), ("thought_correct_random", "random sample"),
                       ("thought_correct_best_of_k", "best of K"), ("ess_annotated", "ESS, answer chunks"),
                       ("ess_unannotated", "ESS, question chunks")]


def correctness_table(results: str) -> str:
    """E-step thoughts that are the oracle derivation, per K and iteration (answer chunks), and ESS by chunk type."""
    df = query_df(results, CORRECTNESS_SQL)
    if df.empty:
        return "(no E-step metrics)"
    df = df.drop_duplicates(subset=["seed", "k", "iteration", "name"])
    head = " | ".join(label for _, label in CORRECTNESS_COLUMNS)
    lines = [f"| E-step | {head} | seeds |", "|---|" + "---|" * (len(CORRECTNESS_COLUMNS) + 1)]
    for (k, it), g in df.groupby(["k", "iteration"]):
        cells = [_fmt(g[g.name == name].value.tolist()) for name, _ in CORRECTNESS_COLUMNS]
        lines.append(f"| K={k}, iter {it} | {' | '.join(cells)} | {g.seed.nunique()} |")
    return "\n".join(lines)


def _boot(k: int, it: int) -> str:
    return "bootstrap warm start (iter 0)" if it == 0 else f"bootstrap K={k}, iter {it}"


def _comparisons(df) -> list[tuple[str, str]]:
    """(a, b) row pairs whose difference a - b the paper's orderings are about."""
    labels = set(df.label)
    pairs = [("synthetic thoughts", other) for other in ("raw, token-match", "raw, FLOP-match")]
    boot = df[(df.kind == "bootstrap") & (df.iteration > 0)]
    steps = sorted({(int(k), int(it)) for k, it in zip(boot.k, boot.iteration)})
    pairs += [(_boot(k, it), _boot(k, it - 1)) for k, it in steps]
    ks = sorted({k for k, _ in steps})
    if len(ks) > 1:
        pairs += [(_boot(ks[-1], it), _boot(ks[0], it)) for it in sorted({it for _, it in steps})]
    return [(a, b) for a, b in pairs if a in labels and b in labels]


def _paired(df, a: str, b: str, metric: str) -> tuple[Optional[float], Optional[float]]:
    """Mean and SE of the per-seed differences a_s - b_s over the seeds both rows have."""
    va = df[df.label == a].groupby("seed")[metric].mean()
    vb = df[df.label == b].groupby("seed")[metric].mean()
    seeds = sorted(set(va.index) & set(vb.index))
    return _mean_se([va[s] - vb[s] for s in seeds])


def comparisons_table(results: str, metric: str = "accuracy") -> str:
    """The differences the paper's orderings are about, each with two standard errors:
    - unpaired, sqrt(SE_a^2 + SE_b^2), the difference of two independent means;
    - paired by seed, the SE of the per-seed differences a_s - b_s. K=1 and K=4 of one seed share
      its warm start, data and initial weights, so this one takes out the variance they share."""
    df = _runs(results)
    if df.empty:
        return "(no completed runs)"
    lines = [f"| {metric}: a - b | difference | SE of the difference | difference / SE "
             "| paired by seed: SE | paired: difference / SE |", "|---|---|---|---|---|---|"]
    for a, b in _comparisons(df):
        (ma, sa), (mb, sb) = _mean_se(df[df.label == a][metric].tolist()), _mean_se(df[df.label == b][metric].tolist())
        if ma is None or mb is None:
            continue
        se = math.sqrt(sa ** 2 + sb ** 2) if sa is not None and sb is not None else None
        ratio = f"{(ma - mb) / se:.1f}" if se else "-"
        pm, pse = _paired(df, a, b, metric)
        pratio = f"{pm / pse:.1f}" if pse else "-"
        lines.append(f"| {a} - {b} | {ma - mb:+.3f} | {'-' if se is None else f'{se:.3f}'} | {ratio} "
                     f"| {'-' if pse is None else f'{pse:.3f}'} | {pratio} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.results_table", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    print(table(args.results))
    print()
    print(comparisons_table(args.results))
    print()
    print(correctness_table(args.results))


if __name__ == "__main__":
    main()
