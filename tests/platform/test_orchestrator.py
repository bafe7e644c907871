"""The orchestrator on the toy stages with the debug launcher: compute totals from the app's buckets,
and a stage whose cache key changed since its run last completed it is said aloud."""

import shutil

from platform.orchestrator import Orchestrator
from platform.plan import Plan, toposort
from platform.rundir import RunDir
from platform.stage import Stage

FN = "tests.platform.toyapp.app:"
BUCKETS = {"mstep": "train_flops", "eval": "eval_flops"}


def _stages(x: float) -> tuple[Stage, Stage, Stage]:
    prep = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    train = Stage("mstep", FN + "train", {"sleep_s": 0, "fail_at": None, "nan_at": None, "x": x}, {"prev": prep},
                  iteration=0)
    ev = Stage("eval", FN + "score", {"x": x}, {"model": train}, iteration=0)
    return prep, train, ev


def _plan(*evals: Stage) -> Plan:
    return Plan("toy", toposort(list(evals)), list(evals))


def _run(results, run_id="toy-run") -> RunDir:
    run = RunDir(results, run_id)
    run.create(config={}, overrides=[], meta={"run_id": run_id}, git={})
    return run


def _orch(results) -> Orchestrator:
    return Orchestrator({"name": "debug"}, results, compute_buckets=BUCKETS, total_buckets=("train_flops",))


def _changed(out: str) -> list[str]:
    return [line for line in out.splitlines() if "cache key changed" in line]


def test_totals_go_into_the_buckets_the_app_names(tmp_path):
    _, _, ev = _stages(0.5)
    metrics = _orch(tmp_path).execute(_plan(ev), _run(tmp_path))
    assert (metrics["train_flops"], metrics["eval_flops"], metrics["total_flops"]) == (600.0, 1.0, 600.0)
    assert "estep_flops" not in metrics and metrics["accuracy"] > 0
    bare = Orchestrator({"name": "debug"}, tmp_path).execute(_plan(ev), _run(tmp_path, "bare"))
    assert bare["total_flops"] == 0.0 and "train_flops" not in bare


def test_a_stage_whose_key_changed_since_the_run_completed_it_says_so(tmp_path, capsys):
    orch, run = _orch(tmp_path), _run(tmp_path)
    _, old_train, old_ev = _stages(0.5)
    orch.execute(_plan(old_ev), run)
    assert _changed(capsys.readouterr().out) == []

    _, new_train, new_ev = _stages(0.7)  # same stages, another config: prepare keeps its key
    orch.execute(_plan(new_ev), run)
    assert _changed(capsys.readouterr().out) == [
        f"[orchestrator] toy-run: mstep[0]: its cache key changed since this run last completed it "
        f"(was {old_train.key}, now {new_train.key}); recomputing",
        f"[orchestrator] toy-run: eval[0]: its cache key changed since this run last completed it "
        f"(was {old_ev.key}, now {new_ev.key}); recomputing",
    ]

    orch.execute(_plan(new_ev), run)  # all cached now
    assert _changed(capsys.readouterr().out) == []
    shutil.rmtree(new_train.out_dir(tmp_path))  # the output is gone, the key is the one last completed
    orch.execute(_plan(new_ev), run)
    assert _changed(capsys.readouterr().out) == []


def test_two_stages_of_one_name_and_iteration_in_a_plan_are_no_key_change(tmp_path, capsys):
    """A raw baseline's plan holds its own M-step and the one it matches, both mstep[0]: a run that
    completed only the matched one before it stopped has changed no key when it computes the other."""
    orch, run = _orch(tmp_path), _run(tmp_path)
    _, _, ev_a = _stages(0.5)
    _, _, ev_b = _stages(0.7)
    orch.execute(_plan(ev_a), run)
    orch.execute(_plan(ev_a, ev_b), run)
    assert _changed(capsys.readouterr().out) == []
