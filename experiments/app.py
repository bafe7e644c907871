"""What the platform needs from the science, as one object: ``APP`` (a ``platform.app.App``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import Config, register_configs
from experiments.graphs import build_plan
from platform.app import App
from platform.checks import check_table


RANGES = {
    "estep.num_samples": (1, None), "estep.max_thought_tokens": (1, None), "estep.num_shards": (1, None),
    "estep.context_chunks": (0, None), "estep.group_docs": (1, None),
    "data.raw_mix_ratio": (0.0, 1.0), "data.warm_start_fraction": (0.0, 1.0), "data.num_train_docs": (1, None),
    "data.window": (8, None), "em.iterations": (0, None),
    "mstep.batch_size": (1, None), "mstep.epochs": (0.0, None), "mstep.grad_clip": (0.0, None),
    "mstep.warmup_steps": (0, None), "mstep.checkpoint_every": (1, None), "mstep.log_every": (1, None),
    "mstep.train_tokens": (1, None), "mstep.micro_batch_size": (1, None),
}
CHOICES = {
    "experiment.kind": ("raw", "synthetic", "bootstrap"),
    "experiment.baseline": ("none", "raw_token_match", "raw_flop_match", "compute_match"),
    "experiment.reference_experiment": ("synthetic", "bootstrap"),
    "data.thought_chunks": ("all", "annotated"), "data.form_coin": ("fresh", "frozen"),
    "data.name": ("embedded", "jsonl", "parquet"), "data.format": ("random", "prior_only", "posterior_only", "raw"),
    "teacher.kind": ("oracle", "lm", "openai_compatible"), "sampler.backend": ("hf", "vllm"),
    "sampler.fan_out": ("n", "repeat"), "mstep.init": ("base", "previous"),
    "model.dtype": ("float32", "bfloat16", "float16"),
}


def _ranges_and_choices(cfg: DictConfig) -> list[str]:
    p = check_table(cfg, RANGES, CHOICES)
    for name in ("estep.temperature", "mstep.lr"):
        value = OmegaConf.select(cfg, name)
        if value is not None and value <= 0:
            p.append(f"{name}: must be > 0, got {value}")
    if OmegaConf.select(cfg, "data.thought_chunks") == "annotated" and cfg.data.name != "embedded":
        p.append(f"data.thought_chunks: 'annotated' needs a corpus that declares which chunks carry reasoning "
                 f"(data=embedded); data={cfg.data.name} annotates none, use 'all'")
    if cfg.experiment.kind == "raw" and cfg.data.format != "raw":
        p.append(f"data.format: a raw experiment trains on raw text; must be raw, got {cfg.data.format!r}")
    return p


def _pretrained(model_name: str) -> bool:
    """Whether ``conf/model/<name>.yaml`` names a checkpoint (sets ``path``, literally or from an
    environment variable): such a model is loaded, not built, and cannot run without its folder."""
    import yaml

    from platform.compose import CONF_DIR

    spec = CONF_DIR / "model" / f"{model_name}.yaml"
    try:
        return bool((yaml.safe_load(spec.read_text()) or {}).get("path"))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _checkpoint(field: str, path: Any) -> list[str]:
    if not Path(path).is_dir():
        return [f"{field}: {path!r} is not a folder holding a Hugging Face checkpoint"]
    if not (Path(path) / "config.json").is_file():
        return [f"{field}: {path!r} has no config.json, so it is not a Hugging Face checkpoint folder"]
    return []


def _paths(cfg: DictConfig) -> list[str]:
    from experiments.corpus_check import check_corpus

    p: list[str] = []
    if cfg.data.name in ("jsonl", "parquet"):
        path = cfg.data.path
        if not path:
            p.append(f"data.path: not set; data.name={cfg.data.name} reads a corpus file "
                     f"(add data.path=/path/to/corpus.{cfg.data.name})")
        else:
            problem = check_corpus(path, cfg.data.text_column or "text")
            if problem:
                p.append(f"data.path: {problem}")
    if cfg.model.path:
        p += _checkpoint("model.path", cfg.model.path)
    elif _pretrained(cfg.model.name):
        p.append(f"model.path: not set; model={cfg.model.name} is loaded from a pretrained checkpoint "
                 "(add model.path=/path/to/checkpoint)")
    if cfg.teacher.kind == "lm":
        if not cfg.teacher.model_path:
            p.append("teacher.model_path: not set; teacher=lm needs a local model "
                     "(add teacher.model_path=/path/to/model)")
        else:
            p += _checkpoint("teacher.model_path", cfg.teacher.model_path)
    return p


def _teacher(cfg: DictConfig) -> list[str]:
    """The oracle teacher copies the embedded corpus's worked solutions; any other corpus has none,
    and a run that needs thoughts would quietly train on raw text instead."""
    kind = cfg.experiment.kind
    if cfg.teacher.kind != "oracle" or cfg.data.name == "embedded":
        return []
    if kind in ("synthetic", "bootstrap"):
        consequence, alternative = f"a {kind} run would train on raw text", ""
    elif kind == "raw" and cfg.experiment.baseline != "none":
        consequence = f"the synthetic reference of experiment.baseline={cfg.experiment.baseline} would have no thoughts"
        alternative = " (or experiment.baseline=none)"
    else:
        return []
    return [f"teacher.kind: the oracle teacher (the default) copies worked solutions that only data=embedded has; "
            f"with data.name={cfg.data.name} {consequence}. Use teacher=lm teacher.model_path=/path/to/model or "
            f"teacher=openai_compatible teacher.base_url=http://HOST:PORT/v1 teacher.model=NAME{alternative}"]


# Errors that stages raise on purpose, about bad input or a run gone wrong: when a job dies of one,
# the CLI prints its message in one line (stage, message, the job's log) instead of the traceback,
# which stays in the log and in runs.error. Names as a traceback's last line writes them.
KNOWN_ERRORS: tuple[str, ...] = (
    "experiments.corpus.CorpusError",  # a corpus line the cheap check did not read
    "experiments.teacher.TeacherError",  # the teacher endpoint refused or gave up
    "FloatingPointError",  # the M-step loss went NaN/inf (experiments/mstep.py)
    "experiments.estep.MissingThoughtError",  # a teacher or E-step chunk that needs a thought got none
)

APP = App(
    name="latent-thoughts",
    schema=Config,
    register_configs=register_configs,
    build_plan=build_plan,
    rules=(_ranges_and_choices, _paths, _teacher),
    known_errors=KNOWN_ERRORS,
    # the run totals each stage's FLOPs go into; total_flops is what producing the model cost
    compute_buckets={"estep": "estep_flops", "mstep": "train_flops", "eval": "eval_flops"},
    total_buckets=("estep_flops", "train_flops"),
    # what K buys inside the E-step, where the corpus has an oracle derivation to compare with
    summary_metrics=(("estep", "thought_correct_selected"), ("estep", "thought_correct_random")),
)
