"""The E-step: exact scoring structure, resampling, determinism, shards, merge and resume."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import experiments.estep as estep
from experiments.chunking import chunk_texts
from experiments.corpus import generate_corpus
from experiments.docstore import load_thoughts, save_docs
from experiments.formats import joint_parts, posterior_prompt, split_separator
from experiments.importance import elbo, resample
from experiments.samplers import SampleOut
from experiments.samplers.hf import HFSampler
from experiments.seeding import stable_seed
from experiments.tokens import EOL, PRIOR, SOL
from experiments.inputs import Chunking, EStepInput
from platform.stage import StageContext, shard_dir
from tests.experiments.tiny_lm import sampler_spec, tiny_model, tiny_tokenizer

torch.set_num_threads(1)
OPTS = dict(num_samples=3, max_thought_tokens=6, context_chunks=2, poisson_mean=1.0, max_sentences=3, seed=7, iteration=1)


@pytest.fixture(scope="module")
def docs():
    train, _ = generate_corpus(num_train_docs=5, num_eval_docs=2, families=["arith", "word"], difficulty=1, seed=3)
    return train


@pytest.fixture(scope="module")
def sampler():
    return HFSampler(tiny_model(seed=1), tiny_tokenizer(), batch_size=16)


class SpySampler:
    """Wraps a sampler and records what the E-step asked of it."""

    def __init__(self, inner):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.sample_calls, self.score_calls = [], []

    def sample(self, prompts_ids, n, max_tokens, **kw):
        out = self.inner.sample(prompts_ids, n, max_tokens, **kw)
        self.sample_calls.append((prompts_ids, out, kw))
        return out

    def score(self, prefix_ids, cont_ids):
        self.score_calls.append((prefix_ids, cont_ids))
        return self.inner.score(prefix_ids, cont_ids)


def test_scores_are_the_joint_string_after_the_context(docs, sampler):
    spy = SpySampler(sampler)
    rows, thoughts, counts = estep.infer_thoughts(spy, docs[:2], **OPTS)
    tok = sampler.tokenizer
    assert len(spy.sample_calls) == 1 and len(spy.score_calls) == 1  # batched across chunks and docs
    prompts, samples, kw = spy.sample_calls[0]
    assert kw["stop_token_id"] == tok.convert_tokens_to_ids(EOL) and kw["temperature"] == 1.0
    frame = pd.DataFrame(rows)
    c = 0
    for doc in docs[:2]:
        chunks = chunk_texts(doc, 1.0, 3)
        for i, chunk in enumerate(chunks):
            assert prompts[c] == tok(posterior_prompt(chunks[:i], chunk, 2))["input_ids"]
            context, _ = joint_parts(chunks[:i], "", chunk, 2)
            body, _ = split_separator(chunk)
            for k, s in enumerate(samples[c]):
                # independent reference: one unbatched forward over the whole scoring sequence
                ids = tok(context)["input_ids"]
                cont = tok.encode(SOL + PRIOR, add_special_tokens=False) + s.token_ids + [tok.convert_tokens_to_ids(EOL)]
                cont += tok.encode(body, add_special_tokens=False)
                with torch.no_grad():
                    logp = F.log_softmax(sampler.model(torch.tensor([ids + cont])).logits[0].float(), -1)
                ref = sum(logp[len(ids) - 1 + t, x].item() for t, x in enumerate(cont))
                row = frame[(frame.doc_id == doc.doc_id) & (frame.chunk_id == i) & (frame.sample_idx == k)].iloc[0]
                assert row.log_p_joint == pytest.approx(ref, abs=1e-3)
                assert row.log_q == pytest.approx(sum(s.logprobs), abs=1e-9)
                assert row.log_w == pytest.approx(row.log_p_joint - row.log_q, abs=1e-9)
                assert row.thought == s.text and row.thought_tokens == len(s.token_ids)
            c += 1
    assert counts["num_chunks"] == c == frame.groupby(["doc_id", "chunk_id"]).ngroups
    assert counts["tokens_out"] == sum(len(s.token_ids) + s.finished for o in samples for s in o)


def test_selection_is_seeded_importance_resampling(docs, sampler):
    rows, thoughts, _ = estep.infer_thoughts(sampler, docs[:3], **OPTS)
    frame = pd.DataFrame(rows)
    for (doc_id, chunk_id), g in frame.groupby(["doc_id", "chunk_id"]):
        g = g.sort_values("sample_idx")
        assert g.selected.sum() == 1
        rng = np.random.default_rng(stable_seed(OPTS["seed"], OPTS["iteration"], doc_id, chunk_id))
        pick = resample(g.log_w.to_numpy(), rng)
        assert g.selected.to_numpy()[pick]
        assert thoughts[doc_id][chunk_id] == g.thought.to_numpy()[pick]


def test_deterministic_and_independent_of_grouping(docs, sampler):
    together, t1, _ = estep.infer_thoughts(sampler, docs[:3], **OPTS)
    again, t2, _ = estep.infer_thoughts(sampler, docs[:3], **OPTS)
    alone = [r for d in docs[:3] for r in estep.infer_thoughts(sampler, [d], **OPTS)[0]]
    key = ["doc_id", "chunk_id", "sample_idx"]
    a = pd.DataFrame(together).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, pd.DataFrame(again).sort_values(key).reset_index(drop=True))
    b = pd.DataFrame(alone).sort_values(key).reset_index(drop=True)
    assert a.thought.tolist() == b.thought.tolist() and a.selected.tolist() == b.selected.tolist()
    np.testing.assert_allclose(a.log_w, b.log_w, atol=1e-3)
    other, _, _ = estep.infer_thoughts(sampler, docs[:3], **{**OPTS, "iteration": 2})
    assert pd.DataFrame(other).thought.tolist() != a.thought.tolist()


def test_a_fake_sampler_gives_hand_computed_weights():
    tok = tiny_tokenizer()

    class Fake:
        tokenizer = tok

        def sample(self, prompts_ids, n, max_tokens, **kw):
            return [[SampleOut([40 + k], [-1.0 - k], tok.decode([40 + k]), True) for k in range(n)] for _ in prompts_ids]

        def score(self, prefix_ids, cont_ids):
            return [-10.0 + (c[2] - 40) for c in cont_ids]  # c[2] is Z's first id, after SoL and PRIOR

    from experiments.corpus import text_document

    doc = text_document("d0", "One two. Three four.")
    rows, thoughts, _ = estep.infer_thoughts(Fake(), [doc], **{**OPTS, "max_sentences": 20, "poisson_mean": 10.0})
    frame = pd.DataFrame(rows)
    # log w_k = (-10 + k) - (-1 - k) = -9 + 2k
    np.testing.assert_allclose(frame.log_w, [-9.0, -7.0, -5.0])
    assert estep.chunk_metrics(frame)["elbo_2"] == pytest.approx(elbo([-9.0, -7.0], 2))
    assert set(frame.chunk_text) == {"One two. Three four."}  # the chunk X, stored with its thoughts


def test_marker_in_thought_share_counts_format_tokens_written_inside_thoughts():
    from experiments.tokens import POSTERIOR, SOL

    frame = pd.DataFrame({
        "doc_id": "d", "chunk_id": [0, 0, 1, 1], "sample_idx": [0, 1, 0, 1], "log_w": [-1.0, -2.0, -1.0, -3.0],
        "thought_tokens": 5, "selected": [True, False, False, True], "finished": True,
        "thought": ["3*7=21.", f"3*7{SOL}=21.", f"ok {POSTERIOR} 4", "fine"],
    })
    assert estep.chunk_metrics(frame)["marker_in_thought_frac"] == 0.5


def make_stage_dirs(tmp_path, docs, sampler):
    data = tmp_path / "data"
    data.mkdir()
    save_docs(data / "train_docs.jsonl", docs)
    (data / "em_docs.json").write_text(json.dumps([d.doc_id for d in docs]))
    model = tmp_path / "m0"
    sampler.model.save_pretrained(model / "model")
    sampler.tokenizer.save_pretrained(model / "model")
    return data, model


def stage_config(k=2, batch_size=16, group_docs=2, sample_store=True, max_thought_tokens=5):
    return EStepInput(num_samples=k, max_thought_tokens=max_thought_tokens, temperature=1.0, context_chunks=2,
                      chunking=Chunking(1.0, 3), thought_chunks="all", sampler=sampler_spec(batch_size=batch_size),
                      iteration=1, seed=5, group_docs=group_docs, sample_store=sample_store)


def run_all(tmp_path, data, model, name, num_shards=2, k=2, **params):
    stage_dir = tmp_path / name
    config = stage_config(k, **params)
    for i in range(num_shards):
        ctx = StageContext("estep", "key", shard_dir(stage_dir, i, num_shards), config,
                           {"data": data, "model": model}, 1, i, num_shards)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        estep.run_shard(ctx)
    ctx = StageContext("estep", "key", stage_dir, config, {"data": data, "model": model}, 1, 0, num_shards)
    return stage_dir, estep.merge(ctx)


def test_shards_and_merge(tmp_path, docs, sampler):
    data, model = make_stage_dirs(tmp_path, docs, sampler)
    stage_dir, summary = run_all(tmp_path, data, model, "stage")
    samples = pd.read_parquet(stage_dir / "estep_samples.parquet")
    assert list(samples.columns) == estep.SAMPLE_COLUMNS
    assert set(samples.doc_id) == {d.doc_id for d in docs}
    thoughts = load_thoughts(stage_dir / "thoughts.jsonl")
    assert sorted(thoughts) == sorted(d.doc_id for d in docs)
    for d in docs:
        assert len(thoughts[d.doc_id]) == len(chunk_texts(d, 1.0, 3))
    metrics = {r["name"]: r["value"] for r in map(json.loads, (stage_dir / "metrics.jsonl").read_text().splitlines())}
    assert {"elbo_1", "elbo_2", "ess", "thought_tokens_mean", "selected_idx_mean", "log_w_mean"} <= set(metrics)
    assert "elbo_4" not in metrics  # K = 2
    first = samples[samples.sample_idx == 0].log_w.mean()
    assert metrics["elbo_1"] == pytest.approx(first)
    assert metrics["elbo_2"] >= metrics["elbo_1"] - 1.0  # ELBO_2 averages log-mean-exp, close to / above ELBO_1
    assert 1.0 <= metrics["ess"] <= 2.0
    assert summary["num_chunks"] == samples.groupby(["doc_id", "chunk_id"]).ngroups
    assert summary["tokens_out"] >= samples.thought_tokens.sum()
    n_params = sum(p.numel() for p in sampler.model.parameters())
    assert summary["flops"] == pytest.approx(2 * n_params * (summary["tokens_in"] + summary["tokens_out"]))


COUNTS = ("tokens_in", "tokens_out", "num_chunks", "num_docs")
FLOATS = ["log_p_joint", "log_q", "log_w"]


def test_result_does_not_depend_on_shard_count(tmp_path, docs, sampler):
    """1 or 4 shards: the merged output is the same byte for byte (samples are keyed by chunk and
    sample index from seeded draws, and every sampler call sees the same documents)."""
    data, model = make_stage_dirs(tmp_path, docs, sampler)
    ref_dir, ref_summary = run_all(tmp_path, data, model, "one", num_shards=1)
    ref = pd.read_parquet(ref_dir / "estep_samples.parquet")
    assert len(ref) > 20 and ref.selected.sum() == ref.groupby(["doc_id", "chunk_id"]).ngroups
    out, summary = run_all(tmp_path, data, model, "four", num_shards=4)
    pd.testing.assert_frame_equal(ref, pd.read_parquet(out / "estep_samples.parquet"), check_exact=True)
    for name in ("thoughts.jsonl", "metrics.jsonl"):
        assert (out / name).read_bytes() == (ref_dir / name).read_bytes()
    assert {k: summary[k] for k in COUNTS} == {k: ref_summary[k] for k in COUNTS}


@pytest.mark.parametrize("params", [{"batch_size": 3}, {"group_docs": 1}])
def test_result_does_not_depend_on_batching(tmp_path, docs, sampler, params):
    """Another sampler batch size or cache-group size: the same samples row for row (ids, text,
    selection, counts); log p and log q agree to float32 rounding, since a forward pass over another
    batch shape sums in another order (no batch-invariant kernels on CPU)."""
    data, model = make_stage_dirs(tmp_path, docs, sampler)
    ref_dir, ref_summary = run_all(tmp_path, data, model, "ref", num_shards=2)
    out, summary = run_all(tmp_path, data, model, "other", num_shards=2, **params)
    ref, got = pd.read_parquet(ref_dir / "estep_samples.parquet"), pd.read_parquet(out / "estep_samples.parquet")
    pd.testing.assert_frame_equal(ref.drop(columns=FLOATS), got.drop(columns=FLOATS), check_exact=True)
    np.testing.assert_allclose(got[FLOATS].to_numpy(), ref[FLOATS].to_numpy(), rtol=1e-6, atol=1e-5)
    assert (out / "thoughts.jsonl").read_bytes() == (ref_dir / "thoughts.jsonl").read_bytes()
    assert {k: summary[k] for k in COUNTS} == {k: ref_summary[k] for k in COUNTS}


def test_killed_shard_resumes_from_its_cache(tmp_path, docs, sampler, monkeypatch):
    data, model = make_stage_dirs(tmp_path, docs, sampler)
    clean_dir, _ = run_all(tmp_path, data, model, "clean", num_shards=1)

    real = estep.infer_thoughts
    calls, killed = [], []

    def dies_on_second_group(*a, **k):
        calls.append([d.doc_id for d in a[1]])
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise RuntimeError("preempted")
        return real(*a, **k)

    monkeypatch.setattr(estep, "infer_thoughts", dies_on_second_group)
    with pytest.raises(RuntimeError, match="preempted"):
        run_all(tmp_path, data, model, "killed", num_shards=1)
    assert len(list(shard_dir(tmp_path / "killed", 0, 1).joinpath("cache").glob("*.json"))) == 1
    calls.clear()
    _, summary = run_all(tmp_path, data, model, "killed", num_shards=1)
    groups = (len(docs) + 1) // 2
    assert len(calls) == groups - 1  # the finished first group was not recomputed
    assert docs[0].doc_id not in [d for c in calls for d in c]
    pd.testing.assert_frame_equal(
        pd.read_parquet(clean_dir / "estep_samples.parquet"), pd.read_parquet(tmp_path / "killed" / "estep_samples.parquet")
    )
    assert (clean_dir / "thoughts.jsonl").read_text() == (tmp_path / "killed" / "thoughts.jsonl").read_text()


def test_missing_doc_is_a_clear_error(tmp_path, docs, sampler):
    data, model = make_stage_dirs(tmp_path, docs[:1], sampler)
    (data / "em_docs.json").write_text(json.dumps(["nope-1"]))
    ctx = StageContext("estep", "k", tmp_path / "s", stage_config(), {"data": data, "model": model}, 1, 0, 1)
    with pytest.raises(ValueError, match="nope-1"):
        estep.run_shard(ctx)


def test_thought_correctness_and_chunk_types_by_hand():
    """Two annotated chunks with K=2 and one question chunk: selected 1/2, random 2/4, best of K 2/2."""
    rows = [  # (doc, chunk, k, correct, selected, annotated, log_w)
        ("d", 0, 0, None, True, False, -1.0), ("d", 0, 1, None, False, False, -1.0),
        ("d", 1, 0, True, True, True, -2.0), ("d", 1, 1, False, False, True, -3.0),
        ("d", 2, 0, False, True, True, -1.0), ("d", 2, 1, True, False, True, -1.0),
    ]
    frame = pd.DataFrame(rows, columns=["doc_id", "chunk_id", "sample_idx", "thought_correct", "selected",
                                        "annotated", "log_w"])
    frame["thought"], frame["thought_tokens"], frame["finished"] = "", 3, True
    m = estep.chunk_metrics(frame)
    assert m["thought_correct_selected"] == 0.5 and m["thought_correct_random"] == 0.5
    assert m["thought_correct_best_of_k"] == 1.0
    assert m["ess_unannotated"] == pytest.approx(2.0)  # equal weights
    ess_1 = 1.0 / (np.exp(-2.0) ** 2 + np.exp(-3.0) ** 2) * (np.exp(-2.0) + np.exp(-3.0)) ** 2
    assert m["ess_annotated"] == pytest.approx((ess_1 + 2.0) / 2)
    assert m["elbo_2_unannotated"] == pytest.approx(-1.0)


# ------------------------------------------------------------------ the sample store
KEY = ["doc_id", "chunk_id", "sample_idx"]
STORE_OPTS = {**OPTS, "max_thought_tokens": 10}


@pytest.fixture(scope="module")
def stopping():
    """The tiny model with its EoL row scaled (embeddings are tied): about a third of its thoughts
    end with EoL within 10 tokens, the rest are cut there."""
    model = tiny_model(seed=1)
    with torch.no_grad():
        model.get_input_embeddings().weight[tiny_tokenizer().convert_tokens_to_ids(EOL)] *= 4.0
    return HFSampler(model, tiny_tokenizer(), batch_size=16)


def hf_store(tmp_path):
    from experiments.sample_store import SampleStore

    return SampleStore(tmp_path, "ckpt", {"backend": "hf", "dtype": "float32", "fan_out": None})


def frame_of(rows):
    return pd.DataFrame(rows, columns=estep.SAMPLE_COLUMNS).sort_values(KEY).reset_index(drop=True)


def assert_same_samples(got, want):
    """Sample for sample: ids, text, finished, selection exactly; log values to float32 rounding (a
    top-up draws and scores in batches of another composition than one K=8 call)."""
    pd.testing.assert_frame_equal(got.drop(columns=FLOATS), want.drop(columns=FLOATS), check_exact=True)
    np.testing.assert_allclose(got[FLOATS].to_numpy(), want[FLOATS].to_numpy(), rtol=1e-6, atol=0)


def test_k_topped_up_from_the_store_is_k_from_scratch(tmp_path, docs, stopping):
    """K=8 from scratch == K=4, then topped up to 8 from the store: only indices 4-7 are drawn and
    scored, and samples 0-3 are those of K=4 as they are."""
    scratch = frame_of(estep.infer_thoughts(stopping, docs[:3], **{**STORE_OPTS, "num_samples": 8})[0])
    store = hf_store(tmp_path)
    k4 = frame_of(estep.infer_thoughts(stopping, docs[:3], **{**STORE_OPTS, "num_samples": 4}, store=store)[0])
    spy = SpySampler(stopping)
    rows, _, counts = estep.infer_thoughts(spy, docs[:3], **{**STORE_OPTS, "num_samples": 8}, store=store)
    topped = frame_of(rows)
    assert_same_samples(topped, scratch)
    assert [(c[2]["first"], len(c[1][0])) for c in spy.sample_calls] == [(4, 4)]
    assert len(spy.score_calls[0][0]) == 4 * counts["num_chunks"] == counts["samples_drawn"] == counts["samples_reused"]
    reused = topped[topped.sample_idx < 4].drop(columns=["log_w", "selected"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(reused, k4.drop(columns=["log_w", "selected"]), check_exact=True)
    # all stored now: nothing drawn, and the same rows to the bit
    again, _, counts = estep.infer_thoughts(spy, docs[:3], **{**STORE_OPTS, "num_samples": 8}, store=store)
    assert len(spy.sample_calls) == 1 and counts["samples_drawn"] == counts["tokens_generated"] == 0
    pd.testing.assert_frame_equal(frame_of(again), topped, check_exact=True)


def test_an_empty_store_draws_what_no_store_draws_to_the_bit(tmp_path, docs, sampler):
    plain = estep.infer_thoughts(sampler, docs[:2], **STORE_OPTS)
    stored = estep.infer_thoughts(sampler, docs[:2], **STORE_OPTS, store=hf_store(tmp_path))
    pd.testing.assert_frame_equal(frame_of(stored[0]), frame_of(plain[0]), check_exact=True)
    assert stored[1] == plain[1] and stored[2] == plain[2]


def test_finished_samples_serve_a_longer_cap(tmp_path, docs, stopping):
    """Under cap 10 some thoughts finish; under cap 40 only the cut ones are drawn again."""
    store = hf_store(tmp_path)
    short, _, _ = estep.infer_thoughts(stopping, docs[:3], **STORE_OPTS, store=store)
    short = frame_of(short)
    done = int((short.finished & (short.thought_tokens < 10)).sum())
    assert 0 < done < len(short)
    scratch, _, _ = estep.infer_thoughts(stopping, docs[:3], **{**STORE_OPTS, "max_thought_tokens": 40})
    rows, _, counts = estep.infer_thoughts(stopping, docs[:3], **{**STORE_OPTS, "max_thought_tokens": 40}, store=store)
    assert_same_samples(frame_of(rows), frame_of(scratch))
    assert counts["samples_reused"] == done and counts["samples_drawn"] == len(short) - done


def test_store_counts_by_hand(tmp_path):
    """One chunk; fake sample j has j + 1 tokens and finishes when j is even (then its EoL counts)."""
    from experiments.corpus import text_document

    tok = tiny_tokenizer()

    class Fake:
        tokenizer = tok

        def __init__(self):
            self.calls = []

        def sample(self, prompts_ids, n, max_tokens, first=0, **kw):
            self.calls.append((len(prompts_ids[0]), first, n))
            return [[SampleOut([40] * (j + 1), [-0.5] * (j + 1), tok.decode([40] * (j + 1)), j % 2 == 0, -0.25)
                     for j in range(first, first + n)] for _ in prompts_ids]

        def score(self, prefix_ids, cont_ids):
            self.frame = len(prefix_ids[0]) + len(cont_ids[0]) - len([t for t in cont_ids[0] if t == 40])
            return [-3.0] * len(cont_ids)

    doc, opts = text_document("d0", "One two. Three four."), {**OPTS, "max_sentences": 20, "poisson_mean": 10.0}
    store, fake = hf_store(tmp_path), Fake()
    _, _, k2 = estep.infer_thoughts(fake, [doc], **{**opts, "num_samples": 2}, store=store)
    _, _, k3 = estep.infer_thoughts(fake, [doc], **{**opts, "num_samples": 3}, store=store)
    prompt, s = fake.calls[0][0], fake.frame  # prompt tokens; scoring tokens besides the thought's
    assert fake.calls[1][1:] == (2, 1)
    # K=2: samples of 1 (+EoL) and 2 tokens; K=3 adds one of 3 (+EoL)
    assert k2 == {"tokens_in": prompt + 2 * s + 3, "tokens_out": 4, "num_chunks": 1, "tokens_in_computed": prompt + 2 * s + 3,
                  "tokens_generated": 4, "tokens_reused": 0, "samples_drawn": 2, "samples_reused": 0}
    assert k3 == {"tokens_in": prompt + 3 * s + 6, "tokens_out": 8, "num_chunks": 1, "tokens_in_computed": prompt + s + 3,
                  "tokens_generated": 4, "tokens_reused": 4, "samples_drawn": 1, "samples_reused": 2}


def store_stage(tmp_path, docs, sampler):
    """A results folder as the orchestrator lays it out: data, a model stage, the E-step's folders."""
    results = tmp_path / "results"
    data = results / "artifacts" / "prepare_data" / "p0"
    data.mkdir(parents=True)
    save_docs(data / "train_docs.jsonl", docs)
    (data / "em_docs.json").write_text(json.dumps([d.doc_id for d in docs]))
    model = results / "artifacts" / "mstep" / "m0"
    sampler.model.save_pretrained(model / "model")
    sampler.tokenizer.save_pretrained(model / "model")
    return results, data, model


def run_stored(results, data, model, name, num_shards=2, **params):
    stage_dir = results / "artifacts" / "estep" / name
    config = stage_config(**params)
    lineage = {"model": {"stage": "mstep", "key": "m0"}, "data": {"stage": "prepare_data", "key": "p0"}}
    for i in range(num_shards):
        ctx = StageContext("estep", name, shard_dir(stage_dir, i, num_shards), config,
                           {"data": data, "model": model}, 1, i, num_shards, lineage)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        estep.run_shard(ctx)
    ctx = StageContext("estep", name, stage_dir, config, {"data": data, "model": model}, 1, 0, num_shards, lineage)
    return stage_dir, estep.merge(ctx)


def test_stages_share_samples_through_the_results_folder(tmp_path, docs, sampler):
    """Two E-step stages (K=2, then K=4 on another shard count) from one checkpoint: the second draws
    only indices 2-3; its samples are those of a store-less K=4 and its ``flops`` (the sweep's
    objective) too, while ``flops_computed`` counts what it computed."""
    results, data, model = store_stage(tmp_path, docs, sampler)
    _, k2 = run_stored(results, data, model, "k2", k=2, max_thought_tokens=10)
    k4_dir, k4 = run_stored(results, data, model, "k4", num_shards=3, k=4, max_thought_tokens=10)
    off_dir, off = run_stored(results, data, model, "off", k=4, max_thought_tokens=10, sample_store=False)
    assert_same_samples(pd.read_parquet(k4_dir / "estep_samples.parquet"), pd.read_parquet(off_dir / "estep_samples.parquet"))
    assert list((results / "sample_store").iterdir()) == [results / "sample_store" / "m0"]
    assert k4["samples_reused"] == k2["samples_drawn"] == k2["num_chunks"] * 2 == k4["samples_drawn"]
    assert k4["tokens_reused"] == k2["tokens_generated"] == k2["tokens_out"]
    assert k4["tokens_generated"] + k4["tokens_reused"] == k4["tokens_out"] == off["tokens_out"] == off["tokens_generated"]
    assert k4["flops"] == off["flops"] == off["flops_computed"] and 0 < k4["flops_computed"] < k4["flops"]
    n_params = sum(p.numel() for p in sampler.model.parameters())
    assert k4["flops_computed"] == pytest.approx(2 * n_params * (k4["tokens_in_computed"] + k4["tokens_generated"]))
    assert off["samples_reused"] == off["tokens_reused"] == 0
