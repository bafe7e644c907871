"""The hf sampler against direct, unbatched transformers computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.samplers import SampleOut, Sampler, build_sampler
from experiments.samplers.hf import HFSampler, SharedPrompts, choose_tokens, row_keys
from tests.experiments.tiny_lm import TEXTS, tiny_model, tiny_tokenizer, train_briefly

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sampler():
    return HFSampler(tiny_model(), tiny_tokenizer(), batch_size=64)


def enc(tok, text):
    return tok(text).input_ids


def direct_scores(model, prefix, cont):
    """Unbatched reference: one sequence, no padding, full logits."""
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0].float(), -1)
    return [logp[len(prefix) - 1 + t, c].item() for t, c in enumerate(cont)]


def test_is_a_sampler(sampler):
    assert isinstance(sampler, Sampler)


def test_score_equals_direct_computation(sampler):
    tok = sampler.tokenizer
    prefixes = [enc(tok, "Q: 3*7+5?"), enc(tok, "Q: 9"), enc(tok, "Q: 2*2+8? A: 12. 2*2=4.")]
    conts = [enc(tok, " A: 26.")[1:], enc(tok, "*9+2? A: 83.")[1:], [5, 6, 7]]
    got = sampler.score_tokens(prefixes, conts)
    sums = sampler.score(prefixes, conts)
    for p, c, g, s in zip(prefixes, conts, got, sums):
        ref = direct_scores(sampler.model, p, c)
        assert len(g) == len(c)
        np.testing.assert_allclose(g, ref, atol=1e-4)
        assert s == pytest.approx(sum(ref), abs=1e-4)


def test_score_batched_equals_unbatched_and_empty_continuation(sampler):
    tok = sampler.tokenizer
    prefixes = [enc(tok, "Q: 3*7+5?"), enc(tok, "Q: 9*9"), enc(tok, "Q: 4")]
    conts = [enc(tok, " A: 26.")[1:], [], enc(tok, "+1=5")[1:]]
    batched = sampler.score(prefixes, conts)
    single = [sampler.score([p], [c])[0] for p, c in zip(prefixes, conts)]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched[1] == 0.0
    tiny_batches = HFSampler(sampler.model, tok, batch_size=1)
    np.testing.assert_allclose(tiny_batches.score(prefixes, conts), single, atol=1e-5)


def test_scoring_batches_group_similar_lengths(sampler, monkeypatch):
    """A long and a short sequence are not padded into one forward (SCORE_MIN_FILL); similar ones are."""
    tok = sampler.tokenizer
    widths = []
    score_batch = HFSampler._score_batch

    def spy(self, seqs, prefix_lens):
        widths.append(sorted(len(x) for x in seqs))
        return score_batch(self, seqs, prefix_lens)

    monkeypatch.setattr(HFSampler, "_score_batch", spy)
    long_p = enc(tok, "Q: 2*3+4? A: 10. 2*3=6. 6+4=10. Answer: 10 Q: 9*9+1? A:")
    prefixes = [long_p, enc(tok, "Q: 8"), enc(tok, "Q: 7"), long_p]
    conts = [[5, 6, 7]] * 4
    got = sampler.score_tokens(prefixes, conts)
    assert len(widths) == 2 and all(max(w) * 0.75 <= min(w) for w in widths)
    for p, c, g in zip(prefixes, conts, got):
        np.testing.assert_allclose(g, direct_scores(sampler.model, p, c), atol=1e-4)


def test_sampled_logprobs_equal_rescoring(sampler):
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 8"), enc(tok, "Q: 2*3+4? A: 10. 2*3=6.")]
    outs = sampler.sample(prompts, n=3, max_tokens=12, seed=5)
    assert [len(o) for o in outs] == [3, 3, 3]
    for p, samples in zip(prompts, outs):
        rescored = sampler.score_tokens([p] * 3, [s.token_ids for s in samples])
        for s, r in zip(samples, rescored):
            assert len(s.token_ids) == len(s.logprobs) == 12 and not s.finished
            np.testing.assert_allclose(s.logprobs, r, atol=1e-4)
            assert s.text == tok.decode(s.token_ids)
    # the n samples of one prompt are different draws
    assert len({tuple(s.token_ids) for s in outs[0]}) > 1


def test_sampling_is_deterministic_and_batch_invariant(sampler):
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 8"), enc(tok, "Q: 2*3+4? A: 10.")]
    a = sampler.sample(prompts, n=2, max_tokens=10, seed=1)
    b = sampler.sample(prompts, n=2, max_tokens=10, seed=1)
    assert [[s.token_ids for s in o] for o in a] == [[s.token_ids for s in o] for o in b]
    single = [sampler.sample([p], n=2, max_tokens=10, seed=1)[0] for p in prompts]
    small = HFSampler(sampler.model, tok, batch_size=2).sample(prompts, n=2, max_tokens=10, seed=1)
    for x, y, z in zip(a, single, small):
        assert [s.token_ids for s in x] == [s.token_ids for s in y] == [s.token_ids for s in z]
        np.testing.assert_allclose([s.logprobs for s in x], [s.logprobs for s in y], atol=1e-4)
    c = sampler.sample(prompts, n=2, max_tokens=10, seed=2)
    assert [[s.token_ids for s in o] for o in a] != [[s.token_ids for s in o] for o in c]


def test_stop_token_ends_sequence_and_is_excluded(sampler):
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 6*6")]
    free = sampler.sample(prompts, n=4, max_tokens=16, seed=3)
    # pick as stop token the first token of sample (0, 0) that did not occur before it
    ids = free[0][0].token_ids
    cut = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    stop = ids[cut]
    stopped = sampler.sample(prompts, n=4, max_tokens=16, stop_token_id=stop, seed=3)
    for f_row, s_row in zip(free, stopped):
        for f, s in zip(f_row, s_row):
            if stop in f.token_ids:  # same noise: the same path up to the stop token, which is dropped
                k = f.token_ids.index(stop)
                assert s.finished and s.token_ids == f.token_ids[:k]
                np.testing.assert_allclose(s.logprobs, f.logprobs[:k], atol=1e-5)
            else:
                assert not s.finished and s.token_ids == f.token_ids
    assert stopped[0][0].token_ids == ids[:cut] and stopped[0][0].finished


def test_logprobs_stay_exact_as_rows_finish_and_prompts_leave(monkeypatch):
    """Rows stopping at different steps shrink the decode batch; once half the prompts have no row
    left, their shared cache is compacted. Every sample's log q must still equal a direct rescoring."""
    tok = tiny_tokenizer()
    model = train_briefly(tiny_model(), tok, TEXTS, steps=40, lr=1e-2)  # samples end with "." at varied steps
    sampler = HFSampler(model, tok)
    prompts_left = []
    select = SharedPrompts.select

    def spy(self, rows):
        select(self, rows)
        prompts_left.append(self.bias.shape[0])

    monkeypatch.setattr(SharedPrompts, "select", spy)
    prompts = [enc(tok, t) for t in ("Q: 3*7+5? A:", "Q: 8", "Q: 2*3+4? A: 10.", "Q: 9*9", "Q: 4+4", "Q: 7*2+3? A: 17.")]
    outs = sampler.sample(prompts, n=3, max_tokens=14, stop_token_id=enc(tok, ".")[-1], seed=11)
    lengths = [len(s.token_ids) for row in outs for s in row]
    assert sum(s.finished for row in outs for s in row) >= 9 and len(set(lengths)) >= 4
    assert prompts_left and min(prompts_left) < len(prompts)  # the compaction path ran
    for p, row in zip(prompts, outs):
        for s in row:
            if s.token_ids:
                np.testing.assert_allclose(s.logprobs, direct_scores(model, p, s.token_ids), atol=1e-4)


def test_fused_llama_decode_equals_the_transformers_path(sampler):
    """The fused decode step (plain tensor ops) and transformers' forward with the registered
    shared-prompt attention draw the same tokens with the same log q, with and without stops."""
    tok = sampler.tokenizer
    assert sampler.decode_step is not None  # a Llama model takes the fused path by default
    reference = HFSampler(sampler.model, tok, fused_decode=False)
    assert reference.decode_step is None
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 8"), enc(tok, "Q: 2*3+4? A: 10. 2*3=6.")]
    stop = enc(tok, "Q: 2*3+4?")[3]
    for stop_id in (None, stop):
        a = sampler.sample(prompts, n=4, max_tokens=12, stop_token_id=stop_id, seed=7)
        b = reference.sample(prompts, n=4, max_tokens=12, stop_token_id=stop_id, seed=7)
        for x, y in zip(a, b):
            assert [s.token_ids for s in x] == [s.token_ids for s in y]
            for s, t in zip(x, y):
                np.testing.assert_allclose(s.logprobs, t.logprobs, atol=1e-5)


def test_models_the_fused_step_cannot_reproduce_take_the_transformers_path():
    """A Qwen2 model (q/k/v biases) decodes through transformers with the shared-prompt attention;
    its log q still equals a direct forward."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from experiments.samplers.llama_decode import unsupported_reason

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, vocab_size=len(tok))).eval()
    assert "qwen2" in unsupported_reason(qwen)
    sampler = HFSampler(qwen, tok)
    assert sampler.decode_step is None
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 8")]
    for p, row in zip(prompts, sampler.sample(prompts, n=3, max_tokens=6, seed=1)):
        for s in row:
            np.testing.assert_allclose(s.logprobs, direct_scores(qwen, p, s.token_ids), atol=1e-4)
    biased = tiny_model()
    biased.config.attention_bias = True
    assert unsupported_reason(biased) == "attention or MLP biases"


def test_greedy_matches_transformers_generate(sampler):
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 8")]
    outs = sampler.sample(prompts, n=1, max_tokens=8, temperature=0.0)
    for p, (o,) in zip(prompts, outs):
        ref = sampler.model.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
            max_new_tokens=8, min_new_tokens=8, pad_token_id=tok.pad_token_id,
        )[0, len(p):].tolist()
        assert o.token_ids == ref


def test_sample_j_is_the_same_drawn_with_others_or_alone(sampler):
    """Indices first..first+n-1: the samples of one n=8 draw, whatever else is drawn beside them
    (what the E-step's sample store tops K up with). Ids, text and finished exactly; log q to float32
    rounding, since the decode batch holds other rows."""
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*4+5? A:"), enc(tok, "Q: 2*2+2? A: 6."), enc(tok, "Q: 9")]
    stop = enc(tok, ".")[-1]
    full = sampler.sample(prompts, n=8, max_tokens=12, stop_token_id=stop, seed=3)
    assert any(s.finished for row in full for s in row) and not all(s.finished for row in full for s in row)
    head = sampler.sample(prompts, n=4, max_tokens=12, stop_token_id=stop, seed=3)
    tail = sampler.sample(prompts, n=4, max_tokens=12, stop_token_id=stop, seed=3, first=4)
    one = sampler.sample(prompts[1:2], n=1, max_tokens=12, stop_token_id=stop, seed=3, first=6)
    for row, parts in zip(full, [h + t for h, t in zip(head, tail)]):
        assert [(s.token_ids, s.text, s.finished) for s in row] == [(s.token_ids, s.text, s.finished) for s in parts]
        np.testing.assert_allclose([s.logprob_sum for s in row], [s.logprob_sum for s in parts], rtol=1e-6)
    assert one[0][0].token_ids == full[1][6].token_ids
    assert row_keys(3, prompts[0], 4, first=4) == row_keys(3, prompts[0], 8)[4:]
    with pytest.raises(ValueError, match="first"):
        sampler.sample(prompts, n=1, max_tokens=2, first=-1)


def test_gumbel_max_draws_follow_the_softmax():
    probs = torch.tensor([0.05, 0.15, 0.3, 0.5])
    n = 20_000
    logits = torch.log(probs).repeat(n, 1)
    keys = torch.tensor(row_keys(0, [1, 2, 3], n), dtype=torch.int64)
    for temperature, target in [(1.0, probs), (0.5, probs**2 / (probs**2).sum())]:
        counts = torch.bincount(choose_tokens(logits, temperature, keys, step=4), minlength=4).double()
        expected = n * target.double()
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 16.266, (temperature, counts, chi2)  # chi-square, 3 dof, alpha 0.001


def test_bad_arguments_are_clear(sampler):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.sample([[0], []], n=1, max_tokens=2)
    with pytest.raises(ValueError, match="n \\(samples per prompt\\)"):
        sampler.sample([[0]], n=0, max_tokens=2)
    with pytest.raises(ValueError, match="2 prefixes but 1"):
        sampler.score([[0], [0]], [[1]])


def test_build_sampler_from_a_checkpoint(tmp_path, sampler):
    sampler.model.save_pretrained(tmp_path)
    sampler.tokenizer.save_pretrained(tmp_path)
    loaded = build_sampler({"backend": "hf", "batch_size": 8, "dtype": "float32"}, tmp_path)
    assert isinstance(loaded, HFSampler) and loaded.batch_size == 8
    p, c = [[0, 55, 32]], [[227, 25]]
    assert loaded.score(p, c)[0] == pytest.approx(sampler.score(p, c)[0], abs=1e-5)
    with pytest.raises(ValueError, match="sampler.backend='tpu'"):
        build_sampler({"backend": "tpu"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_sampler({"backend": "hf"}, tmp_path / "nope")
    assert isinstance(SampleOut([1], [-0.5], "x", True).logprob_sum, float)


def test_log_q_of_a_finished_sample_includes_its_stop_token(sampler):
    """log q of a finished thought is the probability of the whole sampled sequence, EoL included:
    checked against a direct transformers computation of token_ids + [stop]."""
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 6*6")]
    free = sampler.sample(prompts, n=4, max_tokens=16, seed=3)
    ids = free[0][0].token_ids
    stop = ids[next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])]
    finished = 0
    for p, row in zip(prompts, sampler.sample(prompts, n=4, max_tokens=16, stop_token_id=stop, seed=3)):
        for s in row:
            if s.finished:
                finished += 1
                ref = direct_scores(sampler.model, p, s.token_ids + [stop])
                assert s.stop_logprob == pytest.approx(ref[-1], abs=1e-4)
                assert s.logprob_sum == pytest.approx(sum(ref), abs=1e-4)
            else:
                assert s.logprob_sum == pytest.approx(sum(direct_scores(sampler.model, p, s.token_ids)), abs=1e-4)
    assert finished >= 1


def test_banned_tokens_are_never_sampled_and_log_q_is_the_masked_density(sampler):
    """Control tokens cannot appear in a thought: without the mask this untrained-ish model writes
    them; with it, none appear and each logprob is that of the renormalised, masked softmax."""
    tok = sampler.tokenizer
    prompts = [enc(tok, "Q: 3*7+5? A:"), enc(tok, "Q: 6*6"), enc(tok, "Q: 9")]
    free = sampler.sample(prompts, n=8, max_tokens=24, seed=5)
    seen = [t for row in free for s in row for t in s.token_ids]
    banned = sorted(set(seen), key=seen.count, reverse=True)[:4]  # the model's favourite tokens
    masked = sampler.sample(prompts, n=8, max_tokens=24, seed=5, banned_token_ids=banned)
    assert not {t for row in masked for s in row for t in s.token_ids} & set(banned)
    for p, row in zip(prompts, masked):
        for s in row:
            seq = torch.tensor([p + s.token_ids])
            with torch.no_grad():
                logits = sampler.model(seq).logits[0].float()
            logits[:, banned] = float("-inf")
            logp = F.log_softmax(logits, -1)
            ref = [logp[len(p) - 1 + t, c].item() for t, c in enumerate(s.token_ids)]
            np.testing.assert_allclose(s.logprobs, ref, atol=1e-4)
    with pytest.raises(ValueError, match="also banned"):
        sampler.sample(prompts, n=1, max_tokens=4, stop_token_id=banned[0], banned_token_ids=banned)
