"""Stage graphs of the three experiment kinds (docs/method.md "Baselines", docs/design.md "Data flow").

- raw:       prepare -> init -> build_train(raw) -> mstep (budget matched to a latent run's M-step) -> eval
- synthetic: prepare -> init -> teacher(all docs) -> build_train -> mstep -> eval
- bootstrap: prepare -> init -> teacher(warm docs) -> build_train[0] -> mstep[0] -> eval[0], then per
             iteration t: estep[t] (model of t-1) -> build_train[t] -> mstep[t] -> eval[t]

Every stage's typed input (experiments/inputs.py) holds only what it reads, so a change of, say, the E-step's K leaves the data,
the warm start and their cache keys untouched and trials share them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from experiments import inputs as I
from platform.plan import Plan, toposort
from platform.stage import Stage

S = "experiments.data_stages:"


def _chunking(cfg: Any) -> I.Chunking:
    return I.from_section(I.Chunking, cfg.data)


def _sampler(cfg: Any) -> I.SamplerSpec:
    return I.from_section(I.SamplerSpec, cfg.sampler)


def _prepare(cfg: Any) -> Stage:
    d, embedded = cfg.data, cfg.data.name == "embedded"
    params = I.PrepareInput(
        name=d.name, path=None if embedded else d.path, text_column=None if embedded else d.text_column,
        families=tuple(d.families) if embedded else (), difficulty=d.difficulty if embedded else None,
        corpus_seed=d.seed if embedded else None, num_train_docs=d.num_train_docs, num_eval_docs=d.num_eval_docs,
        warm_start_fraction=d.warm_start_fraction, em_docs=d.em_docs, model_path=cfg.model.path,
        vocab_size=None if cfg.model.path else cfg.model.vocab_size)
    return Stage("prepare_data", S + "prepare_data", params)


def _init(cfg: Any, prepare: Stage) -> Stage:
    # a pretrained model's weights do not depend on the run seed (its latent rows use seed 0)
    seed = cfg.seed if cfg.model.path is None else 0
    return Stage("init_model", S + "init_model", I.InitInput(I.from_section(I.ModelSpec, cfg.model), seed),
                 {"data": prepare})


def _teacher(cfg: Any, prepare: Stage, init: Stage, subset: str) -> Stage:
    lm = cfg.teacher.kind == "lm"
    params = I.TeacherInput(I.from_section(I.TeacherSpec, cfg.teacher), subset, _chunking(cfg),
                            cfg.data.thought_chunks, _sampler(cfg) if lm else None, seed=0)
    # the tokenizer that counts thought tokens: a pretrained model's (with the latent tokens, from
    # init) or the one trained in prepare_data; not the seeded weights, so every run seed shares it
    return Stage("teacher", S + "teacher_thoughts", params, {"data": prepare, **({"init": init} if cfg.model.path else {})})


def _epochs(cfg: Any, epochs: Optional[float]) -> float:
    return float(cfg.mstep.epochs if epochs is None else epochs)


def _views(cfg: Any, epochs: float) -> int:
    """Readings of the corpus the M-step needs: one per epoch with fresh coins, else one."""
    coins = cfg.data.format == "random" or 0.0 < cfg.data.raw_mix_ratio < 1.0
    if cfg.data.form_coin != "fresh" or not coins:
        return 1
    return max(1, math.ceil(epochs))


def _train_set(cfg: Any, prepare: Stage, init: Stage, thoughts: dict[str, Stage], docs: str, it: int,
               epochs: float) -> Stage:
    views = _views(cfg, epochs)
    params = I.TrainSetInput(cfg.data.format, cfg.data.raw_mix_ratio, cfg.data.window, _chunking(cfg),
                             cfg.data.form_coin, docs, views, it if cfg.data.form_coin == "fresh" else 0, cfg.seed)
    return Stage("build_train", S + "build_train", params, {"data": prepare, "init": init, **thoughts}, iteration=it)


def _mstep_input(cfg: Any, epochs: float) -> I.MStepInput:
    return I.from_section(I.MStepInput, cfg.mstep, epochs=epochs, dtype=cfg.model.dtype, seed=cfg.seed)


def _mstep(cfg: Any, train: Stage, init: Stage, it: int, epochs: float) -> Stage:
    return Stage("mstep", "experiments.mstep:run_mstep", _mstep_input(cfg, epochs), {"train": train, "init": init},
                 iteration=it, profile="mstep")


def _eval(cfg: Any, model: Stage, prepare: Stage, latent: bool, it: int) -> Stage:
    params = I.from_section(
        I.EvalInput, cfg.eval, sampler=_sampler(cfg), chunking=_chunking(cfg), thought_chunks=cfg.data.thought_chunks,
        latent=latent, iteration=it, seed=cfg.seed,
        # the oracle's empty thoughts on question chunks: the held-out question is prompted the same way
        empty_question_thought=latent and cfg.teacher.kind == "oracle" and cfg.data.thought_chunks == "all")
    return Stage("eval", "experiments.evaluate:run_eval", params, {"model": model, "data": prepare},
                 iteration=it, profile="eval")


def _estep(cfg: Any, model: Stage, prepare: Stage, it: int) -> Stage:
    params = I.from_section(I.EStepInput, cfg.estep, chunking=_chunking(cfg), thought_chunks=cfg.data.thought_chunks,
                            sampler=_sampler(cfg), iteration=it, seed=cfg.seed)
    return Stage("estep", "experiments.estep:run_shard", params, {"model": model, "data": prepare},
                 iteration=it, num_shards=cfg.estep.num_shards, merge_fn="experiments.estep:merge", profile="estep")


def _synthetic(cfg: Any) -> tuple[list[Stage], Stage, Stage]:
    """The synthetic run's evals, its M-step and its teacher stage."""
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    teacher = _teacher(cfg, prepare, init, "all")
    epochs = _epochs(cfg, None)
    train = _train_set(cfg, prepare, init, {"thoughts_0": teacher}, "all", 0, epochs)
    mstep = _mstep(cfg, train, init, 0, epochs)
    return [_eval(cfg, mstep, prepare, latent=cfg.data.format != "raw", it=0)], mstep, teacher


def synthetic_plan(cfg: Any) -> Plan:
    evals, _, _ = _synthetic(cfg)
    return Plan("synthetic", toposort(evals), evals)


def _reference(cfg: Any) -> tuple[Stage, float, list[Stage]]:
    """The latent M-step a raw baseline matches, its epochs, and the teacher stages of its thoughts."""
    latent = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format="random", raw_mix_ratio=0.0))
    if cfg.experiment.reference_experiment == "synthetic":
        _, mstep, teacher = _synthetic(latent)
        return mstep, _epochs(cfg, None), [teacher]
    it = cfg.em.iterations if cfg.experiment.reference_iteration is None else cfg.experiment.reference_iteration
    latent = dataclasses.replace(latent, em=dataclasses.replace(cfg.em, iterations=it))
    steps = _bootstrap(latent)
    mstep = steps[-1][0]
    return mstep, _epochs(cfg, cfg.em.warm_start_epochs if it == 0 else cfg.em.epochs), [steps[0][1]]


def raw_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    epochs = _epochs(cfg, None)
    train = _train_set(cfg, prepare, init, {}, "all", 0, epochs)
    if cfg.experiment.baseline == "none":
        mstep = _mstep(cfg, train, init, 0, epochs)
    else:
        reference, ref_epochs, teachers = _reference(cfg)
        params = I.MatchedMStepInput(_mstep_input(cfg, epochs), cfg.experiment.baseline, ref_epochs)
        mstep = Stage("mstep", "experiments.baselines:run_mstep_matched", params,
                      {"train": train, "init": init, "reference": reference,
                       **{f"reference_thoughts_{i}": t for i, t in enumerate(teachers)}},
                      iteration=0, profile="mstep")
    ev = _eval(cfg, mstep, prepare, latent=False, it=0)
    return Plan("raw", toposort([ev]), [ev])


def _bootstrap(cfg: Any) -> list[tuple[Stage, Stage]]:
    """Per iteration t = 0..em.iterations: (M-step t, the stage that wrote its new thoughts): the
    warm start's teacher at t = 0, the E-step of t after it."""
    prepare = _prepare(cfg)
    init = _init(cfg, prepare)
    warm_thoughts = _teacher(cfg, prepare, init, "warm")
    warm_epochs, em_epochs = _epochs(cfg, cfg.em.warm_start_epochs), _epochs(cfg, cfg.em.epochs)
    train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts}, "with_thoughts", 0, warm_epochs)
    model = _mstep(cfg, train, init, 0, warm_epochs)  # the warm start
    out = [(model, warm_thoughts)]
    for it in range(1, cfg.em.iterations + 1):
        estep = _estep(cfg, model, prepare, it)
        train = _train_set(cfg, prepare, init, {"thoughts_0": warm_thoughts, "thoughts_1": estep}, "with_thoughts", it,
                           em_epochs)
        start = init if cfg.mstep.init == "base" else model
        model = _mstep(cfg, train, start, it, em_epochs)
        out.append((model, estep))
    return out


def bootstrap_plan(cfg: Any) -> Plan:
    prepare = _prepare(cfg)
    evals = [_eval(cfg, model, prepare, latent=True, it=it) for it, (model, _) in enumerate(_bootstrap(cfg))]
    return Plan("bootstrap", toposort(evals), evals)


PLANS = {"raw": raw_plan, "synthetic": synthetic_plan, "bootstrap": bootstrap_plan}


def build_plan(cfg: Any) -> Plan:
    return PLANS[cfg.experiment.kind](cfg)
