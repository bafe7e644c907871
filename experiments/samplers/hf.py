"""The ``hf`` sampler: batched sampling and scoring with a plain transformers causal LM.

Sampling runs all prompts x n samples of a minibatch at once: one left-padded prefill of the
prompts, then one forward per new token. The prompt cache is kept once per prompt and read by all n
of its samples (``SharedPrompts``, a registered attention function); each sample's own tokens go to
a preallocated cache written in place. Finished rows leave the batch as they stop, so a few long
thoughts do not keep the whole batch busy. Measured on the embedded model (benchmarks/): the two
caches took the sampler from 3.2x to 5.4x naive ``generate`` at K=8.

Randomness is counter-based: the Gumbel noise of token v at step t of sample j of a prompt is a hash
of (seed, prompt ids, j, t, v). A sample therefore depends on its prompt, index and seed only, not on
which other prompts share the call, the batch size or the shard; a resumed or re-sharded E-step
draws the same thoughts. (torch.Generator streams are consumed in batch order, so they cannot give
that.) Gumbel-max over logits / T is an exact draw from softmax(logits / T).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from experiments.samplers.base import SampleOut, check_sample_args, check_score_args

_M32 = 0xFFFFFFFF
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Mueller's, constant < 2**31 so int64 products never overflow)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def row_keys(seed: int, prompt_ids: list[int], n: int) -> list[int]:
    """A 32-bit key per (seed, prompt, sample index): what makes a sample independent of batching."""
    digest = hashlib.blake2b(struct.pack(f"<q{len(prompt_ids)}q", seed, *prompt_ids), digest_size=8).digest()
    base = int.from_bytes(digest, "little")
    return [int.from_bytes(hashlib.blake2b(struct.pack("<Qq", base, j), digest_size=4).digest(), "little") for j in range(n)]


def gumbel_noise(keys: torch.Tensor, step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise [rows, vocab], a pure function of (key, step, vocab index).

    Two 24-bit hashes make a 48-bit uniform in (0, 1), fine enough that tokens with p ~ 1e-12 keep
    their probability.
    """
    k = _mix32((keys.to(device) ^ _mix32(torch.tensor(step, device=device) + 0x9E3779B)) & _M32)[:, None]
    v = torch.arange(vocab, device=device, dtype=torch.int64)[None, :]
    h1 = _mix32((k + v * 0x2545F49) & _M32) >> 8
    h2 = _mix32((h1 ^ (k * 0x27D4EB2)) & _M32) >> 8
    u = (h1.double() * 2.0**24 + h2.double() + 0.5) / 2.0**48
    return -torch.log(-torch.log(u))


def choose_tokens(logits: torch.Tensor, temperature: float, keys: torch.Tensor, step: int) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else Gumbel-max over logits / T."""
    if temperature == 0:
        return logits.argmax(-1)
    noise = gumbel_noise(keys, step, logits.shape[-1], logits.device)
    return (logits.double() / temperature + noise).argmax(-1)


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


def shared_prompt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prompts: Optional[SharedPrompts] = None, **kwargs):
    """Decode-step attention (one query per row) over the shared prompt cache + the row's own tokens.

    Registered with transformers' AttentionInterface; ``key``/``value`` are the generated tokens only.
    """
    if shared_prompts is None or query.shape[2] != 1:
        raise RuntimeError("shared_prompt_attention serves single-token decode steps with shared_prompts=...")
    sp, layer = shared_prompts, module.layer_idx
    rows, heads, _, dim = query.shape
    kvh = key.shape[1]
    rep = heads // kvh  # grouped-query attention: query head h reads kv head h // rep
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(rows, kvh, rep, dim)
    prompt_scores = sp.to_prompt_blocks(q) @ sp.keys[layer].transpose(-1, -2) * scaling + sp.bias
    own_scores = q @ key.transpose(-1, -2) * scaling
    scores = torch.cat([sp.from_prompt_blocks(prompt_scores, rep), own_scores], dim=-1)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    width = prompt_scores.shape[-1]
    out = sp.from_prompt_blocks(sp.to_prompt_blocks(probs[..., :width]) @ sp.values[layer], rep)
    out = out + probs[..., width:] @ value
    return out.reshape(rows, 1, heads, dim), None


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


class HFSampler:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 256, score_batch_tokens: int = 32768):
        if batch_size < 1:
            raise ValueError(f"sampler.batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.score_batch_tokens = score_batch_tokens  # padded tokens per scoring forward
        self.device = next(model.parameters()).device
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0  # pad positions are masked; any valid id works

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, sampler_cfg: Optional[dict[str, Any]] = None) -> "HFSampler":
        cfg = sampler_cfg or {}
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(f"no model checkpoint in {model_dir} (config.json missing)")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = cfg.get("dtype", "auto")
        if dtype_name != "auto" and dtype_name not in _DTYPES:
            raise ValueError(f"sampler.dtype={dtype_name!r} is not one of {['auto', *_DTYPES]}")
        dtype = "auto" if dtype_name == "auto" else _DTYPES[dtype_name]
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        return cls(model, tok, batch_size=int(cfg.get("batch_size", 256)))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        prompts_ids: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop_token_id: Optional[int] = None,
        seed: int = 0,
    ) -> list[list[SampleOut]]:
        check_sample_args(prompts_ids, n, max_tokens, temperature)
        out: list[list[Optional[SampleOut]]] = [[None] * n for _ in prompts_ids]
        # longest prompts first, so a minibatch holds prompts of similar length (little padding)
        order = sorted(range(len(prompts_ids)), key=lambda i: -len(prompts_ids[i]))
        per_batch = max(1, self.batch_size // n)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            results = self._sample_batch([prompts_ids[i] for i in idx], n, max_tokens, temperature, stop_token_id, seed)
            for b, i in enumerate(idx):
                out[i] = results[b * n : (b + 1) * n]
        return out  # type: ignore[return-value]

    def _sample_batch(self, prompts, n, max_tokens, temperature, stop_id, seed) -> list[SampleOut]:
        dev = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # explicit positions: with left padding the first real token must sit at position 0
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        prefill = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=prefill, use_cache=True, logits_to_keep=1
        ).logits[:, -1]
        # the n samples of a prompt share its prefill: its logits are repeated, its cache is not
        prompts_kv = SharedPrompts(prefill, mask, n)
        del prefill
        logits = logits.repeat_interleave(n, 0)
        next_pos = pos[:, -1:].repeat_interleave(n, 0) + 1
        own = Cache(layers=[PreallocatedLayer(max_tokens) for _ in range(self.model.config.num_hidden_layers)])
        keys = torch.tensor([k for p in prompts for k in row_keys(seed, p, n)], dtype=torch.int64, device=dev)

        rows = len(prompts) * n
        alive = torch.arange(rows, device=dev)  # original row of each decode row
        tok_buf = torch.zeros((rows, max_tokens), dtype=torch.long, device=dev)
        lp_buf = torch.zeros((rows, max_tokens), dtype=torch.float32, device=dev)
        length = torch.zeros(rows, dtype=torch.long, device=dev)
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        with attention_implementation(self.model, "shared_prompt_decode"):
            for step in range(max_tokens):
                logp = F.log_softmax(logits.float(), dim=-1)
                tok = choose_tokens(logits, temperature, keys, step)
                stop = tok == stop_id if stop_id is not None else torch.zeros_like(tok, dtype=torch.bool)
                keep = ~stop
                tok_buf[alive, step] = tok
                lp_buf[alive, step] = logp.gather(1, tok[:, None])[:, 0]
                length[alive[keep]] += 1
                finished[alive[stop]] = True
                if step == max_tokens - 1 or not keep.any():
                    break
                if not keep.all():  # finished rows leave the batch and the caches
                    sel = keep.nonzero()[:, 0]
                    own.batch_select_indices(sel)
                    prompts_kv.select(sel)
                    alive, tok, keys, next_pos = alive[sel], tok[sel], keys[sel], next_pos[sel]
                logits = self.model(
                    input_ids=tok[:, None], position_ids=next_pos, past_key_values=own, use_cache=True,
                    shared_prompts=prompts_kv,
                ).logits[:, -1]
                next_pos = next_pos + 1
        lens, fin = length.tolist(), finished.tolist()
        toks, lps = tok_buf.tolist(), lp_buf.tolist()
        return [
            SampleOut(
                toks[r][: lens[r]],
                lps[r][: lens[r]],
                self.tokenizer.decode(toks[r][: lens[r]], skip_special_tokens=False),
                fin[r],
            )
            for r in range(rows)
        ]

    # ---------------------------------------------------------------- scoring
    def score(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[float]:
        return [float(sum(t)) for t in self.score_tokens(prefix_ids, cont_ids)]

    @torch.no_grad()
    def score_tokens(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[list[float]]:
        check_score_args(prefix_ids, cont_ids)
        seqs = [list(p) + list(c) for p, c in zip(prefix_ids, cont_ids)]
        out: list[list[float]] = [[] for _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        start = 0
        while start < len(order):
            # as many sequences as fit the token budget (at least one), capped by batch_size
            width = len(seqs[order[start]])
            count = max(1, min(self.batch_size, self.score_batch_tokens // max(width, 1)))
            idx = [i for i in order[start : start + count] if cont_ids[i]]
            start += count
            if idx:
                scored = self._score_batch([seqs[i] for i in idx], [len(prefix_ids[i]) for i in idx])
                for i, s in zip(idx, scored):
                    out[i] = s
        return out

    def _score_batch(self, seqs: list[list[int]], prefix_lens: list[int]) -> list[list[float]]:
        dev = self.device
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):  # right padding: positions 0.. are the real ones, no position ids needed
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        # the LM head only at the positions that predict continuation tokens: [B, L, V] logits of a
        # long batch would not fit in memory for a 32k vocabulary
        rows = torch.cat([torch.full((len(s) - p,), b) for b, (s, p) in enumerate(zip(seqs, prefix_lens))])
        cols = torch.cat([torch.arange(p - 1, len(s) - 1) for s, p in zip(seqs, prefix_lens)])
        rows, cols = rows.to(dev), cols.to(dev)
        targets = ids[rows, cols + 1]
        head = self.model.get_output_embeddings()
        picked = []
        for chunk in torch.split(torch.arange(len(rows), device=dev), 4096):
            logp = F.log_softmax(head(hidden[rows[chunk], cols[chunk]]).float(), dim=-1)
            picked.append(logp.gather(1, targets[chunk][:, None])[:, 0])
        flat = torch.cat(picked).tolist()
        res, at = [], 0
        for s, p in zip(seqs, prefix_lens):
            res.append(flat[at : at + len(s) - p])
            at += len(s) - p
        return res
