"""Shared command-line plumbing: compose + validate, print the config, turn errors into exit codes."""

from __future__ import annotations

import signal
import sys
from typing import Callable, Optional, Sequence

from omegaconf import OmegaConf

from platform.app import load_app
from platform.compose import Composed, compose_config
from platform.orchestrator import StageFailed
from platform.validate import ConfigError


def load(argv: Optional[Sequence[str]]) -> Composed:
    app = load_app()
    return compose_config(list(sys.argv[1:] if argv is None else argv), rules=app.rules)


def restore_default_sigint() -> None:
    """Started in the background (nohup, `&`, some CI runners), a process has SIGINT ignored and its
    children inherit that; submitit cancels local jobs with SIGINT, so give the default back. Call it
    from the main thread of a process that will start local jobs."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main_guard(fn: Callable[[Composed], int | None], argv: Optional[Sequence[str]] = None) -> int:
    restore_default_sigint()
    try:
        composed = load(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if composed.print_cfg:
        print(OmegaConf.to_yaml(composed.raw))
        return 0
    return guarded(lambda: fn(composed))


def guarded(call: Callable[[], int | None]) -> int:
    """Run an entry point's work: bad input and a stage's known error end in one ``error:`` line, exit 2."""
    try:
        return call() or 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        if exc.known is None:
            raise  # not an error a stage raises on purpose: a bug, keep its traceback
        # one line; the traceback is in the job's log and in runs/<id>/run.json
        print(f"error: {exc}", file=sys.stderr)
        return 2
