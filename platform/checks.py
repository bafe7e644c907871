"""The small checks validation rules are written in: a value in a range, one of a set, a field of a schema."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


def in_range(cfg: DictConfig, path: str, low: Optional[float] = None, high: Optional[float] = None) -> list[str]:
    value = OmegaConf.select(cfg, path)
    if value is None:
        return []
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        return [f"{path}: must be in [{lo}, {hi}], got {value!r}"]
    return []


def one_of(cfg: DictConfig, path: str, allowed: tuple[str, ...]) -> list[str]:
    value = OmegaConf.select(cfg, path)
    if value is not None and value not in allowed:
        return [f"{path}: must be one of {', '.join(allowed)}; got {value!r}"]
    return []


def schema_field(schema: type, dotted: str) -> tuple[bool, str]:
    """Whether ``dotted`` names a field of ``schema``; if not, the message naming what is allowed."""
    cls: Any = schema
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return True, ""  # inside a free-form mapping (dict field): anything goes
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            where = ".".join(parts[:i]) or "the root"
            return False, f"{dotted}: unknown key (allowed in {where}: {', '.join(sorted(names))})"
        cls = typing.get_type_hints(cls)[part]
        if typing.get_origin(cls) is typing.Union:
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    return True, ""


def check_table(cfg: DictConfig, ranges: dict[str, tuple[Optional[float], Optional[float]]],
                choices: dict[str, tuple[str, ...]]) -> list[str]:
    """Every ``ranges`` field in its [low, high] and every ``choices`` field one of its values."""
    problems = [p for path, (low, high) in ranges.items() for p in in_range(cfg, path, low, high)]
    return problems + [p for path, allowed in choices.items() for p in one_of(cfg, path, allowed)]
