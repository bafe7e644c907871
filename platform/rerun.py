"""Re-run a run from its record alone: ``python -m platform.run from_run=<run_id> [force=<stage>,...]``.

The run folder holds the resolved config and the overrides (the run-directory contract), so the
exact run is rebuilt from them, not from today's YAML. Nothing changed: every stage is a cache hit.
``force=eval`` (a stage name, or one stage such as ``eval[2]``) recomputes those stages and every
stage after them into new artifact folders, under a new run id: nothing finished is overwritten.
A warning says when the code's commit differs from the one the run recorded.
Further ``key=value`` arguments override the recorded config (e.g. ``launcher=...`` is not one:
use ``launcher.name=local``), and ``paths.results=...`` says where to look for the run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml
from omegaconf import OmegaConf

from platform.app import load_app
from platform.compose import to_dict
from platform.plan import force
from platform.rundir import git_info
from platform.validate import ConfigError


@dataclass
class Rerun:
    run: str  # a run id under <paths.results>/runs, or a run folder
    force: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def parse(argv: Sequence[str]) -> Optional[Rerun]:
    """The rerun request in ``argv``, or None when there is no ``from_run=``."""
    args = dict(a.split("=", 1) for a in argv if "=" in a and a.split("=", 1)[0] in ("from_run", "force"))
    if "from_run" not in args:
        if "force" in args:
            raise ConfigError(["force: only with from_run=<run_id> (it recomputes stages of a recorded run)"])
        return None
    rest = [a for a in argv if a.split("=", 1)[0] not in ("from_run", "force")]
    names = [n.strip() for n in args.get("force", "").split(",") if n.strip()]
    return Rerun(args["from_run"], names, rest)


def run_folder(rerun: Rerun) -> Path:
    results = next((o.split("=", 1)[1] for o in rerun.overrides if o.startswith("paths.results=")), "results")
    folder = Path(rerun.run) if Path(rerun.run).is_dir() else Path(results) / "runs" / rerun.run
    if not (folder / "config.yaml").is_file():
        raise ConfigError([f"from_run: {rerun.run!r} is not a run folder nor a run id under {results}/runs "
                           f"(no {folder / 'config.yaml'}); pass paths.results=... where the run lives"])
    return folder


def recorded_spec(rerun: Rerun, folder: Path):
    """The run's resolved config as recorded, with ``rerun.overrides`` applied and validated."""
    from platform.trial import apply_params

    raw = OmegaConf.create(yaml.safe_load((folder / "config.yaml").read_text()))
    recorded = (yaml.safe_load((folder / "overrides.yaml").read_text()) or {}) if (folder / "overrides.yaml").exists() else {}
    params = {}
    for item in rerun.overrides:
        if "=" not in item:
            raise ConfigError([f"from_run: {item!r} is not key=value"])
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    return apply_params(raw, params, [*recorded.get("overrides", []), *rerun.overrides])


def commit_warning(folder: Path) -> Optional[str]:
    path = folder / "git.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    now = git_info()
    if recorded.get("commit") and recorded.get("commit") != now.get("commit"):
        return (f"warning: run {folder.name} was produced at commit {recorded['commit'][:12]}"
                f"{' (dirty)' if recorded.get('dirty') else ''}; the code is now at {str(now.get('commit'))[:12]}"
                f"{' (dirty)' if now.get('dirty') else ''}: a stage whose code changed but whose key did not is reused")
    return None


def rerun_main(rerun: Rerun) -> int:
    from platform.ingest import ingest_run
    from platform.orchestrator import Orchestrator
    from platform.trial import run_trial

    folder = run_folder(rerun)
    spec = recorded_spec(rerun, folder)
    warning = commit_warning(folder)
    if warning:
        print(warning, file=sys.stderr)
    app = load_app()
    plan = app.build_plan(spec.cfg)
    meta = {"rerun_of": folder.name}
    if rerun.force:
        try:
            plan = force(plan, set(rerun.force), salt=f"force-{time.time_ns()}")
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        meta["forced"] = rerun.force
    results = Path(spec.cfg.paths.results)
    orch = Orchestrator(to_dict(spec.cfg.launcher), results, ingest=lambda rid, key=None: ingest_run(results, rid, key),
                        compute_buckets=app.compute_buckets, total_buckets=app.total_buckets)
    run_id, metrics = run_trial(spec, orch, plan=plan, meta=meta)
    print(json.dumps({"run_id": run_id, "rerun_of": folder.name, **metrics}, indent=1))
    return 0
