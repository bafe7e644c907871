"""The ``lm`` teacher on vLLM (experiments/teacher_lm.py with sampler.backend=vllm).

A tiny checkpoint: the engine is built on the first cache miss only, closed after generating, and a
rerun from the cache builds none; the same seed writes the same thoughts. SmolLM2-135M-Instruct
(slow): its chat template, stopping at <|im_end|>, non-empty thoughts and 2N FLOPs per token.
Run with ``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``.
"""

import pytest

from tests.vllm.conftest import SKIP_REASON
from tests.vllm.test_smollm2 import smollm2_dir  # noqa: F401 - the shared checkpoint fixture

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.vllm

from experiments.corpus import Problem, make_document  # noqa: E402
from experiments.estep import checkpoint_num_params  # noqa: E402
from experiments.teacher import build_requests, build_teacher  # noqa: E402

DOC = make_document("d0", [Problem("What is 3*7+5?", "26", "3*7=21. 21+5=26.", "arith"),
                           Problem("Solve 2*x+4=10 for x.", "3", "10-4=6. 6/2=3. So x=3.", "equation")])
VLLM = {"backend": "vllm", "dtype": "float32", "kv_cache_space_gb": 1}


def test_vllm_lm_teacher_is_lazy_seeded_and_cached(tmp_path, tiny_checkpoint):
    cfg = {"kind": "lm", "model_path": str(tiny_checkpoint), "temperature": 1.0, "max_tokens": 12}
    reqs = build_requests(DOC)
    t = build_teacher(cfg, tmp_path / "a", sampler_cfg=VLLM, seed=7)
    assert t.generate.sampler is None
    first = t.thoughts(reqs)
    assert t.requests_sent == 4 and t.generate.builds == 1 and t.generate.sampler is None  # engine closed
    assert len(first) == 4 and all(z is None or isinstance(z, str) for z in first)
    n = checkpoint_num_params(tiny_checkpoint)
    assert 4 <= t.generated_tokens <= 4 * 13 and t.prompt_tokens > 0
    assert t.generation_flops == 2.0 * n * (t.prompt_tokens + t.generated_tokens)
    rerun = build_teacher(cfg, tmp_path / "a", sampler_cfg=VLLM, seed=7)
    assert rerun.thoughts(reqs) == first and rerun.requests_sent == 0 and rerun.generate.builds == 0
    fresh = build_teacher(cfg, tmp_path / "b", sampler_cfg=VLLM, seed=7)
    assert fresh.thoughts(reqs[::-1]) == first[::-1]  # seeded: same thoughts, any order


@pytest.mark.slow
def test_smollm2_teacher_uses_its_chat_template(tmp_path, smollm2_dir):  # noqa: F811
    cfg = {"kind": "lm", "model_path": str(smollm2_dir), "temperature": 0.7, "max_tokens": 48}
    reqs = build_requests(DOC)[:2]
    t = build_teacher(cfg, tmp_path, sampler_cfg={**VLLM, "dtype": "bfloat16"}, seed=0)
    thoughts = t.thoughts(reqs)
    assert all(z and z.strip() for z in thoughts)
    assert not any("<|im_" in z or "<|endoftext|>" in z for z in thoughts)  # cut at the turn, no special tokens
    # the chat template's system + user turn wraps the paper's prompt: well over its bare length
    assert t.prompt_tokens > 2 * 100 and 2 <= t.generated_tokens <= 2 * 49
    assert t.generation_flops == 2.0 * checkpoint_num_params(smollm2_dir) * (t.prompt_tokens + t.generated_tokens)
