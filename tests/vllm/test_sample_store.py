"""The sample store on vLLM: sample j drawn among K or alone is the same, under both fan-outs.

``fan_out=repeat`` seeds request j with seed + j; ``fan_out=n`` sends one request with seed + first,
whose child i vLLM seeds with seed + first + i. So K topped up from the store equals K from scratch.
Run with ``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``.
"""

import contextlib

import numpy as np
import pandas as pd
import pytest

from tests.vllm.conftest import SKIP_REASON

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.vllm

import experiments.estep as estep  # noqa: E402
from experiments.corpus import generate_corpus  # noqa: E402
from experiments.sample_store import SampleStore  # noqa: E402

ESTEP = dict(max_thought_tokens=12, context_chunks=2, poisson_mean=1.0, max_sentences=3, seed=11, iteration=1)
FLOATS = ["log_p_joint", "log_q", "log_w"]


@contextlib.contextmanager
def fan_out(sampler, mode):
    before, sampler.fan_out = sampler.fan_out, mode
    try:
        yield sampler
    finally:
        sampler.fan_out = before


def ids(rows):
    return [[(s.token_ids, s.finished) for s in row] for row in rows]


@pytest.mark.parametrize("mode", ["n", "repeat"])
def test_indices_drawn_alone_are_those_drawn_with_the_rest(vllm_sampler, mode):
    tok = vllm_sampler.tokenizer
    prompts = [tok("Q: 3*7+5? A:").input_ids, tok("Q: 9").input_ids, tok("Q: 2*8+4? A: 20.").input_ids]
    with fan_out(vllm_sampler, mode) as s:
        full = s.sample(prompts, n=6, max_tokens=10, seed=2)
        head = s.sample(prompts, n=2, max_tokens=10, seed=2)
        tail = s.sample(prompts, n=4, max_tokens=10, seed=2, first=2)
        one = s.sample(prompts[2:], n=1, max_tokens=10, seed=2, first=5)
    assert ids(full) == [a + b for a, b in zip(ids(head), ids(tail))]
    assert ids(one)[0] == ids(full)[2][5:]
    np.testing.assert_allclose([x.logprob_sum for r in full for x in r],
                               [x.logprob_sum for a, b in zip(head, tail) for x in a + b], rtol=1e-6)


@pytest.mark.parametrize("mode", ["n", "repeat"])
def test_k_topped_up_from_the_store_is_k_from_scratch(tmp_path, vllm_sampler, mode):
    docs, _ = generate_corpus(num_train_docs=3, num_eval_docs=1, families=["arith", "word"], difficulty=1, seed=5)
    store = SampleStore(tmp_path, "ckpt", {"backend": "vllm", "dtype": "float32", "fan_out": mode})
    key = ["doc_id", "chunk_id", "sample_idx"]
    frame = lambda rows: pd.DataFrame(rows).sort_values(key).reset_index(drop=True)  # noqa: E731
    with fan_out(vllm_sampler, mode) as s:
        scratch = frame(estep.infer_thoughts(s, docs, num_samples=4, **ESTEP)[0])
        estep.infer_thoughts(s, docs, num_samples=2, **ESTEP, store=store)
        rows, _, counts = estep.infer_thoughts(s, docs, num_samples=4, **ESTEP, store=store)
    topped = frame(rows)
    assert counts["samples_drawn"] == counts["samples_reused"] == 2 * counts["num_chunks"]
    pd.testing.assert_frame_equal(topped.drop(columns=FLOATS), scratch.drop(columns=FLOATS), check_exact=True)
    np.testing.assert_allclose(topped[FLOATS].to_numpy(), scratch[FLOATS].to_numpy(), rtol=1e-6, atol=1e-6)
