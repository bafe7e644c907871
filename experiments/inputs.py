"""Typed inputs of the science stages: what each stage reads, and nothing more.

The stage graphs (``experiments/graphs.py``) build them from the validated config; a stage function
receives one as ``ctx.params``. Every field enters the stage's cache key except those declared with
``perf()``: settings that change how fast or where a stage runs, how often it logs or checkpoints,
but not what it computes (docs/design.md "Cache keys"). This file is the one place that says which.

No field has a default: the config's dataclasses (``experiments/config.py``) hold the defaults, and
ranges are checked once, in validation (``experiments/app.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from platform.compose import to_dict
from platform.stage import perf


def from_section(cls: type, section: Any, **overrides: Any) -> Any:
    """``cls`` built from the same-named fields of a config section (lists become tuples)."""
    values = to_dict(section) if not isinstance(section, dict) else section
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = overrides[f.name] if f.name in overrides else values[f.name]
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class Chunking:
    """How documents are cut into chunks (the chunk is the unit a thought explains)."""

    chunk_poisson_mean: float
    chunk_max_sentences: int


@dataclass(frozen=True)
class SamplerSpec:
    backend: str  # hf and vllm draw different samples from the same seed
    dtype: str
    fan_out: str  # vllm: n=K in one request, or K requests; seeded differently
    batch_size: int = perf()
    gpu_memory_utilization: float = perf()
    max_model_len: Optional[int] = perf()
    tensor_parallel_size: int = perf()
    enforce_eager: bool = perf()
    kv_cache_space_gb: int = perf()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Optional[str]
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    tie_embeddings: bool
    vocab_size: int
    dtype: str


@dataclass(frozen=True)
class TeacherSpec:
    kind: str
    model_path: Optional[str]
    base_url: Optional[str]
    model: Optional[str]
    temperature: float
    max_tokens: int
    api_key_env: str = perf()
    concurrency: int = perf()
    max_retries: int = perf()
    timeout_s: float = perf()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PrepareInput:
    """prepare_data: the corpus, its train/eval and warm/EM splits, and the tokenizer."""

    name: str  # embedded | jsonl | parquet
    path: Optional[str]  # jsonl/parquet only
    text_column: Optional[str]  # jsonl/parquet only
    families: tuple[str, ...]  # embedded only
    difficulty: Optional[int]  # embedded only
    corpus_seed: Optional[int]  # embedded only: the generator's seed, not the run's
    num_train_docs: int
    num_eval_docs: int
    warm_start_fraction: float
    em_docs: Optional[int]
    model_path: Optional[str]  # a pretrained model brings its tokenizer; else one is trained here
    vocab_size: Optional[int]


@dataclass(frozen=True)
class InitInput:
    model: ModelSpec
    seed: int  # initialises the weights built from config (and the latent-token rows)


@dataclass(frozen=True)
class TeacherInput:
    teacher: TeacherSpec
    subset: str  # all | warm
    chunking: Chunking
    thought_chunks: str  # all | annotated
    sampler: Optional[SamplerSpec]  # teacher=lm samples with it
    seed: int  # the teacher's own draw: one set of thoughts per corpus, shared by every run seed


@dataclass(frozen=True)
class TrainSetInput:
    format: str  # random | prior_only | posterior_only | raw
    raw_mix_ratio: float
    window: int
    chunking: Chunking
    form_coin: str  # fresh | frozen
    docs: str  # all | with_thoughts
    views: int  # readings of the corpus packed one after another (fresh coins per epoch)
    iteration: int  # fresh coins are drawn per (seed, iteration, view); 0 when frozen
    seed: int


@dataclass(frozen=True)
class MStepInput:
    lr: float
    betas: tuple[float, ...]
    weight_decay: float
    grad_clip: float
    warmup_steps: int
    batch_size: int  # windows per optimizer step: changes the optimisation, so it is keyed
    epochs: float
    train_tokens: Optional[int]
    dtype: str  # bfloat16 trains under autocast
    seed: int
    micro_batch_size: Optional[int] = perf()  # gradient accumulation: the same step, in pieces
    checkpoint_every: int = perf()
    log_every: int = perf()
    num_threads: Optional[int] = perf()


@dataclass(frozen=True)
class MatchedMStepInput:
    """A raw baseline's M-step, its token budget matched to a reference latent M-step."""

    mstep: MStepInput
    baseline: str  # raw_token_match | raw_flop_match | compute_match
    reference_epochs: float

    @property
    def seed(self) -> int:
        return self.mstep.seed


@dataclass(frozen=True)
class EStepInput:
    num_samples: int  # K
    max_thought_tokens: int
    temperature: float
    context_chunks: int
    chunking: Chunking
    thought_chunks: str
    sampler: SamplerSpec
    iteration: int  # seeds the draws with the run seed
    seed: int
    group_docs: int = perf()  # documents per resumable cache group: samples are drawn per prompt
    # reuse stored samples of the same checkpoint and settings: sample j is the same drawn now or then
    sample_store: bool = perf()


@dataclass(frozen=True)
class EvalInput:
    num_problems: Optional[int]
    max_new_tokens: int
    max_thought_tokens: int
    elbo_docs: int
    harness_tasks: tuple[str, ...]
    sampler: SamplerSpec
    chunking: Chunking
    thought_chunks: str
    latent: bool  # prompt a thought before the answer
    empty_question_thought: bool  # the oracle's empty thoughts on question chunks: prompt questions so
    iteration: int  # seeds the ELBO draws
    seed: int
