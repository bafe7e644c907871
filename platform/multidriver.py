"""Several sweep drivers on one study: heartbeats, stale trials, and asking without overshooting.

With an RDB storage (``sweep.storage=postgresql://...``) every driver records a heartbeat for each
of its trials in flight every ``sweep.heartbeat_interval`` seconds, from one thread. Optuna's own
heartbeat runs only inside ``Study.optimize``; the driver asks and tells, so it beats itself, the
first time as soon as a trial is asked. A RUNNING trial whose last heartbeat is
``sweep.grace_period`` seconds old (by the database's clock) belongs to a driver that died: a live
driver marks it FAIL with the user attribute ``interrupted`` and enqueues its params again, as a
restarted single driver does with the journal storage (``driver.recover_interrupted``). Only stale
trials are touched, never those of a live driver. The retry has the same run id, so it reuses the
run folder and every finished stage is a cache hit.

Asking is serialized across drivers by a lock file under the results folder
(``platform.locks``): under it a driver fails stale trials, counts the study's finished and
RUNNING trials (every driver's), asks only for what the study still lacks and draws the params,
so the next driver's sampler sees them and the study ends with exactly ``sweep.n_trials``
finished trials. A driver with nothing left to ask waits while other drivers' trials run: one of
them may die, and its trials must be retried by someone.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from typing import Any, Callable, Optional

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from platform.locks import named_lock
from platform.study import suggest


def heartbeat_of(study: optuna.Study) -> Optional[int]:
    """The storage's heartbeat interval in seconds; None when it has none (the journal file)."""
    storage = study._storage
    return storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None


def retry_stale(study: optuna.Study) -> int:
    """Fail the study's stale trials (their driver stopped beating) and enqueue each one's params
    again; how many this call retried. Drivers may race here: the row lock behind the state change
    lets one of them fail a trial, the others see it finished and leave it."""
    storage = study._storage
    if heartbeat_of(study) is None:
        return 0
    retried = 0
    for trial_id in storage._get_stale_trial_ids(study._study_id):  # BaseHeartbeat's, as fail_stale_trials uses
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another driver failed it first (and re-enqueued it)
        trial = storage.get_trial(trial_id)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        print(f"[sweep] trial {trial.number}: its driver stopped beating; marked FAIL and re-enqueued "
              "with its params", flush=True)
        retried += 1
    return retried


class SharedStudy:
    """One driver's side of a study that other drivers may run at the same time.

    ``finished``: the trials that count towards ``sweep.n_trials`` (the driver's rule).
    """

    def __init__(self, study: optuna.Study, results: Any, finished: Callable[[optuna.Study], list]):
        self.study, self.finished = study, finished
        self.heartbeat = heartbeat_of(study)
        self.lock = named_lock(results, f"studies/{study.study_name}")
        self._mine: set[int] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)

    @property
    def poll_s(self) -> Optional[float]:
        """How often a driver with nothing to ask looks again (for stale trials, for the end of the
        others' trials); None: no need to look."""
        return None if self.heartbeat is None else float(min(self.heartbeat, 5))

    def _beat(self, trial_ids: list[int]) -> None:
        for trial_id in trial_ids:
            try:
                self.study._storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a database hiccup: the next beat may pass
                print(f"[sweep] heartbeat of trial id {trial_id} failed: {exc}", file=sys.stderr, flush=True)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat or 1):
            with self._guard:
                mine = list(self._mine)
            self._beat(mine)

    def ask(self, slots: int, target: int, space: dict[str, Any]) -> list[tuple[optuna.Trial, dict[str, Any]]]:
        """Up to ``slots`` new trials with their params, as many as the study still lacks."""
        if slots <= 0:
            return []
        asked = []
        with self.lock, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            retry_stale(self.study)
            running = sum(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False))
            for _ in range(min(slots, target - len(self.finished(self.study)) - running)):
                trial = self.study.ask()
                if self.heartbeat is not None:
                    self._beat([trial._trial_id])  # before anything else: a trial never beating never goes stale
                    with self._guard:
                        self._mine.add(trial._trial_id)
                asked.append((trial, suggest(trial, space)))
        return asked

    def settled(self) -> bool:
        """Whether no trial of another driver runs (always, without heartbeats: one driver)."""
        if self.heartbeat is None:
            return True
        with self._guard:
            mine = set(self._mine)
        return not any(t.state == TrialState.RUNNING and t._trial_id not in mine
                       for t in self.study.get_trials(deepcopy=False))

    def wait(self) -> None:
        time.sleep(self.poll_s or 0)

    def run(self, trial: optuna.Trial, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` for ``trial``; its heartbeat stops when it returns."""
        try:
            return fn(*args)
        except UpdateFinishedTrialError:
            # this driver was alive but its heartbeat came later than grace_period: another driver
            # failed the trial and enqueued it again; the retry carries on (from the stage cache)
            print(f"[sweep] trial {trial.number} was taken for stale by another driver; its retry carries on",
                  file=sys.stderr, flush=True)
            return None
        finally:
            with self._guard:
                self._mine.discard(trial._trial_id)

    def start(self) -> "SharedStudy":
        if self.heartbeat is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
