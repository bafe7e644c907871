"""Evaluation: greedy answer pipeline, held-out NLL against a direct computation, the stage, the harness."""

import json
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import experiments.evaluate as evaluate
import experiments.harness as harness
from experiments.corpus import Problem, generate_corpus
from experiments.docstore import save_docs, save_problems
from experiments.formats import answer_prefix, eval_prompt
from experiments.samplers import SampleOut
from experiments.samplers.hf import HFSampler
from experiments.tokens import EOL
from experiments.inputs import Chunking, EvalInput
from platform.stage import StageContext
from tests.experiments.tiny_lm import sampler_spec, tiny_model, tiny_tokenizer, train_briefly

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sampler():
    return HFSampler(tiny_model(seed=2), tiny_tokenizer(), batch_size=16)


class Scripted:
    """Greedy outputs fixed by the test; records every sample call."""

    def __init__(self, tok, thoughts, answers):
        self.tokenizer, self.thoughts, self.answers, self.calls = tok, thoughts, answers, []

    def _out(self, text, finished):
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return SampleOut(ids, [-0.1] * len(ids), self.tokenizer.decode(ids), finished)

    def sample(self, prompts_ids, n, max_tokens, temperature=1.0, stop_token_id=None, seed=0, banned_token_ids=()):
        self.calls.append({"prompts": prompts_ids, "n": n, "max_tokens": max_tokens, "t": temperature, "stop": stop_token_id})
        texts = self.thoughts if len(self.calls) == 1 and self.thoughts else self.answers
        return [[self._out(t, True)] for t in texts]


PROBLEMS = [Problem("What is 3*7+5?", "26", "3*7=21. 21+5=26.", "arith"),
            Problem("What is 2*4+1?", "9", "2*4=8. 8+1=9.", "arith"),
            Problem("What is 9*9+9?", "90", "9*9=81. 81+9=90.", "arith")]


def test_latent_pipeline_prompts_and_grading():
    tok = tiny_tokenizer()
    fake = Scripted(tok, thoughts=["3*7=21. 21+5=26.", "2*4=8.", "junk"], answers=[" 26.\nWhat is 1+1?", " 10.", " x"])
    rows, counts = evaluate.greedy_answers(fake, PROBLEMS, latent=True, max_thought_tokens=20, max_new_tokens=8)
    eol = tok.convert_tokens_to_ids(EOL)
    thought_call, answer_call = fake.calls
    assert thought_call["t"] == 0.0 and thought_call["stop"] == eol and thought_call["max_tokens"] == 20
    assert answer_call["stop"] == tok.eos_token_id and answer_call["max_tokens"] == 8
    # one batched call each: every problem in the same call
    assert len(thought_call["prompts"]) == len(answer_call["prompts"]) == 3
    p0 = tok(eval_prompt(PROBLEMS[0].question, True))["input_ids"]
    assert thought_call["prompts"][0] == p0
    z0 = tok.encode("3*7=21. 21+5=26.", add_special_tokens=False)
    assert answer_call["prompts"][0] == p0 + z0 + [eol] + tok.encode(answer_prefix(), add_special_tokens=False)
    assert [r["pred"] for r in rows] == ["26", "10", None]
    assert [r["correct"] for r in rows] == [True, False, False]
    assert rows[0]["answer"] == " 26." and rows[0]["thought"] == "3*7=21. 21+5=26."
    assert counts["tokens_out"] == sum(len(tok.encode(t, add_special_tokens=False)) + 1 for t in
                                       ["3*7=21. 21+5=26.", "2*4=8.", "junk", " 26.\nWhat is 1+1?", " 10.", " x"])


def test_raw_pipeline_has_no_thought_call():
    tok = tiny_tokenizer()
    fake = Scripted(tok, thoughts=None, answers=[" 26.", " 9", " 90."])
    rows, _ = evaluate.greedy_answers(fake, PROBLEMS, latent=False, max_thought_tokens=20, max_new_tokens=8)
    assert len(fake.calls) == 1
    assert fake.calls[0]["prompts"][1] == tok(eval_prompt(PROBLEMS[1].question, False))["input_ids"] + tok.encode(
        answer_prefix(), add_special_tokens=False)
    assert [r["correct"] for r in rows] == [True, True, True] and rows[0]["thought"] is None


def test_batched_greedy_equals_one_problem_at_a_time(sampler):
    batched, _ = evaluate.greedy_answers(sampler, PROBLEMS, True, 6, 5)
    single = [evaluate.greedy_answers(sampler, [p], True, 6, 5)[0][0] for p in PROBLEMS]
    assert batched == single


def test_heldout_nll_equals_direct_computation(sampler):
    docs = generate_corpus(num_train_docs=2, num_eval_docs=0, families=["arith"], difficulty=1, seed=4)[0]
    nll, n = evaluate.heldout_nll(sampler, docs)
    tok = sampler.tokenizer
    total, count = 0.0, 0
    for d in docs:
        ids = [tok.bos_token_id] + tok.encode(d.text, add_special_tokens=False) + [tok.eos_token_id]
        with torch.no_grad():
            logp = F.log_softmax(sampler.model(torch.tensor([ids])).logits[0].float(), -1)
        total += -sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
        count += len(ids) - 1
    assert n == count and nll == pytest.approx(total / count, rel=1e-5)


def stage(tmp_path, sampler, latent, harness=()):
    train, problems = generate_corpus(num_train_docs=3, num_eval_docs=4, families=["arith"], difficulty=1, seed=9)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    save_problems(data / "eval_problems.jsonl", problems)
    save_docs(data / "eval_docs.jsonl", train)
    model = tmp_path / "ckpt"
    sampler.model.save_pretrained(model / "model")
    sampler.tokenizer.save_pretrained(model / "model")
    out = tmp_path / f"eval_{latent}"
    out.mkdir()
    params = EvalInput(num_problems=3, max_new_tokens=4, max_thought_tokens=5, elbo_docs=2, harness_tasks=tuple(harness),
                       sampler=sampler_spec(), chunking=Chunking(1.0, 3), thought_chunks="all", latent=latent,
                       empty_question_thought=False, iteration=0, seed=1)
    return StageContext("eval", "k", out, params, {"data": data, "model": model}, 0, 0, 1)


@pytest.mark.parametrize("latent", [True, False])
def test_run_eval_stage(tmp_path, sampler, latent):
    ctx = stage(tmp_path, sampler, latent)
    summary = evaluate.run_eval(ctx)
    preds = [json.loads(line) for line in (ctx.out_dir / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and set(preds[0]) >= {"question", "gold", "thought", "answer", "pred", "correct"}
    metrics = {r["name"]: r["value"] for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines())}
    assert metrics["accuracy"] == pytest.approx(np.mean([p["correct"] for p in preds]))
    assert metrics["nll"] > 0 and np.isfinite(metrics["chunk_logp_mean"])
    if latent:
        assert {"elbo_1", "elbo_2", "elbo_4", "thought_tokens_mean"} <= set(metrics)
        assert metrics["thought_tokens_mean"] <= 5
    else:
        assert "elbo_1" not in metrics and all(p["thought"] is None for p in preds)
    n_params = sum(p.numel() for p in sampler.model.parameters())
    assert summary["flops"] == pytest.approx(2 * n_params * (summary["tokens_in"] + summary["tokens_out"]))


def test_harness_without_lm_eval_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(RuntimeError, match="lm-evaluation-harness.*not installed"):
        harness.run_harness(tmp_path, ["gsm8k"], tmp_path)


def test_harness_calls_simple_evaluate(tmp_path, monkeypatch):
    seen = {}

    def simple_evaluate(**kw):
        seen.update(kw)
        return {"results": {"gsm8k": {"exact_match,strict-match": 0.25, "alias": "gsm8k"}}}

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    res = harness.run_harness(tmp_path / "m", ["gsm8k"], tmp_path / "out", backend="vllm", num_fewshot=8)
    assert seen["model"] == "vllm" and seen["tasks"] == ["gsm8k"] and seen["num_fewshot"] == 8
    assert seen["model_args"].startswith(f"pretrained={tmp_path / 'm'}")
    assert res["gsm8k"]["exact_match,strict-match"] == 0.25
    assert json.loads((tmp_path / "out" / "harness_results.json").read_text()) == res
    with pytest.raises(ValueError, match="'tpu'"):
        harness.run_harness(tmp_path, ["gsm8k"], tmp_path, backend="tpu")


def test_lm_eval_on_the_local_heldout_task_agrees_with_the_eval_stage(tmp_path):
    """The real lm-evaluation-harness, offline, on the held-out problems written as a local task:
    for a raw model its exact match equals the eval stage's own greedy accuracy, problem by problem."""
    _, problems = generate_corpus(num_train_docs=1, num_eval_docs=24, families=["arith"], difficulty=1, seed=4)
    tok = tiny_tokenizer()
    texts = [f"{eval_prompt(p.question, False)}{answer_prefix()} {p.answer}." for p in problems]
    model = train_briefly(tiny_model(seed=1, hidden=64), tok, texts, steps=60, lr=1e-2)  # gets about half right
    sampler = HFSampler(model, tok, batch_size=32)
    rows, _ = evaluate.greedy_answers(sampler, problems, latent=False, max_thought_tokens=0, max_new_tokens=6)
    accuracy = float(np.mean([r["correct"] for r in rows]))
    assert 0.3 < accuracy < 0.9, accuracy  # right and wrong answers both: a comparison that can fail

    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    task = harness.write_local_task(problems, False, tmp_path, max_new_tokens=6, max_thought_tokens=0)
    res = harness.run_harness(tmp_path / "model", [harness.LOCAL_TASK], tmp_path / "out", backend="hf",
                              include_path=task)
    assert res[harness.LOCAL_TASK]["exact_match,answer"] == pytest.approx(accuracy)
    assert (tmp_path / "out" / "harness_results.json").exists()


def test_eval_stage_records_harness_metrics(tmp_path, sampler):
    ctx = stage(tmp_path, sampler, latent=True, harness=[harness.LOCAL_TASK])
    evaluate.run_eval(ctx)
    metrics = {r["name"]: r["value"] for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines())}
    value = metrics[f"harness/{harness.LOCAL_TASK}/exact_match,answer"]
    assert 0.0 <= value <= 1.0
    prompts = [json.loads(x)["prompt"] for x in (ctx.out_dir / "harness_task" / "heldout.jsonl").read_text().splitlines()]
    assert len(prompts) == 3 and all(p.endswith(eval_prompt("", True).strip()) for p in prompts)
