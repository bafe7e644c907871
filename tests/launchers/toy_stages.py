"""Stage functions for the launcher tests (platform.stage contract: take a StageContext, return a dict).

They run inside submitit jobs, so they report what the job saw (pid, host, which ``platform`` it
imported) and keep their state on disk the way real stages do.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import platform


def echo(ctx) -> dict:
    """Write one file and report the job's view of the world."""
    (ctx.out_dir / "echo.txt").write_text(f"{ctx.stage} {ctx.shard_index}\n")
    return {
        "shard_index": ctx.shard_index,
        "value": ctx.params.get("value", 0) * 10 + ctx.shard_index,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "platform_path": list(getattr(platform, "__path__", [])),
        "platform_system": platform.system(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "started_at": time.time(),
    }


def fail(ctx) -> dict:
    """Fail on the shards listed in ``config['fail_shards']`` (every shard when absent)."""
    bad = ctx.params.get("fail_shards")
    if bad is None or ctx.shard_index in bad:
        raise ValueError(f"toy shard {ctx.shard_index} exploded on purpose")
    return {"shard_index": ctx.shard_index}


def sleep(ctx) -> dict:
    """Sleep ``config['seconds']``, writing a heartbeat file first (so tests know it started)."""
    started = time.time()
    (ctx.out_dir / "started").write_text(str(os.getpid()))
    time.sleep(float(ctx.params["seconds"]))
    return {"slept": ctx.params["seconds"], "started_at": started, "ended_at": time.time(), "pid": os.getpid()}


def count_steps(ctx) -> dict:
    """A resumable stage: ``total_steps`` steps, the step count saved to ``steps.json`` after each.

    A fresh start takes ``step_s`` per step; once it has been interrupted and resumes (its state
    file already exists), ``resumed_step_s``. So a first attempt cannot finish inside a short time
    limit, and the resumed one shows that it went on from the saved step instead of from 0.
    """
    state_path = Path(ctx.out_dir) / "steps.json"
    log_path = Path(ctx.out_dir) / "steps.log"
    resumed = state_path.exists()
    step = json.loads(state_path.read_text())["step"] if resumed else 0
    start_step = step
    delay = float(ctx.params["resumed_step_s"] if resumed else ctx.params["step_s"])
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    # save *now* when the job is signalled, not only at the next periodic save
    from launchers.jobs import register_checkpoint_hook

    register_checkpoint_hook(lambda: (Path(ctx.out_dir) / "hook_called").write_text(str(step)))
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"start attempt={attempt} pid={os.getpid()} from_step={step}\n")
    while step < int(ctx.params["total_steps"]):
        time.sleep(delay)
        step += 1
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        os.replace(tmp, state_path)
    return {"steps": step, "resumed_from": start_step, "restart_count": os.environ.get("SLURM_RESTART_COUNT")}


def gloo_ranks(ctx) -> dict:
    """A multi-task job: every task joins one gloo process group from submitit's environment and
    all-reduces (rank + 1); each task leaves a file naming its rank."""
    import submitit
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    try:
        total = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(total)
    finally:
        dist.destroy_process_group()
    (Path(ctx.out_dir) / f"rank{env.rank}").write_text(str(os.getpid()))
    return {"rank": env.rank, "world_size": env.world_size, "sum": float(total.item())}
