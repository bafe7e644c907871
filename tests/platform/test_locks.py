"""Lock files shared by drivers (platform/locks.py) and the ingest queue (platform/ingest_queue.py)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from platform.ingest import drain
from platform.ingest_queue import claim, pending, queue_dir, request_run, request_study
from platform.locks import named_lock
from platform.store import query_rows
from tests.platform.conftest import ROOT

HOLD = """
import sys, time
sys.path.insert(0, '.')
import platform
from platform.locks import named_lock
lock = named_lock(sys.argv[1], 'x')
lock.acquire()
print('held', flush=True)
time.sleep(60)
"""


def test_a_lock_held_by_another_process_waits_until_that_process_dies(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        lock = named_lock(tmp_path, "x")
        assert not lock.acquire(blocking=False)
        assert f"pid {proc.pid}" in lock.holder()
        os.kill(proc.pid, signal.SIGKILL)  # the kernel drops a dead process's locks
        proc.wait()
        assert lock.acquire(timeout=10)
        assert f"pid {os.getpid()}" in lock.holder()
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_lock_excludes_other_threads_and_is_reentrant_in_its_own(tmp_path):
    lock, seen = named_lock(tmp_path, "y"), []
    with lock:
        with named_lock(tmp_path, "y"):  # the same thread again: only counts
            pass
        other = threading.Thread(target=lambda: seen.append(named_lock(tmp_path, "y").acquire(blocking=False)))
        other.start()
        other.join()
        waited = []
        with named_lock(tmp_path, "y").hold(on_wait=lambda lk: waited.append(lk.holder())):
            pass  # the holder itself never waits
    assert seen == [False] and waited == []
    assert named_lock(tmp_path, "y").acquire(blocking=False)  # released by the outer block


def _run_folder(res, run_id):
    run = res / "runs" / run_id
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "kind": "toy", "status": "completed"}))
    (run / "stages.jsonl").write_text("")


def test_the_queue_coalesces_requests_and_a_drain_is_idempotent(tmp_path):
    for run_id in ("a", "b"):
        _run_folder(tmp_path, run_id)
    request_run(tmp_path, "a")
    request_run(tmp_path, "a")
    request_run(tmp_path, "b")
    assert pending(tmp_path) == 2
    assert drain(tmp_path) == 2 and pending(tmp_path) == 0
    request_run(tmp_path, "a")
    assert drain(tmp_path) == 1
    assert query_rows(tmp_path, "select run_id, count(*) from runs group by all order by 1") == [("a", 1), ("b", 1)]


def test_requests_a_dead_ingester_claimed_and_ones_that_fail_stay_queued(tmp_path):
    _run_folder(tmp_path, "a")
    request_run(tmp_path, "a")
    [left] = claim(tmp_path)  # an ingester that died here, before its transaction
    assert left.path.name == "run.a.claimed"
    request_study(tmp_path, "s", "toy", str(tmp_path / "no-such.journal"))  # a study nobody can open
    assert drain(tmp_path) == 1
    assert [p.name for p in queue_dir(tmp_path).iterdir()] == ["study.s.json"]
    assert query_rows(tmp_path, "select run_id from runs") == [("a",)]


def test_a_drain_does_not_wait_for_another_ingester_unless_asked(tmp_path):
    request_run(tmp_path, "a")
    holder = threading.Thread(target=lambda: _hold(tmp_path, 0.5))
    holder.start()
    time.sleep(0.1)
    assert drain(tmp_path, block=False) is None and pending(tmp_path) == 1
    assert drain(tmp_path, block=True) == 1  # run a has no folder: nothing to load, request done
    holder.join()


def _hold(results, seconds):
    from platform.store import writer_lock

    with writer_lock(results):
        time.sleep(seconds)
