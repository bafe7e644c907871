"""Compose ``conf/config.yaml`` + experiment spec + command-line overrides with Hydra, then validate.

We use Hydra's compose API rather than ``@hydra.main``: the sweep driver owns the process (no
working-directory change, no ``outputs/`` folder) and validation must list every problem at once.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from platform.checks import schema_field
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
        ok, msg = schema_field(schema, key)
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
    env_vars = _env_vars(raw)
    problems = _resolve_fields(raw, env_vars)
    try:
        typed = validate(raw, schema_cls, rules)
    except ConfigError as exc:
        failed = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in exc.problems if p.split(":", 1)[0] not in failed]
    if problems:
        raise ConfigError([_with_env_hint(p, env_vars) for p in problems])
    full = OmegaConf.create(to_dict(typed))  # every field, defaults included: what a run records
    return Composed(cfg=typed, raw=full, overrides=args, print_cfg=print_cfg)


_ENV_RE = re.compile(r"oc\.env:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")


def _leaves(node: Any, prefix: str = "") -> list[tuple[Any, Any, str]]:
    """(parent, key, dotted path) of every value of a DictConfig/ListConfig, depth first, unresolved."""
    out = []
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        if isinstance(node, ListConfig):
            path = f"{prefix}[{key}]"
        else:
            path = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if not OmegaConf.is_interpolation(node, key) and isinstance(child, (DictConfig, ListConfig)) \
                and not child._is_none() and not child._is_missing():
            out += _leaves(child, path)
        else:
            out.append((node, key, path))
    return out


def _env_vars(raw: DictConfig) -> dict[str, list[str]]:
    """Field -> the environment variables its interpolation reads (``${oc.env:TINYLLAMA_PATH}``)."""
    found = {}
    for node, key, path in _leaves(raw):
        if OmegaConf.is_interpolation(node, key):
            names = _ENV_RE.findall(str(node._get_node(key)._value()))
            if names:
                found[path] = names
    return found


def _resolve_fields(raw: DictConfig, env_vars: dict[str, list[str]]) -> list[str]:
    """Resolve every interpolation in place, field by field. A field that does not resolve (an unset
    environment variable, a key that does not exist) becomes null and one problem naming it, so
    validation goes on and reports everything else too."""
    problems = []
    for node, key, path in _leaves(raw):
        if not OmegaConf.is_interpolation(node, key):
            continue
        expr = str(node._get_node(key)._value())
        try:
            value = node[key]
        except OmegaConfBaseException as exc:
            unset = [v for v in env_vars.get(path, []) if v not in os.environ]
            if unset:
                problems.append(f"{path}: environment variable {unset[0]} is not set (from {expr}); set "
                                f"{path}=... on the command line or export {unset[0]}")
            else:
                reason = str(exc).strip().splitlines()[0]
                problems.append(f"{path}: cannot resolve {expr}: {reason}")
            value = None
        with open_dict(node) if isinstance(node, DictConfig) else contextlib.nullcontext():
            node[key] = value
    return problems


def _with_env_hint(problem: str, env_vars: dict[str, list[str]]) -> str:
    """A problem of a field that an environment variable sets says which variable."""
    field = problem.split(":", 1)[0]
    names = [v for v in env_vars.get(field, []) if v not in problem]
    if not names:
        return problem
    if names[0] in os.environ:
        return f"{problem}; the value came from the environment variable {names[0]}"
    return f"{problem}; the environment variable {names[0]} (unset) can also set it"


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a (nested) dataclass config."""
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]
