"""The orchestrator on the toy stages with the debug launcher: compute totals from the app's buckets."""

from platform.orchestrator import Orchestrator
from platform.plan import Plan, toposort
from platform.rundir import RunDir
from platform.stage import Stage

FN = "tests.platform.toyapp.app:"
BUCKETS = {"mstep": "train_flops", "eval": "eval_flops"}


def _stages(x: float, name: str = "mstep") -> tuple[Stage, Stage, Stage]:
    prep = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    train = Stage(name, FN + "train", {"sleep_s": 0, "fail_at": None, "nan_at": None, "x": x}, {"prev": prep},
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


def test_totals_go_into_the_buckets_the_app_names(tmp_path):
    _, _, ev = _stages(0.5)
    metrics = _orch(tmp_path).execute(_plan(ev), _run(tmp_path))
    assert (metrics["train_flops"], metrics["eval_flops"], metrics["total_flops"]) == (600.0, 1.0, 600.0)
    assert "estep_flops" not in metrics and metrics["accuracy"] > 0
    bare = Orchestrator({"name": "debug"}, tmp_path).execute(_plan(ev), _run(tmp_path, "bare"))
    assert bare["total_flops"] == 0.0 and "train_flops" not in bare
