"""Reference runs of a sweep: other experiments the study's trials are compared with.

``sweep.references`` lists override lists, e.g. ``[experiment=synthetic_thoughts]``. Each is composed
like a command line: the reference's overrides, then the sweep's own (without ``experiment=`` and
``sweep.*``), so what the user typed wins: ``mstep.epochs=2`` shrinks the references with the trials
even where an entry sets ``mstep.epochs`` itself. The driver runs them one at a time beside the
trials, on the same orchestrator and stage cache, and records them under the study's name with no
trial number, so the store, the dashboard and the summary hold the trials and what they are
measured against side by side. A reference is a run like any other:
a rerun of the sweep finds it finished in the cache.
"""

from __future__ import annotations

from typing import Sequence

from platform.compose import Composed, compose_config
from platform.trial import TrialSpec


def _inherited(overrides: Sequence[str]) -> list[str]:
    """The sweep's command-line overrides that also apply to a reference run."""
    def key(ov: str) -> str:
        return ov.split("=", 1)[0].lstrip("+~")

    return [ov for ov in overrides if key(ov) != "experiment" and not key(ov).startswith("sweep")]


def reference_specs(composed: Composed, study: str, rules: tuple = ()) -> list[tuple[str, TrialSpec]]:
    """(label, validated spec) per ``sweep.references`` entry; a bad entry is one ConfigError naming it.

    The label is the experiment's name and the entry's other overrides, e.g.
    ``raw_baseline (experiment.baseline=raw_token_match)``.
    """
    from platform.validate import ConfigError

    out = []
    for i, extra in enumerate(composed.cfg.sweep.references or []):
        argv = [*extra, *_inherited(composed.overrides)]
        try:
            ref = compose_config(argv, rules=rules)
        except ConfigError as exc:
            raise ConfigError([f"sweep.references[{i}] ({' '.join(extra)}): {p}" for p in exc.problems]) from None
        rest = [ov for ov in extra if not ov.startswith("experiment=")]
        name = ref.cfg.experiment.name + (f" ({', '.join(rest)})" if rest else "")
        out.append((name, TrialSpec(cfg=ref.cfg, raw=ref.raw, params={}, overrides=argv, study=study, trial=None)))
    return out
