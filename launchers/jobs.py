"""What a job runs: one stage (or one shard of it), checkpointable in submitit's sense.

On SLURM's pre-timeout signal (SIGUSR2, ``signal_delay_s`` before the limit) submitit calls
:meth:`StageJob.checkpoint`. It runs the hooks the stage registered (an M-step saves its weights
there), then hands back a *fresh* ``StageJob`` carrying only the stage and where its results go:
nothing from the interrupted process's memory. The requeued job therefore resumes from what the
stage wrote on disk (M-step checkpoints under its out_dir, E-step shard caches), never from a
stale in-memory state pickled at submission time.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

from submitit.core.utils import DelayedSubmission
from submitit.helpers import Checkpointable

_CHECKPOINT_HOOKS: list[Callable[[], None]] = []
REQUEUE_LOG = "_requeues.jsonl"


def ensure_repo_platform() -> None:
    """Make ``platform`` our package in a job process.

    submitit's job runner imports the stdlib ``platform`` before it unpickles the job, so
    ``platform.stage`` would not resolve. Our package re-executes the stdlib code, so swapping it
    in keeps every attribute earlier importers use (same fix as the root conftest.py).
    """
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    mod = sys.modules.get("platform")
    if mod is not None and not hasattr(mod, "__path__"):
        del sys.modules["platform"]
        importlib.import_module("platform")


def register_checkpoint_hook(fn: Callable[[], None]) -> Callable[[], None]:
    """Ask for ``fn()`` to run when this job is about to be preempted or to time out.

    Stages call it to save their state *now* instead of losing the steps since the last periodic
    checkpoint. Hooks run in the main thread (inside the signal handler), at most once per signal.
    Returns ``fn`` so it can be used as a decorator.
    """
    _CHECKPOINT_HOOKS.append(fn)
    return fn


def _task_rank() -> tuple[int, int]:
    """(global rank, number of tasks) of this process in its submitit job; (0, 1) outside one."""
    import submitit

    try:
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks
    except RuntimeError:
        return 0, 1


class _Slot:
    """One of ``n`` machine-wide run slots, held through an flock on ``slot_dir/<i>.lock``.

    The local launcher starts every submitted job as a process at once; the slot keeps at most
    ``max_parallel_jobs`` of them doing work. The kernel drops the lock when the process dies,
    so a crashed job never leaks its slot.
    """

    def __init__(self, slot_dir: Path, n: int, poll_s: float = 0.2):
        self.slot_dir, self.n, self.poll_s = Path(slot_dir), int(n), poll_s
        self._fh = None

    def __enter__(self) -> "_Slot":
        self.slot_dir.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.n):
                fh = open(self.slot_dir / f"{i}.lock", "a+")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.close()
                    continue
                self._fh = fh
                return self
            time.sleep(self.poll_s)

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


_THREAD_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_THREAD_SLOTS_LOCK = threading.Lock()


def _thread_slots(slot_dir: str, n: int) -> threading.BoundedSemaphore:
    """The ``n`` run slots of the debug jobs of one results folder, in this process.

    Debug jobs run in the driver, in whichever thread waits for them (one per trial in flight), so
    a semaphore shared by those threads caps them; a waiting job starts the moment a slot frees,
    where the local launcher's flock slots poll (0.2 s a wait, next to a toy stage's milliseconds).
    """
    with _THREAD_SLOTS_LOCK:
        return _THREAD_SLOTS.setdefault((slot_dir, int(n)), threading.BoundedSemaphore(int(n)))


class StageJob(Checkpointable):
    """Runs ``platform.stage.run_stage(stage, results, shard_index)`` in the job.

    ``slots``: ``(folder, n)`` to cap concurrent jobs at ``launcher.max_parallel_jobs``: flock slots
    machine-wide for local jobs (see :class:`_Slot`), or with ``in_process`` (debug jobs, run in the
    driver's threads) a semaphore of this process; None (SLURM caps its arrays itself).
    """

    def __init__(self, stage: Any, results: str | Path, shard_index: Optional[int] = None,
                 slots: Optional[tuple[str, int]] = None, in_process: bool = False):
        self.stage = stage
        # jobs may start in another folder than the driver: keep the results path absolute
        self.results = str(Path(results).resolve())
        self.shard_index = shard_index
        self.slots = slots
        self.in_process = in_process

    def _slot(self) -> Any:
        if self.slots is None:
            return nullcontext()
        if self.in_process:
            return _thread_slots(*self.slots)
        return _Slot(Path(self.slots[0]), self.slots[1])

    def __call__(self) -> dict[str, Any]:
        ensure_repo_platform()
        from platform.stage import run_stage  # after the swap above

        rank, _ = _task_rank()
        if rank != 0:
            return self._run_follower(rank)
        with self._slot():
            return run_stage(self.stage, self.results, self.shard_index)

    def _run_follower(self, rank: int) -> dict[str, Any]:
        """Ranks > 0 of a multi-task job run the stage function beside rank 0, outside run_stage:
        its folder lock would let one rank wait for the other inside init_process_group
        (deadlock), and only rank 0 may write the completion marker."""
        from platform.stage import MARKER, resolve, shard_dir

        results = Path(self.results)
        out = self.stage.out_dir(results)
        target = out if self.shard_index is None else shard_dir(out, self.shard_index, self.stage.num_shards)
        if (target / MARKER).exists():  # finished before this job started: rank 0 returns it too
            return json.loads((target / MARKER).read_text())
        target.mkdir(parents=True, exist_ok=True)
        if self.shard_index is not None:
            ctx, fn = self.stage.context(results, self.shard_index, out_dir=target), self.stage.fn
        else:
            merge = self.stage.num_shards > 1 and self.stage.merge_fn
            ctx, fn = self.stage.context(results), (self.stage.merge_fn if merge else self.stage.fn)
        return {"rank": rank, "summary": resolve(fn)(ctx) or {}}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        for hook in list(_CHECKPOINT_HOOKS):
            hook()
        self._log_requeue()
        return DelayedSubmission(StageJob(self.stage, self.results, self.shard_index, self.slots, self.in_process))

    def _log_requeue(self) -> None:
        # one line per interruption, beside the stage's outputs: the ingester and the tests see
        # that (and when) a stage was requeued rather than having silently restarted
        out = Path(self.stage.out_dir(Path(self.results)))
        out.mkdir(parents=True, exist_ok=True)
        row = {
            "time": time.time(),
            "shard_index": self.shard_index,
            "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_JOB_ID"),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        }
        with open(out / REQUEUE_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def __repr__(self) -> str:
        shard = "" if self.shard_index is None else f", shard={self.shard_index}"
        return f"StageJob({getattr(self.stage, 'display', self.stage)!r}{shard})"
