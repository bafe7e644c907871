"""The ``hf`` sampler: batched sampling and scoring with a plain transformers causal LM.

Sampling runs all prompts x n samples of a minibatch at once: one left-padded prefill of the
prompts, then one forward per new token. The prompt cache is kept once per prompt and read by all n
of its samples (decode_cache.SharedPrompts); each sample's own tokens go to a preallocated cache
written in place. Llama models run the decode step as plain tensor ops (llama_decode.py), others
through transformers with the shared-prompt attention registered. Finished rows leave the batch as
they stop, so a few long thoughts do not keep the whole batch busy. Measured on the embedded model
at K=8 (benchmarks/, paired runs): 3.9x naive ``generate`` with transformers' DynamicCache, 4.5x
with the two caches, 5.7x with the fused step.

Randomness is counter-based: the Gumbel noise of token v at step t of sample j of a prompt is a hash
of (seed, prompt ids, j, t, v). A sample therefore depends on its prompt, index and seed only, not on
which other prompts share the call, the batch size or the shard; a resumed or re-sharded E-step
draws the same thoughts, and indices j0..j1-1 drawn alone (``first=j0``) are samples j0..j1-1 of a
draw from 0 (the E-step's sample store tops K up that way). (torch.Generator streams are consumed in batch order, so they cannot give
that.) Gumbel-max over logits / T is an exact draw from softmax(logits / T).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import Cache

from experiments.samplers.base import SampleOut, Sampler
from experiments.samplers.decode_cache import PreallocatedLayer, SharedPrompts, attention_implementation
from experiments.samplers.llama_decode import LlamaDecodeStep, unsupported_reason
from experiments.seeding import prompt_seed

_M32 = 0xFFFFFFFF
SCORE_MIN_FILL = 0.75  # a scoring batch wastes at most a quarter of each row on padding
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Mueller's, constant < 2**31 so int64 products never overflow)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def row_keys(seed: int, prompt_ids: list[int], n: int, first: int = 0) -> list[int]:
    """A 32-bit key per (seed, prompt, sample index) for indices ``first .. first + n - 1``: what
    makes a sample independent of batching, and of which other indices are drawn with it."""
    base = prompt_seed(seed, prompt_ids)
    return [int.from_bytes(hashlib.blake2b(struct.pack("<Qq", base, j), digest_size=4).digest(), "little")
            for j in range(first, first + n)]


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


class HFSampler(Sampler):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 256, score_batch_tokens: int = 32768,
                 fused_decode: bool = True):
        if batch_size < 1:
            raise ValueError(f"sampler.batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        # Llama models decode through plain tensor ops; others (or fused_decode=False) through transformers
        self.decode_step = LlamaDecodeStep(model) if fused_decode and unsupported_reason(model) is None else None
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
    def _sample(self, prompts_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                stop_token_id: Optional[int], seed: int, banned_token_ids: Sequence[int],
                first: int = 0) -> list[list[SampleOut]]:
        banned = torch.tensor(sorted(set(banned_token_ids)), dtype=torch.long, device=self.device)
        out: list[list[Optional[SampleOut]]] = [[None] * n for _ in prompts_ids]
        # longest prompts first, so a minibatch holds prompts of similar length (little padding)
        order = sorted(range(len(prompts_ids)), key=lambda i: -len(prompts_ids[i]))
        per_batch = max(1, self.batch_size // n)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            results = self._sample_batch([prompts_ids[i] for i in idx], n, max_tokens, temperature, stop_token_id, seed,
                                         banned, first)
            for b, i in enumerate(idx):
                out[i] = results[b * n : (b + 1) * n]
        return out  # type: ignore[return-value]

    def _prefill(self, prompts: list[list[int]], n: int) -> tuple[torch.Tensor, SharedPrompts, torch.Tensor]:
        """One left-padded forward of the prompts: the first logits and position of each of the
        ``len(prompts) * n`` rows (sample j of prompt b is row b * n + j), and the shared prompt cache."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # explicit positions: with left padding the first real token must sit at position 0
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        prefill = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=prefill, use_cache=True, logits_to_keep=1
        ).logits[:, -1]
        # the n samples of a prompt share its prefill: its logits are repeated, its cache is not
        prompts_kv = SharedPrompts(prefill, mask, n)
        del prefill
        return logits.repeat_interleave(n, 0), prompts_kv, pos[:, -1:].repeat_interleave(n, 0) + 1

    def _sample_batch(self, prompts, n, max_tokens, temperature, stop_id, seed, banned, first=0) -> list[SampleOut]:
        dev = self.device
        logits, prompts_kv, next_pos = self._prefill(prompts, n)
        own = Cache(layers=[PreallocatedLayer(max_tokens) for _ in range(self.model.config.num_hidden_layers)])
        keys = torch.tensor([k for p in prompts for k in row_keys(seed, p, n, first)], dtype=torch.int64, device=dev)

        rows = len(prompts) * n
        alive = torch.arange(rows, device=dev)  # original row of each decode row
        tok_buf = torch.zeros((rows, max_tokens), dtype=torch.long, device=dev)
        lp_buf = torch.zeros((rows, max_tokens), dtype=torch.float32, device=dev)
        length = torch.zeros(rows, dtype=torch.long, device=dev)
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        # only the transformers path reads the registered attention; the fused step calls it directly
        fallback = self.decode_step is None
        with attention_implementation(self.model, "shared_prompt_decode") if fallback else contextlib.nullcontext():
            for step in range(max_tokens):
                logits = logits.float()
                if banned.numel():  # the distribution sampled (and scored as log q) has no mass on them
                    logits[:, banned] = float("-inf")
                tok = choose_tokens(logits, temperature, keys, step)
                stop = tok == stop_id if stop_id is not None else torch.zeros_like(tok, dtype=torch.bool)
                keep = ~stop
                tok_buf[alive, step] = tok
                lp_buf[alive, step] = logits.gather(1, tok[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
                length[alive[keep]] += 1
                finished[alive[stop]] = True
                if step == max_tokens - 1 or not keep.any():
                    break
                if not keep.all():  # finished rows leave the batch and the caches
                    sel = keep.nonzero()[:, 0]
                    own.batch_select_indices(sel)
                    prompts_kv.select(sel)
                    alive, tok, keys, next_pos = alive[sel], tok[sel], keys[sel], next_pos[sel]
                if not fallback:
                    logits = self.decode_step.step(tok, next_pos[:, 0], own.layers, prompts_kv)
                else:
                    logits = self.model(
                        input_ids=tok[:, None], position_ids=next_pos, past_key_values=own, use_cache=True,
                        shared_prompts=prompts_kv,
                    ).logits[:, -1]
                next_pos = next_pos + 1
        return self._outputs(tok_buf, lp_buf, length, finished)

    def _outputs(self, tok_buf: torch.Tensor, lp_buf: torch.Tensor, length: torch.Tensor,
                 finished: torch.Tensor) -> list[SampleOut]:
        lens, fin = length.tolist(), finished.tolist()
        toks, lps = tok_buf.tolist(), lp_buf.tolist()
        return [
            SampleOut(
                toks[r][: lens[r]],
                lps[r][: lens[r]],
                self.tokenizer.decode(toks[r][: lens[r]], skip_special_tokens=False),
                fin[r],
                lps[r][lens[r]] if fin[r] else 0.0,  # the stop token sits right after the kept ones
            )
            for r in range(len(lens))
        ]

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score_tokens(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[list[float]]:
        seqs = [list(p) + list(c) for p, c in zip(prefix_ids, cont_ids)]
        out: list[list[float]] = [[] for _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        start = 0
        while start < len(order):
            # as many sequences as fit the token budget (at least one), capped by batch_size, and only
            # those at least SCORE_MIN_FILL of the longest: padding is compute spent on nothing
            width = len(seqs[order[start]])
            count = max(1, min(self.batch_size, self.score_batch_tokens // max(width, 1)))
            count = next((c for c in range(1, count) if start + c < len(order)
                          and len(seqs[order[start + c]]) < SCORE_MIN_FILL * width), count)
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
