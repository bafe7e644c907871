"""One decode step of a Llama-architecture model written as plain tensor ops (the hf sampler's hot loop).

transformers' LlamaForCausalLM.forward spends about half of a small model's decode step in per-op
overhead (module calls, mask and rotary bookkeeping, about 70 ops per layer). This step reads the
same weights (no copies) and runs about 30 ops per layer, with the shared-prompt attention of
decode_cache.py. It serves only what it reproduces exactly: model_type llama, SiLU MLP without
biases, a static RoPE table; ``unsupported_reason`` names why any other model takes the transformers
path. tests/experiments/test_sampler_hf.py checks both paths against a direct forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from experiments.samplers.decode_cache import SharedPrompts, decode_attention

STATIC_ROPE = {"default", "linear", "llama3"}  # inv_freq fixed at load; dynamic types rescale per length


def unsupported_reason(model: torch.nn.Module) -> Optional[str]:
    """None when ``LlamaDecodeStep`` reproduces ``model``'s forward, else why not."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not llama"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP biases"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} is not static"
    return None


@dataclass
class _Layer:
    ln1: torch.Tensor
    eps1: float
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ln2: torch.Tensor
    eps2: float
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    scaling: float


class LlamaDecodeStep:
    """``step(tokens, positions, own_layers, shared_prompts) -> logits`` for one new token per row."""

    def __init__(self, model: torch.nn.Module):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"LlamaDecodeStep cannot run this model: {reason}")
        cfg, inner = model.config, model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.embed = inner.embed_tokens.weight
        self.layers = [
            _Layer(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                   layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight,
                   layer.self_attn.o_proj.weight,
                   layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                   layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight,
                   layer.self_attn.scaling)
            for layer in inner.layers[: cfg.num_hidden_layers]
        ]
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = model.lm_head.weight
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(inner.rotary_emb.attention_scaling)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [rows, 1 (heads), head_dim]
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    @staticmethod
    def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # as LlamaRMSNorm: normalise in float32, cast back, then scale
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, own_layers: list, shared: SharedPrompts) -> torch.Tensor:
        rows = tokens.shape[0]
        h = F.embedding(tokens, self.embed)
        cos, sin = self._rotary(positions, h.dtype)
        for i, L in enumerate(self.layers):
            x = self._rms_norm(h, L.ln1, L.eps1)
            q = self._rope(F.linear(x, L.q).view(rows, self.heads, self.head_dim), cos, sin)
            k = self._rope(F.linear(x, L.k).view(rows, self.kv_heads, self.head_dim), cos, sin)
            v = F.linear(x, L.v).view(rows, self.kv_heads, self.head_dim)
            key, value = own_layers[i].update(k[:, :, None], v[:, :, None])
            attn = decode_attention(shared, i, q[:, :, None], key, value, L.scaling)
            h = h + F.linear(attn.reshape(rows, -1), L.o)
            x = self._rms_norm(h, L.ln2, L.eps2)
            h = h + F.linear(F.silu(F.linear(x, L.gate)) * F.linear(x, L.up), L.down)
        return F.linear(self._rms_norm(h, self.norm, self.norm_eps), self.head)
