"""The M-step trainer: schedule and data-order math, exact resume, preemption, DDP equivalence."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments import mstep
from experiments.modeling import build_model, save_model
from experiments.inputs import MStepInput
from platform.stage import StageContext

PAD, VOCAB, WINDOW, N_WINDOWS = 0, 64, 16, 24
MODEL_CFG = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, "tie_embeddings": True, "dtype": "float32"}


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def _windows(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.integers(3, 12, size=(N_WINDOWS, WINDOW)).astype(np.int32)  # a small alphabet: learnable
    w[:, 0] = 1
    w[-3:, 10:] = PAD  # the tail windows of a packing are padded
    return w


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mstep_inputs")
    train, init = root / "train", root / "init"
    train.mkdir()
    np.save(train / "windows.npy", _windows())
    (train / "meta.json").write_text(json.dumps({"pad_id": PAD}))
    model = build_model(MODEL_CFG, VOCAB, bos_id=1, eos_id=2, pad_id=PAD, seed=0)
    save_model(model, _tokenizer(), init / "model")
    return {"train": train, "init": init}


def _ctx(out: Path, inputs: dict[str, Path], **mstep_overrides) -> StageContext:
    mcfg = {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.01, "grad_clip": 1.0, "warmup_steps": 2,
            "batch_size": 4, "epochs": 1.0, "train_tokens": None, "dtype": MODEL_CFG.get("dtype", "float32"),
            "seed": 7, "micro_batch_size": None, "checkpoint_every": 3, "log_every": 1, "num_threads": 1}
    mcfg.update(mstep_overrides)
    return StageContext(stage="mstep", key="test", out_dir=out, params=MStepInput(**mcfg), inputs=dict(inputs))


def _metric(out: Path, name: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["value"]) for r in rows if r["name"] == name]


def test_lr_multiplier_by_hand():
    f = lambda s: mstep.lr_multiplier(s, warmup=4, total=10)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine: progress 3/6
    assert f(10) == pytest.approx(mstep.LR_FLOOR)
    assert mstep.lr_multiplier(0, warmup=0, total=5) == pytest.approx(1.0)


def test_total_steps_epochs_and_token_budget():
    assert mstep.total_steps(4, 2.5, None, n_windows=10, window=16) == 7  # ceil(25/4)
    assert mstep.total_steps(4, 1, 1000, 10, 16) == 16  # ceil(1000/64)


def test_batch_indices_cover_each_epoch_once_and_reshuffle():
    n, b = 10, 4
    stream = np.concatenate([mstep.batch_indices(s, b, n, seed=3) for s in range(1, 6)])  # 20 = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert list(stream[:10]) != list(stream[10:])  # re-shuffled per epoch
    assert np.array_equal(mstep.batch_indices(3, b, n, seed=3), stream[8:12])  # step 3 straddles epochs
    assert not np.array_equal(mstep.batch_indices(1, b, n, seed=4), stream[:4])


def test_epoch_e_reads_view_e_mod_views_once_each():
    """A training set packed as views (fresh coins per epoch): epoch e is a permutation of view
    e mod V's windows; epochs and steps count each view's own length."""
    views, b = [5, 7, 6], 4
    offsets = [0, 5, 12, 18]
    n_epochs = 7
    total = sum(views[e % 3] for e in range(n_epochs))
    stream = np.concatenate([mstep.batch_indices(s, b, views, seed=3) for s in range(1, total // b + 2)])[:total]
    at = 0
    for e in range(n_epochs):
        v = e % 3
        part = stream[at: at + views[v]]
        assert sorted(part) == list(range(offsets[v], offsets[v + 1])), e
        at += views[v]
    assert mstep.epoch_windows(views, 2.5) == 5 + 7 + 0.5 * 6
    assert mstep.total_steps(4, 2.5, None, views, 16) == 4  # ceil(15/4)
    # one view is the plain per-epoch reshuffle
    assert np.array_equal(mstep.batch_indices(3, 4, [10], seed=3), mstep.batch_indices(3, 4, 10, seed=3))


def test_train_writes_model_metrics_checkpoints(tmp_path, inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    summary = mstep.run_mstep(_ctx(out, inputs, epochs=2.0, checkpoint_every=2))
    assert summary["steps"] == 12  # ceil(2 * 24 / 4)
    windows = _windows()
    expected_tokens = sum(int((windows[mstep.batch_indices(s, 4, N_WINDOWS, 7), 1:] != PAD).sum()) for s in range(1, 13))
    assert summary["tokens_in"] == expected_tokens
    assert summary["flops"] == 6 * summary["n_params"] * expected_tokens
    assert summary["tokens_out"] == 0 and summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 10
    losses = _metric(out, "loss")
    assert [s for s, _ in losses] == list(range(1, 13))
    assert losses[-1][1] < losses[0][1] - 0.3  # it learns the small alphabet
    assert _metric(out, "train_loss") == [(12, summary["final_loss"])] and losses[-1][1] == summary["final_loss"]
    assert _metric(out, "lr")[1][1] == pytest.approx(3e-3)  # warmup 2: step 2 at peak
    assert [v for _, v in _metric(out, "tokens_seen")][-1] == expected_tokens
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000010", "step_000012"]
    assert mstep.latest_checkpoint(out).name == "step_000012"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model").pad_token_id == PAD
    assert model.config.vocab_size == VOCAB


def test_first_step_loss_is_masked_cross_entropy(tmp_path, inputs):
    from experiments.modeling import load_model

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped after step 1"):
        mstep.train(_ctx(out, inputs, epochs=1.0), stop_after_step=1)
    x = torch.from_numpy(_windows()[mstep.batch_indices(1, 4, N_WINDOWS, 7)].astype(np.int64))
    model = load_model(inputs["init"] / "model")
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=(x != PAD).long()).logits
    logp = F.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None])[..., 0]
    keep = x[:, 1:] != PAD
    assert _metric(out, "loss")[0][1] == pytest.approx(float(-(logp * keep).sum() / keep.sum()), abs=1e-5)


def test_micro_batches_match_full_batch(tmp_path, inputs):
    full = mstep.train(_ctx(tmp_path / "full", inputs))
    split = mstep.train(_ctx(tmp_path / "split", inputs, micro_batch_size=1))
    assert split["final_loss"] == pytest.approx(full["final_loss"], abs=1e-5)


def test_resume_after_crash_is_exact(tmp_path, inputs):
    ref = mstep.train(_ctx(tmp_path / "ref", inputs, epochs=2.0))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="stopped after step 7"):
        mstep.train(_ctx(out, inputs, epochs=2.0), stop_after_step=7)
    assert mstep.latest_checkpoint(out).name == "step_000006"
    resumed = mstep.train(_ctx(out, inputs, epochs=2.0))
    assert resumed["resumed_from_step"] == 6
    assert resumed["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-5)
    assert resumed["tokens_in"] == ref["tokens_in"]
    got, want = _metric(out, "loss"), _metric(tmp_path / "ref", "loss")
    assert [s for s, _ in got] == list(range(1, 13))  # step 7 logged once: rows after step 6 were dropped
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], atol=1e-5)
    np.testing.assert_allclose([v for _, v in _metric(out, "lr")], [v for _, v in _metric(tmp_path / "ref", "lr")])


def test_preemption_signal_checkpoints_and_stops(tmp_path, inputs):
    import os
    import signal

    out = tmp_path / "run"
    hook = lambda step, loss: os.kill(os.getpid(), signal.SIGUSR1) if step == 4 else None  # noqa: E731
    previous = signal.signal(signal.SIGUSR1, mstep.request_checkpoint)  # what a SLURM launcher installs
    try:
        with pytest.raises(mstep.Preempted, match="step 4"):
            mstep.train(_ctx(out, inputs, checkpoint_every=100), on_step=hook)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert mstep.latest_checkpoint(out).name == "step_000004"
    assert not (out / "model").exists()
    done = mstep.train(_ctx(out, inputs, checkpoint_every=100))
    ref = mstep.train(_ctx(tmp_path / "ref", inputs, checkpoint_every=100))
    assert done["resumed_from_step"] == 4 and done["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-5)


def test_nan_loss_names_the_step(tmp_path, inputs):
    from experiments.modeling import load_model

    model = load_model(inputs["init"] / "model")
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    bad_init = tmp_path / "bad_init"
    save_model(model, _tokenizer(), bad_init / "model")
    with pytest.raises(FloatingPointError, match="at step 1"):
        mstep.train(_ctx(tmp_path / "run", {"train": inputs["train"], "init": bad_init}))


def test_bad_inputs_are_named(tmp_path, inputs):
    """Bad training data (the config's ranges are checked once, in validation: tests/platform/test_config.py)."""
    big = tmp_path / "big"
    big.mkdir()
    w = _windows()
    w[0, 3] = VOCAB + 5
    np.save(big / "windows.npy", w)
    (big / "meta.json").write_text(json.dumps({"pad_id": PAD}))
    with pytest.raises(ValueError, match=r"windows\.npy holds token ids outside \[0, 64\)"):
        mstep.train(_ctx(tmp_path / "b", {"train": big, "init": inputs["init"]}))
    (big / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="meta.json: no 'pad_id'"):
        mstep.train(_ctx(tmp_path / "c", {"train": big, "init": inputs["init"]}))


def _ddp_worker(rank: int, world: int, port: int, out: str, inputs: dict, result_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    summary = mstep.train(_ctx(Path(out), {k: Path(v) for k, v in inputs.items()}))
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_gloo_ranks_match_one_process(tmp_path, inputs):
    import torch.multiprocessing as mp

    single = mstep.train(_ctx(tmp_path / "single", inputs))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), {k: str(v) for k, v in inputs.items()},
                                str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["final_loss"] == pytest.approx(single["final_loss"], abs=1e-4)
    assert ranks[1]["final_loss"] == ranks[0]["final_loss"]  # all ranks agree on the global loss
    assert ranks[0]["tokens_in"] == single["tokens_in"]
    # only rank 0 writes: one row per step, one final model
    assert [s for s, _ in _metric(tmp_path / "ddp", "loss")] == list(range(1, single["steps"] + 1))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
    assert math.isfinite(ranks[0]["tokens_per_s"])


def test_slurm_environment_gives_ranks_and_master(monkeypatch):
    from experiments import distributed

    for k in ("SUBMITIT_EXECUTOR", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    env = distributed._env_from_slurm()
    assert env["RANK"] == "5" and env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "8"
    assert env["MASTER_ADDR"] == "gpu07"
    port = int(env["MASTER_PORT"])
    assert 20000 <= port < 60000 and port == distributed.master_port_for_job("4242")
    assert distributed.master_port_for_job("4243") != port  # two jobs on one node do not collide
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed._env_from_slurm() is None


def test_rank_shards_are_strided_and_checked():
    from experiments.distributed import DistEnv, shard_for_rank

    idx = np.arange(8)
    assert list(shard_for_rank(idx, DistEnv(rank=1, world_size=4))) == [1, 5]
    assert list(shard_for_rank(idx, DistEnv())) == list(range(8))
    with pytest.raises(ValueError, match="not divisible by world size 3"):
        shard_for_rank(idx, DistEnv(rank=0, world_size=3))


def test_bfloat16_autocast_trains_and_saves_bf16(tmp_path, inputs):
    from transformers import AutoModelForCausalLM

    summary = mstep.train(_ctx(tmp_path / "run", inputs, epochs=0.5, dtype="bfloat16"))
    ref = mstep.train(_ctx(tmp_path / "fp32", inputs, epochs=0.5))
    assert summary["final_loss"] == pytest.approx(ref["final_loss"], abs=0.05)  # bf16 rounding, same training
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", dtype="auto")
    assert saved.dtype == torch.bfloat16


def test_rerun_after_the_last_checkpoint_logs_the_final_row_once(tmp_path, inputs):
    out = tmp_path / "run"
    first = mstep.train(_ctx(out, inputs, checkpoint_every=2))  # 6 steps: the last checkpoint is the end
    (out / "model" / "model.safetensors").unlink()  # as if the job died while saving the final model
    again = mstep.train(_ctx(out, inputs, checkpoint_every=2))
    assert again["resumed_from_step"] == 6 and again["final_loss"] == first["final_loss"]
    assert _metric(out, "train_loss") == [(6, first["final_loss"])]
    assert [s for s, _ in _metric(out, "loss")] == list(range(1, 7))
    assert (out / "model" / "model.safetensors").exists()
