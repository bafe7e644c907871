"""A tiny tokenizer + Llama shared by the sampler / E-step / eval tests (seconds to build on CPU)."""

from __future__ import annotations

import functools
import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.tokenization import train_tokenizer

TEXTS = [
    f"Q: {a}*{b}+{c}? A: {a * b + c}. {a}*{b}={a * b}. {a * b}+{c}={a * b + c}. Answer: {a * b + c}\n"
    for a in range(2, 10)
    for b in range(2, 10)
    for c in range(2, 10, 3)
]


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


def tiny_model(seed: int = 0, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # a random init is nearly uniform over the vocabulary; sharper logits make greedy paths and
    # stop tokens meaningful, and sampled sequences less like noise
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    return model.eval()


def train_briefly(model, tok, texts, steps: int = 60, lr: float = 3e-3, seed: int = 0):
    """A few AdamW steps on ``texts`` so the model's samples look like the data (for E-step tests)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = rng.sample(texts, min(16, len(texts)))
        enc = tok([t + tok.eos_token for t in batch], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def sampler_spec(**overrides):
    """The HF sampler's stage settings as the plan builds them from conf/sampler/hf.yaml."""
    from experiments.inputs import SamplerSpec

    values = dict(backend="hf", dtype="float32", fan_out="n", batch_size=16, gpu_memory_utilization=0.85,
                  max_model_len=None, tensor_parallel_size=1, enforce_eager=False, kv_cache_space_gb=1)
    return SamplerSpec(**{**values, **overrides})
