"""The M-step: train a causal LM on packed windows of thought-augmented (or raw) text.

A plain torch loop, nanoGPT style: AdamW, gradient clipping, linear warmup then cosine decay to
10% of the peak lr (LR_FLOOR; TinyLlama-style schedules stop at a floor rather than at 0), global
batch of ``mstep.batch_size`` windows split over ranks (experiments/distributed.py) and over
micro-batches (optional ``mstep.micro_batch_size``). Loss: next-token cross-entropy on every non-pad
token, normalised by the global batch's token count, so the loss and the gradients do not depend on
how the batch is split (docs/method.md "M-step": no thought mask).

Data order: an endless stream of epochs, each a permutation of the windows seeded by (seed, epoch);
step s takes stream positions [(s-1)*B, s*B). The position is a function of the step alone, so a
resumed run sees exactly the windows an uninterrupted run would.

Outputs in ``ctx.out_dir``: ``model/`` (HF checkpoint with tokenizer), ``checkpoints/step_NNNNNN/``
(``model/`` + ``trainer.pt`` with optimizer, scheduler, RNG, step; the latest KEEP_CHECKPOINTS kept),
``metrics.jsonl``. A rerun resumes from the latest checkpoint.

Preemption: call :func:`request_checkpoint` (it is a valid signal handler) and the loop writes a
checkpoint after the current step and raises :class:`Preempted`; requeue and rerun to resume.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tqdm import tqdm
from transformers import AutoTokenizer

from experiments import compute, distributed
from experiments.modeling import count_params, load_model, save_model

LR_FLOOR = 0.1  # cosine ends at 10% of the peak lr
KEEP_CHECKPOINTS = 2
IGNORE = -100

_checkpoint_requested = threading.Event()


class Preempted(RuntimeError):
    """Training stopped on request after writing a checkpoint; rerun the stage to resume."""


class _Stopped(RuntimeError):
    """Raised by ``stop_after_step`` (tests): a crash with no checkpoint of its own."""


def request_checkpoint(signum: Any = None, frame: Any = None) -> None:
    """Ask the running loop to checkpoint after the current step and exit (signal-handler safe)."""
    _checkpoint_requested.set()


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``out_dir/checkpoints``, or None."""
    done = [p for p in (Path(out_dir) / "checkpoints").glob("step_*") if (p / "trainer.pt").exists()]
    done = [p for p in done if p.name[5:].isdigit()]  # skips "step_000200.tmp" left by a crash
    return max(done, key=lambda p: int(p.name[5:]), default=None)


def lr_multiplier(step: int, warmup: int, total: int, floor: float = LR_FLOOR) -> float:
    """Factor on the peak lr for 0-based optimizer step ``step``: linear warmup, cosine to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _views(n_windows: int | Sequence[int]) -> list[int]:
    views = [int(n_windows)] if isinstance(n_windows, (int, np.integer)) else [int(v) for v in n_windows]
    if not views or min(views) < 1:
        raise ValueError(f"every view of the training set needs at least one window, got {views}")
    return views


def epoch_windows(n_windows: int | Sequence[int], epochs: float) -> float:
    """Windows read in ``epochs`` passes when epoch e reads view e mod len(views)."""
    views = _views(n_windows)
    whole = int(math.floor(epochs))
    return float(sum(views[e % len(views)] for e in range(whole)) + (epochs - whole) * views[whole % len(views)])


def total_steps(batch_size: int, epochs: float, train_tokens: Optional[int], n_windows: int | Sequence[int],
                window: int) -> int:
    """ceil(train_tokens / (B * window)) with a token budget, else ceil(windows in ``epochs`` / B).

    ``n_windows``: the window count, or one per view of a training set packed in views (build_train).
    """
    if train_tokens is not None:
        return max(1, math.ceil(train_tokens / (batch_size * window)))
    return max(1, math.ceil(round(epoch_windows(n_windows, epochs), 6) / batch_size))


def batch_indices(step: int, batch_size: int, n_windows: int | Sequence[int], seed: int) -> np.ndarray:
    """Global window indices of 1-based ``step`` in the seeded, per-epoch reshuffled stream.

    With views (a list of window counts, packed one after another), epoch e is a permutation of
    view e mod len(views), seeded by (seed, e); one view is the plain per-epoch reshuffle.
    """
    views = _views(n_windows)
    offsets = np.concatenate([[0], np.cumsum(views)])
    cycle = int(offsets[-1])  # windows in one pass over every view
    positions = np.arange((step - 1) * batch_size, step * batch_size)
    rounds, rest = positions // cycle, positions % cycle
    view = np.searchsorted(offsets, rest, side="right") - 1
    epochs = rounds * len(views) + view
    within = rest - offsets[view]
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        v = int(epoch) % len(views)
        perm = np.random.default_rng([seed, int(epoch)]).permutation(views[v])
        sel = epochs == epoch
        out[sel] = offsets[v] + perm[within[sel]]
    return out


def load_windows(folder: str | Path) -> tuple[np.ndarray, int, list[int]]:
    """Packed windows, the pad id, and the window count of each view (one view unless build_train packed several)."""
    folder = Path(folder)
    path, meta_path = folder / "windows.npy", folder / "meta.json"
    for p in (path, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"M-step input {p} is missing")
    windows = np.load(path, mmap_mode="r")  # a cluster corpus is tens of GB: read batches on demand
    if windows.ndim != 2 or windows.shape[0] == 0 or not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(f"{path}: expected a non-empty 2-D integer array, got {windows.dtype} {windows.shape}")
    meta = json.loads(meta_path.read_text())
    if "pad_id" not in meta:
        raise ValueError(f"{meta_path}: no 'pad_id'")
    views = [int(v) for v in meta.get("view_windows", [windows.shape[0]])]
    if sum(views) != windows.shape[0]:
        raise ValueError(f"{meta_path}: view_windows {views} do not add up to the {windows.shape[0]} windows of {path}")
    return windows, int(meta["pad_id"]), views


def _save_checkpoint(out_dir: Path, step: int, model, tok, opt, sched, state: dict[str, Any]) -> None:
    root = out_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tok, tmp / "model")  # float32 master weights: resume is exact
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng},
               tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # trainer.pt inside makes it count; the rename makes it appear at once
    for old in sorted((p for p in root.glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))[
        :-KEEP_CHECKPOINTS
    ]:
        shutil.rmtree(old, ignore_errors=True)


def _truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (and any final row): they will be logged again."""
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in rows if (r := json.loads(line)).get("step", 0) <= step and r.get("name") != "train_loss"]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def _accumulate_gradients(ddp_model, local: torch.Tensor, micro: int, pad_id: int, global_count: int,
                          env: distributed.DistEnv, autocast_dtype: Optional[torch.dtype]) -> float:
    """Backward over this rank's windows in micro-batches; returns this rank's summed token loss."""
    loss_sum = 0.0
    chunks = torch.split(local, micro)
    for i, x in enumerate(chunks):
        x = x.to(env.device)
        labels = x.masked_fill(x == pad_id, IGNORE)
        mask = x != pad_id
        # packed windows pad only at the tail; without pads the causal fast path needs no mask
        kwargs = {} if bool(mask.all()) else {"attention_mask": mask.long()}
        last = i == len(chunks) - 1
        no_sync = ddp_model.no_sync() if env.enabled and not last else nullcontext()
        with no_sync, torch.autocast(env.device.type, dtype=autocast_dtype or torch.float32,
                                     enabled=autocast_dtype is not None):
            logits = ddp_model(input_ids=x, **kwargs).logits.float()
            part = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE, reduction="sum")
            # DDP averages gradients over ranks, hence * world_size: the mean is over the global batch
            (part * env.world_size / max(global_count, 1)).backward()
        loss_sum += part.item()
    return loss_sum


def train(
    ctx,
    *,
    stop_after_step: Optional[int] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> dict[str, Any]:
    """Run (or resume) the M-step of ``ctx`` (``ctx.params``: an MStepInput); ``stop_after_step``
    simulates a crash (tests)."""
    if ctx.params.num_threads:
        torch.set_num_threads(ctx.params.num_threads)
    _checkpoint_requested.clear()
    env = distributed.init_distributed()
    try:
        run = _start(ctx, env)
        for step in range(run.start + 1, run.steps + 1):
            _step(run, step, on_step)
            if stop_after_step is not None and step >= stop_after_step:
                raise _Stopped(f"stopped after step {step} (stop_after_step)")
        return _finish(run)
    finally:
        distributed.shutdown(env)


@dataclass
class _Run:
    """One M-step in progress: what it trains, with what, and how far it is."""

    ctx: Any
    env: distributed.DistEnv
    windows: np.ndarray
    pad_id: int
    views: list[int]
    steps: int
    model: Any
    ddp_model: Any
    tok: Any
    opt: Any
    sched: Any
    micro: int
    autocast_dtype: Optional[torch.dtype]
    n_params: int
    peak: float
    start: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"tokens_seen": 0, "last_loss": float("nan")})
    run_tokens: int = 0
    run_time: float = 0.0
    log_tokens: int = 0
    log_t0: float = field(default_factory=time.perf_counter)
    bar: Any = None


def _start(ctx, env: distributed.DistEnv) -> _Run:
    """Load the training set and the model (from the latest checkpoint when resuming), build the optimizer."""
    p = ctx.params
    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    windows, pad_id, views = load_windows(ctx.inputs["train"])
    steps = total_steps(p.batch_size, p.epochs, p.train_tokens, views, windows.shape[1])
    resume = latest_checkpoint(out_dir)
    model_dir = (resume or Path(ctx.inputs["init"])) / "model"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_model(model_dir, "float32").to(env.device)
    model.train()
    vocab = model.get_input_embeddings().weight.shape[0]
    if windows.max() >= vocab or windows.min() < 0:
        raise ValueError(f"{ctx.inputs['train']}/windows.npy holds token ids outside [0, {vocab}) of {model_dir}")
    autocast_dtype = torch.bfloat16 if p.dtype == "bfloat16" else None
    torch.manual_seed(p.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_multiplier, warmup=p.warmup_steps, total=steps))
    run = _Run(ctx, env, windows, pad_id, views, steps, model, distributed.wrap_model(model, env), tok, opt, sched,
               p.micro_batch_size or max(1, p.batch_size // env.world_size), autocast_dtype, count_params(model),
               compute.peak_flops_for(env.device, autocast_dtype or torch.float32))
    if resume is not None:
        _restore(run, resume)
    # a progress bar on rank 0 (to the job's log); few refreshes, so logs stay small
    run.bar = tqdm(total=steps, initial=run.start, desc="mstep", unit="step", mininterval=10, disable=not env.is_main)
    return run


def _restore(run: _Run, checkpoint: Path) -> None:
    saved = torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=True)
    run.opt.load_state_dict(saved["optimizer"])
    run.sched.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    run.start = saved["step"]
    run.state = {"tokens_seen": saved["tokens_seen"], "last_loss": saved["last_loss"]}
    if run.env.is_main:
        _truncate_metrics(Path(run.ctx.out_dir), run.start)


def _step(run: _Run, step: int, on_step: Optional[Callable[[int, float], None]]) -> None:
    p, env = run.ctx.params, run.env
    run.bar.update(1)
    t0 = time.perf_counter()
    idx = batch_indices(step, p.batch_size, run.views, p.seed)
    # predicted tokens (position 0 of a window is context only); every rank knows the global batch
    global_batch = torch.from_numpy(np.asarray(run.windows[idx], dtype=np.int64))
    global_count = int((global_batch[:, 1:] != run.pad_id).sum())
    local = global_batch[distributed.shard_for_rank(np.arange(p.batch_size), env)]
    loss_sum = _accumulate_gradients(run.ddp_model, local, run.micro, run.pad_id, global_count, env, run.autocast_dtype)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), p.grad_clip))
    lr = run.opt.param_groups[0]["lr"]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    loss = distributed.all_reduce_sum(loss_sum, env) / max(global_count, 1)
    if not math.isfinite(loss):
        raise FloatingPointError(f"M-step loss is {loss} at step {step} (lr {lr:.3g}); stage {run.ctx.key} failed")
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    run.run_time += time.perf_counter() - t0
    run.run_tokens += global_count
    run.log_tokens += global_count
    run.state["tokens_seen"] += global_count
    run.state["last_loss"] = loss
    if env.is_main and (step % p.log_every == 0 or step == run.steps):
        _log(run, step, loss, lr, grad_norm)
    if on_step is not None:
        on_step(step, loss)
    _maybe_checkpoint(run, step)


def _log(run: _Run, step: int, loss: float, lr: float, grad_norm: float) -> None:
    now = time.perf_counter()
    tps = run.log_tokens / max(now - run.log_t0, 1e-9)
    run.ctx.write_metrics([{"name": n, "step": step, "value": v} for n, v in (
        ("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("tokens_per_s", tps),
        ("tokens_seen", run.state["tokens_seen"]))])
    run.log_tokens, run.log_t0 = 0, now


def _maybe_checkpoint(run: _Run, step: int) -> None:
    """Every ``checkpoint_every`` steps, and at once when the job is about to be preempted."""
    preempt = distributed.all_reduce_sum(float(_checkpoint_requested.is_set()), run.env) > 0
    if step % run.ctx.params.checkpoint_every == 0 or preempt:
        if run.env.is_main:
            _save_checkpoint(Path(run.ctx.out_dir), step, run.model, run.tok, run.opt, run.sched,
                             {**run.state, "data_position": step * run.ctx.params.batch_size})
        distributed.barrier(run.env)
        run.log_t0 = time.perf_counter()  # saving time is not training time
    if preempt and step < run.steps:
        raise Preempted(f"checkpoint written at step {step} of {run.steps} on request; rerun to resume")


def _finish(run: _Run) -> dict[str, Any]:
    run.bar.close()
    if run.env.is_main:
        if run.autocast_dtype is not None:
            run.model.to(run.autocast_dtype)  # the final checkpoint in the run's dtype (vLLM serves bf16)
        save_model(run.model, run.tok, Path(run.ctx.out_dir) / "model")
        run.ctx.write_metrics([{"name": "train_loss", "step": run.steps, "value": run.state["last_loss"]}])
    distributed.barrier(run.env)
    tokens_per_s = run.run_tokens / run.run_time if run.run_time > 0 else 0.0
    flops_per_s = compute.train_flops(run.n_params, tokens_per_s)
    return {
        "tokens_in": run.state["tokens_seen"],
        "tokens_out": 0,
        "flops": compute.train_flops(run.n_params, run.state["tokens_seen"]),
        "steps": run.steps,
        "final_loss": run.state["last_loss"],
        "tokens_per_s": tokens_per_s,
        "mfu": compute.mfu(flops_per_s / run.env.world_size, run.peak),
        "n_params": run.n_params,
        "world_size": run.env.world_size,
        "resumed_from_step": run.start,
    }


def run_mstep(ctx) -> dict[str, Any]:
    """Stage entry point (platform/stage.py contract)."""
    return train(ctx)
