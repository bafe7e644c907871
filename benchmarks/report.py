"""The benchmark report: one JSON (everything) and one Markdown (tables for humans and the README).

Both carry the machine, library versions and git commit that produced the numbers, and the load
average while they were measured (the machine is shared: a high load means slower, noisier runs).
Written as ``<out>/<UTC stamp>.{json,md}`` and copied to ``<out>/latest.{json,md}`` (``scale.{json,md}``
for ``--only scale`` and ``orchestrator_scale.{json,md}`` for ``--only scale_orchestrator``, which keep
their own reports beside the others').
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "duckdb", "submitit", "optuna",
             "hydra-core", "plotly", "streamlit")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _mem_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    import platform  # our package re-executes the stdlib module: uname() etc. are the stdlib's

    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(), "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0], "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "memory_gb": _mem_gb(), "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, Any]:
    from platform.rundir import git_info

    return git_info()


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "**no**")
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e6 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub Markdown table over the union of the rows' keys (first-seen order)."""
    if not rows:
        return "_(no rows)_\n"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = [f"# Benchmark report{' (smoke)' if meta['smoke'] else ''}", "",
           f"Generated {meta['generated_at']} in {meta['total_s']:.0f} s on **{meta['machine']['cpu']}** "
           f"({meta['machine']['cpu_count']} CPUs, {meta['machine']['memory_gb']} GB, GPU: {meta['machine']['gpu']}), "
           f"commit `{(meta['git'].get('commit') or 'unknown')[:12]}`{' (dirty tree)' if meta['git'].get('dirty') else ''}.",
           f"Load average at start {meta['load_average_start']}, at end {meta['load_average_end']} "
           "(a shared machine: ratios measured side by side in one run are the robust numbers).", "",
           "Libraries: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v), ""]
    if report.get("headline"):
        out += ["## Summary", "", markdown_table(report["headline"])]
    for key, sec in report["sections"].items():
        out += [f"## {sec['title']} (`{key}`)", ""]
        if sec.get("seconds") is not None:
            out.append(f"_section took {sec['seconds']:.1f} s_\n")
        for note in sec.get("notes", []):
            out.append(f"- {note}")
        if sec.get("notes"):
            out.append("")
        for name, rows in sec.get("tables", {}).items():
            out += [f"### {name}", "", markdown_table(rows)]
        for fname in sec.get("file_names", []):
            out.append(f"File: [{fname}]({fname})\n")
    return "\n".join(out) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str = "latest") -> dict[str, Path]:
    """Write the JSON and Markdown (and any section files) as ``<stem>.{json,md}`` and a stamped
    copy; returns the written paths (``json``/``md`` being the ``<stem>`` ones)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ("" if stem == "latest" else f"-{stem}")
    files: dict[str, str] = {}
    for sec in report["sections"].values():
        own = sec.pop("files", None) or {}
        sec["file_names"] = sorted(own)
        files.update(own)
    paths = {}
    for fname, content in files.items():
        (out / fname).write_text(content, encoding="utf-8")
        paths[fname] = out / fname
    md = to_markdown(report)
    js = json.dumps(report, indent=1, default=str)
    for name in (stamp, stem):
        (out / f"{name}.json").write_text(js, encoding="utf-8")
        (out / f"{name}.md").write_text(md, encoding="utf-8")
    paths.update(json=out / f"{stem}.json", md=out / f"{stem}.md", stamped_json=out / f"{stamp}.json")
    return paths

