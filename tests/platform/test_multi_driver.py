"""Three sweep drivers on one study in a real PostgreSQL, one of them killed with kill -9 midway.

Needs a server: `scripts/postgres/start.sh` starts a throwaway one and prints its URL, which
$PLATFORM_TEST_POSTGRES passes here (.ci/run does both). Without it the test skips with the reason.
Select it with `-m postgres`. Each test gets a database of its own, dropped at the end.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from platform.store import query_rows
from tests.platform.conftest import ROOT, TOY_ENV

URL = os.environ.get("PLATFORM_TEST_POSTGRES", "")


def _skip_reason() -> str | None:
    if not URL:
        return "PLATFORM_TEST_POSTGRES is not set (start a server with scripts/postgres/start.sh)"
    try:
        import psycopg
    except ImportError as exc:
        return f"no PostgreSQL driver: {exc}"
    try:
        psycopg.connect(URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {URL} does not answer: {' '.join(str(exc).split())} (scripts/postgres/start.sh)"
    return None


_SKIP = _skip_reason()
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

# 6 points, 6 trials: trials of one x share their first iterations' stages (sharded E-step
# included), so drivers meet on the same stage keys; 1 s heartbeats, stale after 3 s
SPACE = "{work.x: {type: categorical, choices: [0.2, 0.6]}, work.iterations: {type: categorical, choices: [1, 2, 3]}}"
N_TRIALS = 6


@pytest.fixture
def database():
    """A fresh database on the server; its URL. Dropped afterwards."""
    import psycopg

    name = f"multi_driver_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _start(res: Path, url: str, i: int) -> subprocess.Popen:
    args = [f"paths.results={res}", f"sweep.storage={url}", f"sweep.n_trials={N_TRIALS}", "sweep.parallel=1",
            "sweep.heartbeat_interval=1", "sweep.grace_period=3", "sweep.sampler=random",
            f"sweep.search_space={SPACE}", "work.shards=2", "work.sleep_s=0.25", "sweep.live_interval_s=0.2"]
    env = {**os.environ, **TOY_ENV, "PYTHONUNBUFFERED": "1"}
    log = open(res.parent / f"driver{i}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "platform.sweep", *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _kill_midway(victim: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """kill -9 once the victim's live line shows it inside a trial, past its first stages."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        live = [x for x in _lines(log) if x.startswith("[sweep ") and " :: " in x]
        if live and any(s in live[-1] for s in ("mstep", "eval")):
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            return
        assert victim.poll() is None, "the victim ended before it ran a trial:\n" + log.read_text()
        time.sleep(0.05)
    raise AssertionError("the victim never got into a trial:\n" + log.read_text())


def _ran_once_or_resumed(ids_before: list, ids_after: list, finished_at_kill: set) -> None:
    """Each id (a stage, or a stage's shard) ran once; twice only when the kill cut its first run
    short (it had no marker then) and a survivor ran it again."""
    before, after = Counter(ids_before), Counter(ids_after)
    assert max(before.values(), default=1) == 1 and max(after.values(), default=1) == 1, (before, after)
    again = set(before) & set(after)
    assert not again & finished_at_kill, f"finished stages computed again: {again & finished_at_kill}"


def _ledgers(res: Path) -> list[dict]:
    return [json.loads(x) for p in res.glob("runs/*/stages.jsonl") for x in _lines(p)]


def _finished_now(res: Path) -> tuple[set, set]:
    """The stage keys with a completion marker, and the (key, shard) of every finished shard."""
    stages = {m.parent.name for m in res.glob("artifacts/*/*/_COMPLETE.json")}
    shards = {(m.parents[2].name, int(m.parent.name[:5])) for m in res.glob("artifacts/*/*/shards/*/_COMPLETE.json")}
    return stages, shards


def _check_no_stage_twice(res: Path, calls_at_kill: int, kill_t: float, at_kill: tuple[set, set]) -> None:
    stages, shards = at_kill
    calls = [json.loads(x) for x in _lines(res / "calls.log")]
    ids = [(c["key"], c["shard"] if c["stage"] == "shard" else None) for c in calls]
    _ran_once_or_resumed(ids[:calls_at_kill], ids[calls_at_kill:], {(k, None) for k in stages} | shards)
    subs = sorted((e for e in _ledgers(res) if e["status"] == "submitted"), key=lambda e: e["t"])
    _ran_once_or_resumed([(e["key"], e["part"]) for e in subs if e["t"] < kill_t],
                         [(e["key"], e["part"]) for e in subs if e["t"] >= kill_t],
                         {(k, part) for k in stages for part in ("main", "shards")})
    # one computed completion per stage in all the runs' ledgers: every other driver found it cached
    computed = Counter(e["key"] for e in _ledgers(res) if e["status"] == "completed" and not e["cached"])
    assert computed and max(computed.values()) == 1, computed
    markers, _ = _finished_now(res)
    assert markers == set(computed) == {c["key"] for c in calls if c["stage"] != "shard"}


def _check_store(res: Path, study: str) -> None:
    dup = "select count(*) from (select {cols}, count(*) n from {table} group by all having n > 1)"
    for table, cols in (("runs", "run_id"), ("stages", "run_id, cache_key"), ("trials", "study, number"),
                        ("metrics", "run_id, stage, iteration, name, step"), ("shards", "run_id, cache_key, shard")):
        assert query_rows(res, dup.format(cols=cols, table=table)) == [(0,)], table
    assert query_rows(res, "select count(*) from trials where state = 'COMPLETE'") == [(N_TRIALS,)]
    assert query_rows(res, "select count(*) from runs where status = 'completed'") == [(N_TRIALS,)]
    assert query_rows(res, "select n_trials from studies where study = ?", [study]) == \
        query_rows(res, "select count(*) from trials")
    assert not list((res / "ingest_queue").iterdir()), "requests left in the ingest queue"


def test_three_drivers_one_killed_finish_the_study_once(tmp_path, database):
    import optuna

    res = tmp_path / "r"
    res.mkdir()
    drivers = [_start(res, database, i) for i in range(3)]
    try:
        _kill_midway(drivers[0], tmp_path / "driver0.log")
        kill_t = time.time()
        calls_at_kill = len(_lines(res / "calls.log"))
        at_kill = _finished_now(res)
        for i, proc in enumerate(drivers[1:], 1):
            assert proc.wait(timeout=240) == 0, (tmp_path / f"driver{i}.log").read_text()
    finally:
        for proc in drivers:
            if proc.poll() is None:
                proc.kill()
    trials = optuna.load_study(study_name="toy", storage=database).get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == N_TRIALS
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert interrupted, "the killed driver left no trial to retry"
    for t in interrupted:
        [retry] = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert retry.state.name == "COMPLETE" and retry.params == t.params
        assert retry.user_attrs["run_id"] == t.user_attrs["run_id"]  # same run folder, cache reused
    assert len({json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"}) == N_TRIALS
    _check_no_stage_twice(res, calls_at_kill, kill_t, at_kill)
    _check_store(res, "toy")
