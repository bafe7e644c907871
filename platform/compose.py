"""Compose ``conf/config.yaml`` + experiment spec + command-line overrides with Hydra, then validate.

We use Hydra's compose API rather than ``@hydra.main``: the sweep driver owns the process (no
working-directory change, no ``outputs/`` folder) and validation must list every problem at once.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from platform.validate import ConfigError, validate

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = Path(os.environ.get("PLATFORM_CONF_DIR", REPO_ROOT / "conf")).resolve()


@dataclass
class Composed:
    cfg: Any  # the typed, validated config (a dataclass instance)
    raw: DictConfig  # the composed DictConfig, as Hydra produced it
    overrides: list[str]
    print_cfg: bool = False


def _groups(conf_dir: Path) -> set[str]:
    return {p.name for p in conf_dir.iterdir() if p.is_dir()}


def _field_type(schema: type, dotted: str) -> tuple[bool, str]:
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


def check_override_keys(overrides: Sequence[str], schema: type, conf_dir: Path = CONF_DIR) -> list[str]:
    problems = []
    groups = _groups(conf_dir)
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if "=" not in ov:
            problems.append(f"{ov}: an override must look like key=value")
            continue
        if key in groups or key.startswith("hydra"):
            if key in groups and "=" in ov:
                option = ov.split("=", 1)[1]
                available = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                if option not in available and key != "sweep":
                    problems.append(f"{key}={option}: no such {key} config (available: {', '.join(available)})")
            continue
        ok, msg = _field_type(schema, key)
        if not ok:
            problems.append(msg)
    return problems


def compose_config(
    argv: Sequence[str],
    schema_name: str = "config_schema",
    rules: tuple[Callable[[DictConfig], list[str]], ...] = (),
    conf_dir: Path = CONF_DIR,
) -> Composed:
    """``argv`` are Hydra overrides, plus ``--cfg job`` (print the resolved config)."""
    args = list(argv)
    print_cfg = False
    if "--cfg" in args:
        i = args.index("--cfg")
        del args[i : i + 2]
        print_cfg = True
    schema = ConfigStore.instance().load(f"{schema_name}.yaml").node
    schema_cls = OmegaConf.get_type(schema)
    problems = check_override_keys(args, schema_cls, conf_dir)
    if problems:
        raise ConfigError(problems)
    groups = _groups(conf_dir)
    # A schema field that no YAML sets is still a valid override: `++` adds or overrides it.
    hydra_args = [a if a.startswith(("+", "~")) or a.split("=", 1)[0] in groups or a.startswith("hydra")
                  else "++" + a for a in args]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            raw = compose(config_name="config", overrides=hydra_args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError([str(exc).strip().splitlines()[0]]) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.resolve(raw)
    typed = validate(raw, schema_cls, rules)
    full = OmegaConf.create(to_dict(typed))  # every field, defaults included: what a run records
    return Composed(cfg=typed, raw=full, overrides=args, print_cfg=print_cfg)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a (nested) dataclass config."""
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]
