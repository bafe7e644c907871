"""The model: a Llama-architecture causal LM built from ModelConfig, saved in Hugging Face format.

Checkpoints are plain ``save_pretrained`` folders (config.json + model.safetensors + tokenizer
files), so ``AutoModelForCausalLM.from_pretrained``, vLLM and lm-evaluation-harness load them as-is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def llama_config(model_cfg: dict[str, Any], vocab_size: int, bos_id: int, eos_id: int, pad_id: Optional[int]) -> LlamaConfig:
    """LlamaConfig from the ModelConfig fields; a bad shape is one error naming the field."""
    h, heads = int(model_cfg["hidden_size"]), int(model_cfg["num_heads"])
    kv = int(model_cfg.get("num_kv_heads", heads))
    if h % heads:
        raise ValueError(f"model.hidden_size={h} is not divisible by model.num_heads={heads}")
    if heads % kv:
        raise ValueError(f"model.num_heads={heads} is not divisible by model.num_kv_heads={kv}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=h,
        num_hidden_layers=int(model_cfg["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=int(model_cfg["intermediate_size"]),
        max_position_embeddings=int(model_cfg["max_position_embeddings"]),
        tie_word_embeddings=bool(model_cfg.get("tie_embeddings", True)),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )


def build_model(
    model_cfg: dict[str, Any], vocab_size: int, bos_id: int, eos_id: int, pad_id: Optional[int], seed: int
) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives bit-identical weights in any process."""
    config = llama_config(model_cfg, vocab_size, bos_id, eos_id, pad_id)
    # fork_rng: building a model must not shift the caller's global RNG stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(_dtype(model_cfg.get("dtype", "float32")))


def save_model(model: torch.nn.Module, tok: Optional[PreTrainedTokenizerBase], out_dir: str | Path) -> Path:
    """Write weights (safetensors), config, generation config and the tokenizer into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(str(out))
    return out


def load_model(path: str | Path, dtype: str = "float32") -> torch.nn.Module:
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"no model checkpoint in {path} (config.json missing)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_dtype(dtype))
    model.eval()
    return model


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Parameters, each tensor once (tied embeddings count once).

    ``non_embedding=True`` drops the input embedding and an untied output head, the convention of
    the scaling-law FLOP estimate 6 * N * tokens.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    if non_embedding:
        emb = model.get_input_embeddings().weight
        total -= emb.numel()
        out = model.get_output_embeddings()
        if out is not None and out.weight is not emb:
            total -= out.weight.numel()
    return total
