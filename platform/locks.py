"""Locks that every driver sharing a results folder sees: one lock file per name under
``<results>/.locks/``, across threads, processes and machines.

A lock is a POSIX record lock (``fcntl.lockf``) on its file. That works between processes on one
machine and between machines on a shared filesystem with coherent locks: NFSv4 (locking is part of
the protocol), NFSv3 with lockd, Lustre mounted with ``flock``, GPFS, BeeGFS. The kernel drops a
lock when its process dies, ``kill -9`` included; when a whole machine dies, an NFSv4 server drops
its locks once the machine's lease expires (90 s by default), so a driver waits that long for a
dead node's stage. A filesystem without coherent locks (NFS mounted ``nolock``, some FUSE mounts)
makes every lock succeed at once: drivers then never wait, and a stage two drivers reach together
may be submitted twice (its jobs still serialize on the stage folder's own lock).

POSIX locks belong to a process, not to a thread or a file descriptor, and closing any descriptor
of the file drops them. So each lock also takes an in-process lock first, shared by every
``FileLock`` of the path: at most one thread of a process has the file open, and only while it
holds the lock; the same thread taking it again only counts. Waiting polls (at most a second
apart) rather than blocking in the kernel: a blocked NFS lock call depends on the server calling
back, a poll does not. docs/design.md "Several drivers" says where each lock is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

LOCK_DIR = ".locks"


class _PathState:
    """What every FileLock of one path in this process shares: the open file, while held."""

    def __init__(self) -> None:
        self.thread = threading.RLock()
        self.depth = 0  # how many times the holding thread took it (a writer inside a drain round)
        self.fh: Optional[TextIO] = None


_STATES: dict[str, _PathState] = {}
_GUARD = threading.Lock()


def _state(path: Path) -> _PathState:
    with _GUARD:
        return _STATES.setdefault(str(path), _PathState())


class FileLock:
    """An exclusive lock on ``path`` (created with its folder when missing); re-entrant per thread."""

    def __init__(self, path: Path, poll_s: float = 1.0):
        self.path = Path(path).absolute()
        self.poll_s = poll_s
        self._state = _state(self.path)

    def _try_file(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: another process holds it
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        fh.flush()
        self._state.fh = fh
        return True

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Take the lock; False when ``blocking`` is off (or ``timeout`` passed) and it is held."""
        state = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        if not (state.thread.acquire(timeout=-1 if timeout is None else timeout) if blocking
                else state.thread.acquire(False)):
            return False
        wait = 0.02
        while state.depth == 0 and not self._try_file():
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                state.thread.release()
                return False
            time.sleep(wait)
            wait = min(self.poll_s, wait * 2)
        state.depth += 1
        return True

    def release(self) -> None:
        state = self._state
        state.depth -= 1
        if state.depth == 0 and state.fh is not None:
            fh, state.fh = state.fh, None
            fcntl.lockf(fh, fcntl.LOCK_UN)
            fh.close()
        state.thread.release()

    def holder(self) -> str:
        """Who holds (or last held) the lock: ``host pid N``, as its holder wrote it."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    @contextlib.contextmanager
    def hold(self, on_wait: Optional[Callable[["FileLock"], None]] = None) -> Iterator["FileLock"]:
        """Hold the lock for the block; ``on_wait(lock)`` is called first if someone else holds it."""
        if not self.acquire(blocking=False):
            if on_wait is not None:
                on_wait(self)
            self.acquire()
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def named_lock(results: str | Path, name: str) -> FileLock:
    """The lock ``name`` (a relative path, e.g. ``stages/<key>``) of the results folder ``results``."""
    return FileLock(Path(results) / LOCK_DIR / f"{name}.lock")


def stage_lock(results: str | Path, key: str) -> FileLock:
    """Held by the driver that submits the stage with cache key ``key`` until its jobs end."""
    return named_lock(results, f"stages/{key}")
