"""Validate a composed config against its dataclass schema, reporting every problem at once.

Hydra/OmegaConf stop at the first bad key; a researcher fixing a sweep spec wants the whole list,
each line naming the field and what is allowed, before any job starts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Union

from omegaconf import DictConfig, ListConfig, OmegaConf




class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_value(path: str, value: Any, tp: Any, problems: list[str]) -> None:
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return
        if len(args) == 1:
            return _check_value(path, value, args[0], problems)
        return
    if value is None:
        problems.append(f"{path}: must be {_type_name(tp)}, got null")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, (dict, DictConfig)):
            problems.append(f"{path}: must be a mapping of {tp.__name__} fields, got {value!r}")
            return
        _check_dataclass(path, value, tp, problems)
        return
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            problems.append(f"{path}: must be a list, got {value!r}")
            return
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        for i, item in enumerate(value):
            _check_value(f"{path}[{i}]", item, item_tp, problems)
        return
    if origin is dict:
        if not isinstance(value, (dict, DictConfig)):
            problems.append(f"{path}: must be a mapping, got {value!r}")
            return
        _, val_tp = typing.get_args(tp) or (Any, Any)
        for k, v in value.items():
            _check_value(f"{path}.{k}", v, val_tp, problems)
        return
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: must be true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: must be a number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: must be a string, got {value!r}")


def _check_dataclass(prefix: str, node: Any, cls: type, problems: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in node.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            problems.append(f"{path}: unknown key (allowed in {prefix or 'the root'}: {allowed})")
            continue
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
            problems.append(f"{path}: required but not set (add {path}=... to the command line)")
            continue
        _check_value(path, node[key], hints[key], problems)


Rule = Callable[[DictConfig], list[str]]


def validate(cfg: DictConfig, schema: type, rules: tuple[Rule, ...] = ()) -> Any:
    """Return ``cfg`` as a typed ``schema`` instance, or raise one ConfigError listing every problem.

    Once the schema holds, the platform's rules of its own sections (``platform.rules``) run, then
    ``rules``, the app's."""
    from platform.rules import check_platform_sections

    problems: list[str] = []
    _check_dataclass("", cfg, schema, problems)
    if not problems:
        problems.extend(check_platform_sections(cfg, schema))
        for rule in rules:
            problems.extend(rule(cfg))
    if problems:
        raise ConfigError(problems)
    typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(typed)
