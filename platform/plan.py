"""A trial's plan: its stage graph in run order, and which stages report to the sweep."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from platform.stage import Stage


@dataclass
class Plan:
    kind: str  # what the experiment calls its runs (raw | synthetic | bootstrap)
    stages: list[Stage]  # topologically sorted; shared prefixes appear once
    reports: list[Stage] = field(default_factory=list)  # eval stages, in iteration order


def toposort(finals: list[Stage]) -> list[Stage]:
    order: list[Stage] = []
    seen: set[str] = set()

    def visit(stage: Stage) -> None:
        if stage.key in seen:
            return
        for dep in stage.inputs.values():
            visit(dep)
        seen.add(stage.key)
        order.append(stage)

    for stage in finals:
        visit(stage)
    return order


def describe(plan: Plan, results: Optional[Path] = None) -> str:
    """The dry-run view: one line per stage with its cache key, inputs and whether it is cached."""
    lines = []
    for stage in plan.stages:
        state = ""
        if results is not None:
            state = "  [cached]" if stage.is_complete(results) else "  [to run]"
        deps = ", ".join(f"{k}<-{s.display}" for k, s in stage.inputs.items())
        shards = f" x{stage.num_shards} shards" if stage.num_shards > 1 else ""
        lines.append(f"  {stage.display:<18} key={stage.key}{shards}  ({deps or 'no inputs'}){state}")
    return "\n".join(lines)


def force(plan: Plan, names: set[str], salt: str) -> Plan:
    """A copy of ``plan`` in which the stages named in ``names`` (a stage name such as ``eval``, or
    one stage such as ``eval[2]``) get new keys, and so every stage after them: they are recomputed
    into new folders and nothing finished is overwritten. Unknown names are a ValueError."""
    known = {s.name for s in plan.stages} | {s.display for s in plan.stages}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"force: {', '.join(unknown)} names no stage of this run; its stages: "
                         f"{', '.join(dict.fromkeys(s.name for s in plan.stages))}")
    copies: dict[int, Stage] = {}

    def copy(stage: Stage) -> Stage:
        if id(stage) not in copies:
            hit = stage.name in names or stage.display in names
            copies[id(stage)] = dataclasses.replace(stage, inputs={k: copy(v) for k, v in stage.inputs.items()},
                                                    salt=salt if hit else stage.salt)
        return copies[id(stage)]

    return Plan(plan.kind, [copy(s) for s in plan.stages], [copy(s) for s in plan.reports])
