"""The ``lm`` teacher on a real checkpoint: experiments/teacher_lm.py in-process, then the real CLI.

The CLI test trains a tiny embedded model (``experiment=raw_baseline experiment.baseline=none``) and
uses its checkpoint as the teacher of ``experiment=synthetic_thoughts teacher=lm``: the teacher's
output is text that the student's tokenizer re-encodes, so any Hugging Face checkpoint works.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.corpus import Problem, make_document
from experiments.docstore import load_thoughts
from experiments.samplers.base import SampleOut
from experiments.teacher import build_requests, build_teacher, teacher_prompt
from experiments.teacher_lm import Generation, SamplerGenerate, encode_prompt, stop_ids
from tests.experiments.tiny_lm import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DOC = make_document("d0", [Problem("What is 3*7+5?", "26", "3*7=21. 21+5=26.", "arith"),
                           Problem("Solve 2*x+4=10 for x.", "3", "10-4=6. 6/2=3. So x=3.", "arith")])
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from experiments.modeling import save_model

    torch.set_num_threads(1)
    return save_model(tiny_model(seed=1), tiny_tokenizer(), tmp_path_factory.mktemp("teacher") / "model")


def _n_params(model_dir):
    from experiments.estep import checkpoint_num_params

    return checkpoint_num_params(model_dir)


def test_plain_tokenizer_prompt_has_bos_and_stops_at_eos():
    tok = tiny_tokenizer()
    ids = encode_prompt(tok, "Q: 2*3+4?")
    assert ids[0] == tok.bos_token_id and ids == tok("Q: 2*3+4?").input_ids
    assert stop_ids(tok) == (tok.eos_token_id, {tok.eos_token_id})


def test_chat_template_prompt_and_end_of_turn_stop():
    tok = copy.deepcopy(tiny_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    ids = encode_prompt(tok, "Think.")
    assert tok.decode(ids) == "<|im_start|>user\nThink.<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] != tok.bos_token_id  # the template's own tokens, no BOS in front of them
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(tok) == (eot, {eot, tok.eos_token_id})


def test_thought_is_cut_at_eos_and_drops_special_tokens(checkpoint):
    from experiments.tokens import SOL

    tok = tiny_tokenizer()
    body = tok.encode(" 3*7=21.", add_special_tokens=False)
    sol = tok.encode(SOL, add_special_tokens=False)

    class Fake:
        tokenizer = tok
        calls = []

        def sample(self, prompts_ids, n, max_tokens, temperature, stop_token_id, seed):
            self.calls.append((n, max_tokens, temperature, stop_token_id, seed))
            # a latent token inside, then EOS as a plain id (a chat model stops at end-of-turn instead)
            return [[SampleOut(sol + body + [tok.eos_token_id] + body, [], "", False)] for _ in prompts_ids]

    g = SamplerGenerate(checkpoint, {"backend": "hf"}, seed=5)
    g.sampler = Fake()
    (out,) = g(["p"], 9, 0.5)
    assert out.text.strip() == "3*7=21." and out.generated_tokens == len(sol) + 2 * len(body) + 1
    assert out.prompt_tokens == len(tok("p").input_ids)
    assert Fake.calls == [(1, 9, 0.5, tok.eos_token_id, 5)]


def test_sampler_generate_is_lazy_seeded_and_counts(checkpoint):
    tok = tiny_tokenizer()
    prompts = [teacher_prompt(r) for r in build_requests(DOC)]
    g = SamplerGenerate(checkpoint, {"backend": "hf", "batch_size": 8}, seed=3)
    assert g.sampler is None and g.builds == 0
    assert g.num_params == _n_params(checkpoint) > 0 and g.sampler is None  # N from the headers, no load
    out = g(prompts, 8, 1.0)
    assert g.builds == 1 and all(isinstance(o, Generation) for o in out)
    assert [o.prompt_tokens for o in out] == [len(tok(p).input_ids) for p in prompts]
    assert all(1 <= o.generated_tokens <= 9 for o in out)
    again = SamplerGenerate(checkpoint, {"backend": "hf", "batch_size": 2}, seed=3)(prompts[::-1], 8, 1.0)
    assert again[::-1] == out  # seeded: the same thoughts in another order and batch size
    other = SamplerGenerate(checkpoint, {"backend": "hf"}, seed=4)(prompts, 8, 1.0)
    assert [o.text for o in other] != [o.text for o in out]


def test_lm_teacher_from_config_counts_flops_and_reruns_from_cache(tmp_path, checkpoint):
    cfg = {"kind": "lm", "model_path": str(checkpoint), "temperature": 1.0, "max_tokens": 8}
    reqs = build_requests(DOC)
    t = build_teacher(cfg, tmp_path, sampler_cfg={"backend": "hf"}, seed=0)
    assert t.generate.sampler is None  # built on the first cache miss
    first = t.thoughts(reqs + reqs[:1])
    assert first[-1] == first[0] and t.requests_sent == 4 and t.generate.builds == 1
    assert t.generate.sampler is None  # closed after generating
    n = _n_params(checkpoint)
    assert t.num_params == n and t.prompt_tokens > 0 and 4 <= t.generated_tokens <= 4 * 9
    assert t.generation_flops == 2.0 * n * (t.prompt_tokens + t.generated_tokens) > 0
    rerun = build_teacher(cfg, tmp_path, sampler_cfg={"backend": "hf"}, seed=0)
    assert rerun.thoughts(reqs) == first[:4]
    assert rerun.requests_sent == 0 and rerun.generate.builds == 0  # the model is never loaded
    # the compute behind cached thoughts is still reported: it produced this output
    assert (rerun.prompt_tokens, rerun.generated_tokens, rerun.generation_flops) == (
        t.prompt_tokens, t.generated_tokens, t.generation_flops)
    other_seed = build_teacher(cfg, tmp_path, sampler_cfg={"backend": "hf"}, seed=1)
    other_seed.thoughts(reqs[:1])
    assert other_seed.requests_sent == 1  # another seed is another answer


def test_lm_teacher_config_errors(tmp_path):
    with pytest.raises(ValueError, match="needs teacher.model_path"):
        build_teacher({"kind": "lm"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="teacher.model_path=/nonexistent/m: no model checkpoint"):
        build_teacher({"kind": "lm", "model_path": "/nonexistent/m"}, tmp_path)


# ---------------------------------------------------------------- the real CLI

SMALL = ["data.num_train_docs=20", "data.num_eval_docs=10", "mstep.epochs=1", "mstep.batch_size=8",
         "mstep.warmup_steps=2", "eval.elbo_docs=2", "eval.max_thought_tokens=8", "eval.max_new_tokens=4"]


def _cli(*args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PLATFORM_APP", None)
    env.pop("PLATFORM_CONF_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "platform.run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"platform.run {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-6000:]}")
    return proc.stdout


def _teacher_logs(results: Path) -> list[Path]:
    return sorted(results.glob("runs/*/logs/teacher/*/*_log.err"), key=lambda p: p.stat().st_mtime)


@pytest.mark.slow
def test_cli_synthetic_thoughts_with_an_lm_teacher(tmp_path):
    results = tmp_path / "results"
    _cli("experiment=raw_baseline", "experiment.baseline=none", f"paths.results={results}", *SMALL)
    (model,) = results.glob("artifacts/mstep/*/model")  # the embedded world's trained checkpoint
    # every chunk gets a thought, as on a user corpus (the embedded default annotates answers only)
    run = ["experiment=synthetic_thoughts", "teacher=lm", f"teacher.model_path={model}", "teacher.max_tokens=16",
           "data.thought_chunks=all", f"paths.results={results}", *SMALL]
    _cli(*run)

    (teacher_dir,) = results.glob("artifacts/teacher/*")
    marker = teacher_dir / "_COMPLETE.json"
    summary = json.loads(marker.read_text())["summary"]
    thoughts = load_thoughts(teacher_dir / "thoughts.jsonl")
    zs = [z for per_doc in thoughts.values() for z in per_doc]
    assert len(thoughts) == 20 and len(zs) == summary["chunks"] > 0
    assert all(isinstance(z, str) and z.strip() for z in zs)  # a non-empty thought for every chunk
    n = _n_params(model)
    assert summary["teacher_params"] == n and summary["requests_sent"] == summary["chunks"]
    assert summary["chunks"] <= summary["tokens_out"] <= summary["chunks"] * 17
    flops = 2.0 * n * (summary["tokens_in"] + summary["tokens_out"])
    assert summary["flops"] == summary["generation_flops"] == flops > 0
    assert summary["thought_tokens"] > 0
    assert "lm teacher: loading" in _teacher_logs(results)[-1].read_text()

    # the teacher stage again (as after a crash before its marker): everything from its cache
    marker.unlink()
    _cli(*run)
    again = json.loads(marker.read_text())["summary"]
    assert again["requests_sent"] == 0
    assert {k: again[k] for k in ("tokens_in", "tokens_out", "flops", "thought_tokens")} == {
        k: summary[k] for k in ("tokens_in", "tokens_out", "flops", "thought_tokens")}
    assert load_thoughts(teacher_dir / "thoughts.jsonl") == thoughts
    logs = _teacher_logs(results)
    assert len(logs) == 2 and "lm teacher: loading" not in logs[-1].read_text()  # the sampler was never built
