"""torch.distributed set-up for the M-step, from whatever launched us.

- torchrun (or a test that sets the variables): WORLD_SIZE > 1 with RANK, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT already in the environment.
- SLURM through submitit: SLURM_NTASKS > 1; submitit's JobEnvironment gives global/local rank and the
  node list. MASTER_ADDR is the first node, MASTER_PORT a port derived from the job id, so every task
  of the job agrees without talking.
- Anything else: one process, no process group.

NCCL on GPU, gloo on CPU. Only rank 0 writes checkpoints and metrics; every rank reads checkpoints.

On one node, torchrun sets the variables: ``torchrun --nproc-per-node 8 <script running the stage>``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def master_port_for_job(job_id: str) -> int:
    """A port in [20000, 60000) that every task of a SLURM job derives alike from its job id."""
    return random.Random(str(job_id)).randint(20000, 59999)


def _env_from_slurm() -> Optional[dict[str, str]]:
    """RANK/WORLD_SIZE/... from submitit's view of a multi-task SLURM job; None outside one."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return None
    import submitit
    from submitit.slurm.slurm import SlurmJobEnvironment

    try:
        job = submitit.JobEnvironment()  # inside a submitit job
    except RuntimeError:  # plain `srun python ...`: the same SLURM_* variables, read the same way
        job = SlurmJobEnvironment()
    return {
        "RANK": str(job.global_rank),
        "LOCAL_RANK": str(job.local_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or job.hostnames[0],
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(master_port_for_job(job.job_id)),
    }


def _pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed() -> DistEnv:
    """Join (or create) the process group the environment describes; a single-process env otherwise."""
    if dist.is_available() and dist.is_initialized():  # someone (a test, a launcher) did it already
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistEnv(rank, local, world, _pick_device(local))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        slurm = _env_from_slurm()
        if slurm is None:
            return DistEnv(device=_pick_device(0))
        os.environ.update(slurm)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"distributed M-step: WORLD_SIZE>1 but {missing} not set in the environment")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistEnv(rank, local, world, device, owns_group=True)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DDP on several ranks, the bare model on one."""
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def shard_for_rank(items: Sequence[T], env: DistEnv) -> Sequence[T]:
    """This rank's share of a global batch, DistributedSampler-style (strided: rank, rank+W, ...)."""
    if len(items) % env.world_size:
        raise ValueError(f"global batch of {len(items)} windows is not divisible by world size {env.world_size}")
    return items[env.rank :: env.world_size]


def all_reduce_sum(value: float | torch.Tensor, env: DistEnv) -> float:
    """Sum a scalar over ranks (float64 on the way so token counts stay exact)."""
    if not env.enabled:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=env.device).detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
