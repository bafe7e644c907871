"""A live one-line view of a sweep: trials done/running/failed/pruned and each run's current stage."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

from optuna.trial import TrialState


class LiveView:
    def __init__(self, study: Any, progress: Any, target: int, interval_s: float, finished: Callable):
        self.study, self.progress, self.target, self.interval_s = study, progress, target, interval_s
        self.finished = finished
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last = ""

    def line(self) -> str:
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s and not t.user_attrs.get("interrupted") for t in trials) for s in TrialState}
        with self.progress.lock:
            current = " | ".join(f"{rid}: {stage}" for rid, stage in sorted(self.progress.current.items()))
        return (f"[sweep {self.study.study_name}] {len(self.finished(self.study))}/{self.target} finished "
                f"({count[TrialState.COMPLETE]} complete, {count[TrialState.FAIL]} failed, "
                f"{count[TrialState.PRUNED]} pruned), {count[TrialState.RUNNING]} running"
                + (f" :: {current}" if current else ""))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.emit()

    def emit(self) -> None:
        line = self.line()
        if line != self._last:
            print(line, file=sys.stderr, flush=True)
            self._last = line

    def start(self) -> None:
        self.emit()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.emit()
