"""Stage graphs of the three experiment kinds (PAPER.md "Baselines", DESIGN.md "Data flow").

- raw:       prepare -> init -> build_train(raw) -> mstep (budget matched to a synthetic run) -> eval
- synthetic: prepare -> init -> teacher(all docs) -> build_train -> mstep -> eval
- bootstrap: prepare -> init -> teacher(warm docs) -> build_train[0] -> mstep[0] -> eval[0], then per
             iteration t: estep[t] (model of t-1) -> build_train[t] -> mstep[t] -> eval[t]

Every stage's config holds only what it reads, so a change of, say, the E-step's K leaves the data,
the warm start and their cache keys untouched and trials share them.
"""

from __future__ import annotations

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
    keys = ("format", "raw_mix_ratio", "window", "chunk_poisson_mean", "chunk_max_sentences")
    return {k: data[k] for k in keys}


def _init(cfg: Any, prepare: Stage) -> Stage:
    return Stage("init_model", S + "init_model", {"model": to_dict(cfg.model)}, {"data": prepare}, seed=cfg.seed)


def _teacher(cfg: Any, prepare: Stage, init: Stage, subset: str) -> Stage:
    data = _data_format(cfg)
    return Stage("teacher", S + "teacher_thoughts",
                 {"teacher": to_dict(cfg.teacher), "subset": subset,
                  "data": {k: data[k] for k in ("chunk_poisson_mean", "chunk_max_sentences")}},
                 {"data": prepare, "init": init})


def _train_set(cfg: Any, prepare: Stage, init: Stage, thoughts: dict[str, Stage], docs: str, it: Any = None) -> Stage:
    return Stage("build_train", S + "build_train", {"data": _data_format(cfg), "docs": docs},
                 {"data": prepare, "init": init, **thoughts}, iteration=it, seed=cfg.seed)


def _mstep(cfg: Any, train: Stage, init: Stage, it: Any = None, epochs: Any = None) -> Stage:
    mstep = to_dict(cfg.mstep)
    if epochs is not None:
        mstep["epochs"] = epochs
    return Stage("mstep", "experiments.mstep:run_mstep",
                 {"mstep": mstep, "model": to_dict(cfg.model), "seed": cfg.seed},
                 {"train": train, "init": init}, iteration=it, profile="mstep", seed=cfg.seed)


def _eval(cfg: Any, model: Stage, prepare: Stage, latent: bool, it: Any = None) -> Stage:
    config = {**_sections(cfg, "eval", "sampler"), "data": _data_format(cfg), "latent": latent, "iteration": it}
    return Stage("eval", "experiments.evaluate:run_eval", config, {"model": model, "data": prepare},
                 iteration=it, profile="eval", seed=cfg.seed)


def _estep(cfg: Any, model: Stage, prepare: Stage, it: int) -> Stage:
    config = {**_sections(cfg, "estep", "sampler"), "data": _data_format(cfg), "iteration": it}
    return Stage("estep", "experiments.estep:run_shard", config, {"model": model, "data": prepare},
                 iteration=it, num_shards=cfg.estep.num_shards, merge_fn="experiments.estep:merge",
                 profile="estep", seed=cfg.seed)


def synthetic_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    teacher = _teacher(cfg, prepare, init, "all")
    train = _train_set(cfg, prepare, init, {"thoughts_0": teacher}, "all", it=0)
    mstep = _mstep(cfg, train, init, it=0)
    ev = _eval(cfg, mstep, prepare, latent=cfg.data.format != "raw", it=0)
    return Plan("synthetic", toposort([ev]), [ev])


def raw_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    train = _train_set(cfg, prepare, init, {}, "all", it=0)
    if cfg.experiment.baseline == "none":
        mstep = _mstep(cfg, train, init, it=0)
    else:
        # The reference: the synthetic-thought training set this baseline matches in tokens/FLOPs.
        ref_fmt = {**_data_format(cfg), "format": "random", "raw_mix_ratio": 0.0}
        teacher = _teacher(cfg, prepare, init, "all")
        ref_train = Stage("build_train", S + "build_train", {"data": ref_fmt, "docs": "all"},
                          {"data": prepare, "init": init, "thoughts_0": teacher}, iteration=0, seed=cfg.seed)
        mstep = Stage("mstep", S + "run_mstep_matched",
                      {"mstep": to_dict(cfg.mstep), "model": to_dict(cfg.model), "seed": cfg.seed,
                       "baseline": cfg.experiment.baseline},
                      {"train": train, "init": init, "reference": ref_train, "reference_thoughts": teacher},
                      iteration=0, profile="mstep", seed=cfg.seed)
    ev = _eval(cfg, mstep, prepare, latent=False, it=0)
    return Plan("raw", toposort([ev]), [ev])


def bootstrap_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    warm_thoughts = _teacher(cfg, prepare, init, "warm")
    train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts}, "with_thoughts", it=0)
    model = _mstep(cfg, train, init, it=0, epochs=cfg.em.warm_start_epochs)  # the warm start
    evals = [_eval(cfg, model, prepare, latent=True, it=0)]
    for it in range(1, cfg.em.iterations + 1):
        estep = _estep(cfg, model, prepare, it)
        train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts, "thoughts_1": estep}, "with_thoughts", it)
        start = init if cfg.mstep.init == "base" else model
        model = _mstep(cfg, train, start, it=it, epochs=cfg.em.epochs)
        evals.append(_eval(cfg, model, prepare, latent=True, it=it))
    return Plan("bootstrap", toposort(evals), evals)


PLANS = {"raw": raw_plan, "synthetic": synthetic_plan, "bootstrap": bootstrap_plan}


def build_plan(cfg: Any) -> Plan:
    return PLANS[cfg.experiment.kind](cfg)
