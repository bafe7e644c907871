"""Stage graphs of the three experiment kinds (docs/method.md "Baselines", docs/design.md "Data flow").

- raw:       prepare -> init -> build_train(raw) -> mstep (budget matched to a latent run's M-step) -> eval
- synthetic: prepare -> init -> teacher(all docs) -> build_train -> mstep -> eval
- bootstrap: prepare -> init -> teacher(warm docs) -> build_train[0] -> mstep[0] -> eval[0], then per
             iteration t: estep[t] (model of t-1) -> build_train[t] -> mstep[t] -> eval[t]

Every stage's config holds only what it reads, so a change of, say, the E-step's K leaves the data,
the warm start and their cache keys untouched and trials share them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from platform.compose import to_dict
from platform.plan import Plan, toposort
from platform.stage import Stage

S = "experiments.stages:"


def _sections(cfg: Any, *names: str) -> dict[str, Any]:
    return {n: to_dict(getattr(cfg, n)) for n in names}


def _prepare(cfg: Any) -> Stage:
    model = to_dict(cfg.model)
    return Stage("prepare_data", S + "prepare_data",
                 {"data": _data_source(cfg), "model": {"path": model["path"], "vocab_size": model["vocab_size"]}})


def _data_source(cfg: Any) -> dict[str, Any]:
    keys = ("name", "path", "text_column", "num_train_docs", "num_eval_docs", "families", "difficulty", "seed",
            "warm_start_fraction", "em_docs")
    data = to_dict(cfg.data)
    return {k: data[k] for k in keys}


def _data_format(cfg: Any) -> dict[str, Any]:
    data = to_dict(cfg.data)
    keys = ("format", "raw_mix_ratio", "window", "chunk_poisson_mean", "chunk_max_sentences", "thought_chunks",
            "form_coin")
    return {k: data[k] for k in keys}


def _init(cfg: Any, prepare: Stage) -> Stage:
    return Stage("init_model", S + "init_model", {"model": to_dict(cfg.model)}, {"data": prepare}, seed=cfg.seed)


def _teacher(cfg: Any, prepare: Stage, init: Stage, subset: str) -> Stage:
    data = _data_format(cfg)
    return Stage("teacher", S + "teacher_thoughts",
                 {"teacher": to_dict(cfg.teacher), "subset": subset,
                  "data": {k: data[k] for k in ("chunk_poisson_mean", "chunk_max_sentences", "thought_chunks")},
                  **({"sampler": to_dict(cfg.sampler)} if cfg.teacher.kind == "lm" else {})},
                 {"data": prepare, "init": init})


def _views(cfg: Any, epochs: Any) -> int:
    """Readings of the corpus the M-step needs: one per epoch with fresh coins, else one."""
    fmt = _data_format(cfg)
    coins = fmt["format"] == "random" or 0.0 < fmt["raw_mix_ratio"] < 1.0
    if fmt["form_coin"] != "fresh" or not coins:
        return 1
    return max(1, math.ceil(float(cfg.mstep.epochs if epochs is None else epochs)))


def _train_set(cfg: Any, prepare: Stage, init: Stage, thoughts: dict[str, Stage], docs: str, it: Any = None,
               epochs: Any = None) -> Stage:
    return Stage("build_train", S + "build_train", {"data": _data_format(cfg), "docs": docs, "views": _views(cfg, epochs)},
                 {"data": prepare, "init": init, **thoughts}, iteration=it, seed=cfg.seed)


def _mstep(cfg: Any, train: Stage, init: Stage, it: Any = None, epochs: Any = None) -> Stage:
    mstep = to_dict(cfg.mstep)
    if epochs is not None:
        mstep["epochs"] = epochs
    return Stage("mstep", "experiments.mstep:run_mstep",
                 {"mstep": mstep, "model": to_dict(cfg.model), "seed": cfg.seed},
                 {"train": train, "init": init}, iteration=it, profile="mstep", seed=cfg.seed)


def _eval(cfg: Any, model: Stage, prepare: Stage, latent: bool, it: Any = None) -> Stage:
    config = {**_sections(cfg, "eval", "sampler"), "data": _data_format(cfg), "latent": latent, "iteration": it,
              # the oracle's empty thoughts on question chunks: the held-out question is prompted the same way
              "empty_question_thought": latent and cfg.teacher.kind == "oracle" and cfg.data.thought_chunks == "all"}
    return Stage("eval", "experiments.evaluate:run_eval", config, {"model": model, "data": prepare},
                 iteration=it, profile="eval", seed=cfg.seed)


def _estep(cfg: Any, model: Stage, prepare: Stage, it: int) -> Stage:
    config = {**_sections(cfg, "estep", "sampler"), "data": _data_format(cfg), "iteration": it}
    return Stage("estep", "experiments.estep:run_shard", config, {"model": model, "data": prepare},
                 iteration=it, num_shards=cfg.estep.num_shards, merge_fn="experiments.estep:merge",
                 profile="estep", seed=cfg.seed)


def _synthetic(cfg: Any) -> tuple[list[Stage], Stage, Stage]:
    """The synthetic run's evals, its M-step and its teacher stage."""
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    teacher = _teacher(cfg, prepare, init, "all")
    train = _train_set(cfg, prepare, init, {"thoughts_0": teacher}, "all", it=0)
    mstep = _mstep(cfg, train, init, it=0)
    return [_eval(cfg, mstep, prepare, latent=cfg.data.format != "raw", it=0)], mstep, teacher


def synthetic_plan(cfg: Any) -> Plan:
    evals, _, _ = _synthetic(cfg)
    return Plan("synthetic", toposort(evals), evals)


def _reference(cfg: Any) -> tuple[Stage, float, list[Stage]]:
    """The latent M-step a raw baseline matches, its epochs, and the teacher stages of its thoughts."""
    latent = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format="random", raw_mix_ratio=0.0))
    if cfg.experiment.reference_experiment == "synthetic":
        _, mstep, teacher = _synthetic(latent)
        return mstep, float(cfg.mstep.epochs), [teacher]
    it = cfg.em.iterations if cfg.experiment.reference_iteration is None else cfg.experiment.reference_iteration
    latent = dataclasses.replace(latent, em=dataclasses.replace(cfg.em, iterations=it))
    steps = _bootstrap(latent)
    mstep = steps[-1][0]
    epochs = cfg.em.warm_start_epochs if it == 0 else cfg.em.epochs
    return mstep, float(cfg.mstep.epochs if epochs is None else epochs), [steps[0][1]]


def raw_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    train = _train_set(cfg, prepare, init, {}, "all", it=0)
    if cfg.experiment.baseline == "none":
        mstep = _mstep(cfg, train, init, it=0)
    else:
        reference, epochs, teachers = _reference(cfg)
        mstep = Stage("mstep", S + "run_mstep_matched",
                      {"mstep": to_dict(cfg.mstep), "model": to_dict(cfg.model), "seed": cfg.seed,
                       "baseline": cfg.experiment.baseline, "reference_epochs": epochs},
                      {"train": train, "init": init, "reference": reference,
                       **{f"reference_thoughts_{i}": t for i, t in enumerate(teachers)}},
                      iteration=0, profile="mstep", seed=cfg.seed)
    ev = _eval(cfg, mstep, prepare, latent=False, it=0)
    return Plan("raw", toposort([ev]), [ev])


def _bootstrap(cfg: Any) -> list[tuple[Stage, Stage]]:
    """Per iteration t = 0..em.iterations: (M-step t, the stage that wrote its new thoughts): the
    warm start's teacher at t = 0, the E-step of t after it."""
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    warm_thoughts = _teacher(cfg, prepare, init, "warm")
    train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts}, "with_thoughts", it=0,
                       epochs=cfg.em.warm_start_epochs)
    model = _mstep(cfg, train, init, it=0, epochs=cfg.em.warm_start_epochs)  # the warm start
    out = [(model, warm_thoughts)]
    for it in range(1, cfg.em.iterations + 1):
        estep = _estep(cfg, model, prepare, it)
        train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts, "thoughts_1": estep}, "with_thoughts", it,
                           epochs=cfg.em.epochs)
        start = init if cfg.mstep.init == "base" else model
        model = _mstep(cfg, train, start, it=it, epochs=cfg.em.epochs)
        out.append((model, estep))
    return out


def bootstrap_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    evals = [_eval(cfg, model, prepare, latent=True, it=it) for it, (model, _) in enumerate(_bootstrap(cfg))]
    return Plan("bootstrap", toposort(evals), evals)


PLANS = {"raw": raw_plan, "synthetic": synthetic_plan, "bootstrap": bootstrap_plan}


def build_plan(cfg: Any) -> Plan:
    return PLANS[cfg.experiment.kind](cfg)
