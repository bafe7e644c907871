"""The sweep driver on a science-free toy app: concurrency, failures, pruning, resume, DuckDB."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platform.store import query_rows
from tests.platform.conftest import ROOT, TOY_ENV, run_cli


_q = query_rows


def _calls(results: Path) -> list[dict]:
    return [json.loads(x) for x in (results / "calls.log").read_text().splitlines()]


def test_sweep_records_trials_runs_and_metrics(tmp_path):
    res = tmp_path / "r"
    out = run_cli("platform.sweep", f"paths.results={res}", env=TOY_ENV, check=True)
    assert "4/4 finished" in out.stderr
    assert _q(res, "select count(*), count(distinct run_id) from trials where state='COMPLETE'") == [(4, 4)]
    assert _q(res, "select count(*) from iterations") == [(8,)]
    # shared prefix: `prepare` has the same key in every trial, so it ran once
    assert sum(c["stage"] == "prepare" for c in _calls(res)) == 1
    assert _q(res, "select count(*) from stages where stage='prepare' and cached") == [(3,)]
    # the app's summary metric, its last step per iteration (toy loss 1/(1 + step + it), steps 0-2)
    assert "mstep loss by iteration:" in out.stdout and "[0] 0.333  [1] 0.250" in out.stdout
    run_dir = Path(_q(res, "select run_dir from runs limit 1")[0][0])
    for name in ("run.json", "config.yaml", "overrides.yaml", "git.json", "stages.jsonl"):
        assert (run_dir / name).exists(), name


def test_rerun_of_a_finished_sweep_adds_nothing_and_recomputes_nothing(tmp_path):
    res = tmp_path / "r"
    run_cli("platform.sweep", f"paths.results={res}", env=TOY_ENV, check=True)
    before = len(_calls(res))
    counts = _q(res, "select (select count(*) from trials), (select count(*) from metrics), (select count(*) from stages)")
    run_cli("platform.sweep", f"paths.results={res}", env=TOY_ENV, check=True)
    assert len(_calls(res)) == before
    assert _q(res, "select (select count(*) from trials), (select count(*) from metrics), (select count(*) from stages)") == counts


def test_failing_and_nan_trials_are_fail_with_their_error_and_the_sweep_goes_on(tmp_path):
    res = tmp_path / "r"
    out = run_cli("platform.sweep", f"paths.results={res}", "work.fail_at=1", "sweep.n_trials=2", env=TOY_ENV)
    assert out.returncode == 0, out.stderr
    rows = _q(res, "select state, error from trials order by number")
    assert [r[0] for r in rows] == ["FAIL", "FAIL"]
    assert all("toy failure at iteration 1" in r[1] for r in rows)
    assert _q(res, "select distinct status from runs") == [("failed",)]
    # iteration 0 finished before the failure and its metrics are kept
    assert _q(res, "select count(*) from iterations where iteration = 0") == [(2,)]
    out = run_cli("platform.sweep", f"paths.results={tmp_path}/n", "work.nan_at=0", "sweep.n_trials=1", env=TOY_ENV)
    assert "NaN" in _q(tmp_path / "n", "select error from trials")[0][0]


def _pruned_grid_states(res: Path, xs: list[float], iterations: int) -> list[str]:
    """Trial states of a one-at-a-time grid sweep over ``work.x`` with the median pruner."""
    args = [f"paths.results={res}", "sweep.pruner=median", f"sweep.n_trials={len(xs)}", "sweep.parallel=1",
            f"work.iterations={iterations}", "sweep.sampler=grid",
            f"sweep.search_space={{work.x: {{type: categorical, choices: {xs}}}}}"]
    out = run_cli("platform.sweep", *args, env=TOY_ENV)
    assert out.returncode == 0, out.stderr
    return [r[0] for r in _q(res, "select state from trials order by number")]


def test_median_pruner_prunes_and_records_pruned(tmp_path):
    res = tmp_path / "r"
    states = _pruned_grid_states(res, [0.3, 0.35, 0.9, 0.95, 1.0, 0.99], iterations=3)
    assert states[:2] == ["COMPLETE", "COMPLETE"] and "PRUNED" in states, states
    assert ("pruned",) in _q(res, "select distinct status from runs")


def test_kill_9_mid_trial_then_rerun_recomputes_nothing_and_duplicates_no_row(tmp_path):
    res = tmp_path / "r"
    args = [f"paths.results={res}", "work.sleep_s=0.4", "sweep.n_trials=2", "sweep.parallel=2"]
    env = {**os.environ, **TOY_ENV, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "platform.sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until some training stage has finished, mid-trial
        calls = _calls(res) if (res / "calls.log").exists() else []
        if sum(c["stage"] == "score" for c in calls) >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    completed = {m.parent.name: m.stat().st_mtime for m in res.glob("artifacts/*/*/_COMPLETE.json")}
    assert completed, "the driver was killed before any stage finished"
    out = run_cli("platform.sweep", *args, env=TOY_ENV, check=True)
    assert "interrupted by an earlier driver" in out.stdout + out.stderr
    for key, mtime in completed.items():  # no finished stage ran again
        marker = next(res.glob(f"artifacts/*/{key}/_COMPLETE.json"))
        assert marker.stat().st_mtime == mtime
    ran = [c["key"] for c in _calls(res)]
    twice = {k for k in ran if ran.count(k) > 1}
    assert not twice & set(completed), "a finished stage ran again"  # only the interrupted one may rerun
    # no duplicated rows: every (run, stage, iteration) once, every metric once
    assert _q(res, "select count(*) from (select run_id, cache_key, count(*) n from stages group by all having n > 1)") == [(0,)]
    assert _q(res, "select count(*) from (select run_id, stage, iteration, name, step, count(*) n from metrics group by all having n > 1)") == [(0,)]
    assert _q(res, "select count(*) from trials where state = 'COMPLETE'") == [(2,)]
    assert _q(res, "select count(*) from runs where status = 'completed'") == [(2,)]


def test_a_trial_is_never_pruned_at_its_last_evaluation(tmp_path):
    assert _pruned_grid_states(tmp_path / "r", [0.3, 0.9, 0.95, 1.0], iterations=1) == ["COMPLETE"] * 4


def test_replicate_seeds_give_each_trial_a_mean_and_a_standard_error(tmp_path):
    import math

    import optuna

    res = tmp_path / "r"
    run_cli("platform.sweep", f"paths.results={res}", "sweep.seeds=[0,1,2]", "sweep.n_trials=2", env=TOY_ENV, check=True)
    rows = _q(res, "select number, \"values\"[1], values_se[1], seeds, len(run_ids), params from trials order by number")
    assert len(rows) == 2
    for number, value, se, seeds, n_runs, params in rows:
        x = json.loads(params)["work.x"]
        per_seed = [1 - (x - 0.3) ** 2 + 0.01 + 0.001 * s for s in (0, 1, 2)]  # the toy's score at iteration 1
        assert value == pytest.approx(sum(per_seed) / 3)
        assert se == pytest.approx(0.001 / math.sqrt(3))  # std of (0, .001, .002) / sqrt(3)
        assert seeds == [0, 1, 2] and n_runs == 3
    assert _q(res, "select count(*), count(distinct run_id) from runs") == [(6, 6)]
    # the seeds share what does not involve the seed: `prepare` ran once for all six runs
    assert sum(c["stage"] == "prepare" for c in _calls(res)) == 1
    study = optuna.load_study(study_name="toy", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(res / "optuna" / "toy.journal"))))
    t = study.trials[0]
    assert t.user_attrs["accuracy_se"] == pytest.approx(0.001 / math.sqrt(3))
    assert sorted(t.user_attrs["accuracy_per_seed"]) == ["0", "1", "2"]


def test_pruning_sees_the_mean_over_seeds(tmp_path):
    import optuna

    res = tmp_path / "r"
    run_cli("platform.sweep", f"paths.results={res}", "sweep.seeds=[0,3]", "sweep.n_trials=3", "sweep.pruner=median",
            "sweep.parallel=1", env=TOY_ENV, check=True)
    study = optuna.load_study(study_name="toy", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(res / "optuna" / "toy.journal"))))
    for t in study.trials:
        base = 1 - (t.params["work.x"] - 0.3) ** 2
        assert t.intermediate_values[0] == pytest.approx(base + 0.0015)  # mean of seeds 0 and 3 at iteration 0


def test_seed_in_the_search_space_and_replicate_seeds_conflict(tmp_path):
    out = run_cli("platform.sweep", f"paths.results={tmp_path}/r", "sweep.seeds=[0,1]",
                  "+sweep.search_space.seed={type: categorical, choices: [0, 1]}", env=TOY_ENV)
    assert out.returncode == 2 and "sweep.seeds" in out.stderr and "search_space.seed" in out.stderr


def test_a_flops_budget_stops_starting_trials_at_the_cap_and_records_the_spend(tmp_path):
    res = tmp_path / "r"
    # a toy trial computes 2 x 600 (train) + 2 x 1 (score) FLOPs, and the shared prepare 1 once
    out = run_cli("platform.sweep", f"paths.results={res}", "sweep.budget.flops=1500", "sweep.parallel=1",
                  "sweep.n_trials=4", env=TOY_ENV, check=True)
    assert "budget reached: sweep.budget.flops: spent" in out.stdout and "FLOPs of 1.5e+03" in out.stdout
    # the second trial, started under the cap, finishes; its spend is counted; no third starts
    assert "[sweep] spent 2.4e+03 FLOPs" in out.stdout
    assert _q(res, "select count(*), count(*) filter (where state = 'COMPLETE') from trials") == [(2, 2)]
    ((spend, why),) = _q(res, "select spend_flops, stopped_by_budget from studies")
    assert spend == 2405.0 and why.startswith("sweep.budget.flops: spent")


def test_on_cap_stop_stops_running_trials_and_counts_their_spend(tmp_path):
    res = tmp_path / "r"
    out = run_cli("platform.sweep", f"paths.results={res}", "sweep.budget.flops=700", "sweep.budget.on_cap=stop",
                  "sweep.parallel=2", "sweep.n_trials=4", "work.sleep_s=0.6", "work.iterations=3", env=TOY_ENV, check=True)
    assert "budget reached" in out.stdout and "stopping 2 running" in out.stdout
    states = _q(res, "select state, error from trials order by number")
    assert len(states) == 2 and all(s == "FAIL" and "SweepStopped" in e and "budget" in e for s, e in states)
    spend = _q(res, "select spend_flops from studies")[0][0]
    assert spend >= 1201  # both first M-steps and the prepare stage, though the trials were stopped


def _toy_run(res: Path, *args: str) -> dict:
    out = run_cli("platform.run", f"paths.results={res}", *args, env=TOY_ENV, check=True)
    return json.loads(out.stdout[out.stdout.index("{"):])


def test_from_run_reproduces_a_run_as_a_cache_hit_and_force_recomputes_only_what_follows(tmp_path):
    res = tmp_path / "r"
    first = _toy_run(res, "work.x=0.4")
    calls = len(_calls(res))
    again = _toy_run(res, f"from_run={first['run_id']}")
    assert again["run_id"] == first["run_id"] and again["accuracy"] == first["accuracy"]
    assert len(_calls(res)) == calls  # a full cache hit
    ledger = [json.loads(x) for x in (res / "runs" / first["run_id"] / "stages.jsonl").read_text().splitlines()]
    done = [e for e in ledger if e["status"] == "completed"]
    assert len(done) == 10 and all(e["cached"] for e in done[5:]) and not any(e["cached"] for e in done[:5])

    old_eval = sorted(p.name for p in (res / "artifacts" / "eval").iterdir())
    forced = _toy_run(res, f"from_run={first['run_id']}", "force=eval")
    assert forced["run_id"] != first["run_id"] and forced["rerun_of"] == first["run_id"]
    assert forced["accuracy"] == first["accuracy"]
    new_calls = [c["stage"] for c in _calls(res)[calls:]]
    assert new_calls == ["score", "score"]  # the two evals, nothing before them
    now_eval = sorted(p.name for p in (res / "artifacts" / "eval").iterdir())
    assert set(old_eval) < set(now_eval)  # new folders beside the old ones, which are untouched
    meta = json.loads((res / "runs" / forced["run_id"] / "run.json").read_text())
    assert meta["rerun_of"] == first["run_id"] and meta["forced"] == ["eval"]


def test_from_run_names_what_is_wrong(tmp_path):
    out = run_cli("platform.run", f"paths.results={tmp_path}", "from_run=nope", env=TOY_ENV)
    assert out.returncode == 2 and "from_run: 'nope' is not a run folder" in out.stderr
    res = tmp_path / "r"
    first = _toy_run(res)
    out = run_cli("platform.run", f"paths.results={res}", f"from_run={first['run_id']}", "force=teacher", env=TOY_ENV)
    assert out.returncode == 2 and "force: teacher names no stage of this run" in out.stderr
