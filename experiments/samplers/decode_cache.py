"""The hf sampler's decode-time caches: a preallocated cache of each sample's own tokens, and the
prompt cache shared by the n samples of a prompt, with the attention that reads both."""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV cache layer that writes each step into a buffer sized for the whole generation.

    DynamicLayer concatenates the whole cache with the new token at every step (O(length) copies per
    token: 43% of the batched sampler's time at K=8 on the embedded model); here a step writes one
    column in place and attention reads a view of the filled part.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._kbuf: Optional[torch.Tensor] = None
        self._vbuf: Optional[torch.Tensor] = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            b, h, _, d = key_states.shape
            self._kbuf = key_states.new_empty((b, h, self.capacity, d))
            self._vbuf = value_states.new_empty((b, h, self.capacity, d))
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"PreallocatedLayer: {end} positions exceed the capacity {self.capacity}")
        self._kbuf[:, :, self.length : end] = key_states
        self._vbuf[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
            self.keys, self.values = self._kbuf[:, :, : self.length], self._vbuf[:, :, : self.length]


class SharedPrompts:
    """The prompts' KV cache, stored once per prompt, for the n samples that continue each prompt.

    Repeating a prompt's cache n times would make every decode step read n copies of it: attention
    in the decode loop is memory-bound, so that read was the largest cost at K=8. Instead a decode
    step attends to the prompt part with the n samples' queries stacked as one [n*heads] block per
    prompt (one matmul against the single copy), and to its own generated tokens separately; one
    softmax spans both parts, so the result is exactly attention over the concatenation.
    """

    def __init__(self, prefill: Any, mask: torch.Tensor, n: int):
        self.keys = [layer.keys for layer in prefill.layers]  # [prompts, kv_heads, width, head_dim]
        self.values = [layer.values for layer in prefill.layers]
        bias = torch.zeros(mask.shape, dtype=self.keys[0].dtype, device=mask.device)
        self.bias = bias.masked_fill(mask == 0, float("-inf"))[:, None, None, :]  # left padding is never attended
        self.n = n
        rows = torch.arange(mask.shape[0] * n, device=mask.device)
        self.group, self.slot = rows // n, rows % n  # prompt and sample index of each decode row
        self.dense = True  # rows are exactly prompts x n in order: gather/scatter become reshapes

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (finished samples leave); drop prompts no row continues once half are idle."""
        self.group, self.slot, self.dense = self.group[rows], self.slot[rows], False
        live = torch.unique(self.group)
        if len(live) * 2 <= self.bias.shape[0]:
            self.keys = [k[live] for k in self.keys]
            self.values = [v[live] for v in self.values]
            self.bias = self.bias[live]
            self.group = torch.searchsorted(live, self.group)

    def to_prompt_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, kv_heads, rep, L] -> [prompts, kv_heads, n*rep, L] (absent samples are zeros)."""
        prompts, (_, kvh, rep, length) = self.bias.shape[0], x.shape
        if self.dense:
            grid = x.reshape(prompts, self.n, kvh, rep, length)
        else:
            grid = x.new_zeros((prompts, self.n, kvh, rep, length))
            grid[self.group, self.slot] = x
        return grid.transpose(1, 2).reshape(prompts, kvh, self.n * rep, length)

    def from_prompt_blocks(self, x: torch.Tensor, rep: int) -> torch.Tensor:
        """The inverse of ``to_prompt_blocks`` for the rows still decoding."""
        prompts, kvh, _, length = x.shape
        grid = x.reshape(prompts, kvh, self.n, rep, length).transpose(1, 2)
        if self.dense:
            return grid.reshape(prompts * self.n, kvh, rep, length)
        return grid[self.group, self.slot]


def decode_attention(sp: SharedPrompts, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     scaling: Optional[float] = None) -> torch.Tensor:
    """One decode step's attention: query [rows, heads, 1, dim] over the shared prompt cache of
    ``layer`` and the row's own tokens ``key``/``value`` [rows, kv_heads, generated, dim].
    Returns [rows, 1, heads, dim] (transformers' attention output layout)."""
    rows, heads, _, dim = query.shape
    kvh = key.shape[1]
    rep = heads // kvh  # grouped-query attention: query head h reads kv head h // rep
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(rows, kvh, rep, dim) * scaling
    prompt_scores = sp.to_prompt_blocks(q) @ sp.keys[layer].transpose(-1, -2) + sp.bias
    own_scores = q @ key.transpose(-1, -2)
    scores = torch.cat([sp.from_prompt_blocks(prompt_scores, rep), own_scores], dim=-1)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    width = prompt_scores.shape[-1]
    out = sp.from_prompt_blocks(sp.to_prompt_blocks(probs[..., :width]) @ sp.values[layer], rep)
    out = out + probs[..., width:] @ value
    return out.reshape(rows, 1, heads, dim)


def shared_prompt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prompts: Optional[SharedPrompts] = None, **kwargs):
    """``decode_attention`` as a transformers attention function (any model using AttentionInterface)."""
    if shared_prompts is None or query.shape[2] != 1:
        raise RuntimeError("shared_prompt_attention serves single-token decode steps with shared_prompts=...")
    return decode_attention(shared_prompts, module.layer_idx, query, key, value, scaling), None


AttentionInterface.register("shared_prompt_decode", shared_prompt_attention)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str):
    """Run the model's attention layers with ``name`` for the duration (restored even on error)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before
