"""Cache keys, completion markers and shard resumption."""

import json
from pathlib import Path

from platform.stage import MARKER, Stage, run_stage, shard_dir

FN = "tests.platform.toyapp.app:"


def _calls(results: Path) -> list[dict]:
    log = results / "calls.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_key_hashes_config_and_inputs():
    a = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    b = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    c = Stage("prepare", FN + "prepare", {"sleep_s": 1})
    assert a.key == b.key != c.key
    ta = Stage("mstep", FN + "train", {"x": 1}, {"prev": a})
    tc = Stage("mstep", FN + "train", {"x": 1}, {"prev": c})
    assert ta.key != tc.key, "a changed input must change the downstream key"
    assert len(a.key) == 16


def test_completed_stage_is_not_run_again(tmp_path):
    st = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    first = run_stage(st, tmp_path)
    second = run_stage(st, tmp_path)
    assert first == second
    assert len(_calls(tmp_path)) == 1
    assert (st.out_dir(tmp_path) / MARKER).exists() and (st.out_dir(tmp_path) / "data.json").exists()


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    st = Stage("mstep", FN + "train", {"sleep_s": 0, "fail_at": 0, "nan_at": None, "x": 0.5}, iteration=0)
    try:
        run_stage(st, tmp_path)
    except RuntimeError as exc:
        assert "toy failure" in str(exc)
    assert not st.is_complete(tmp_path)


def test_sharded_stage_resumes_only_missing_shards(tmp_path):
    st = Stage("estep", FN + "shard", {"sleep_s": 0}, num_shards=3, merge_fn=FN + "merge", iteration=1)
    run_stage(st, tmp_path, shard_index=0)
    run_stage(st, tmp_path, shard_index=2)
    run_stage(st, tmp_path, shard_index=0)  # already done: nothing runs
    assert [c["shard"] for c in _calls(tmp_path) if c["stage"] == "shard"] == [0, 2]
    run_stage(st, tmp_path, shard_index=1)
    run_stage(st, tmp_path)  # the merge
    assert (shard_dir(st.out_dir(tmp_path), 1, 3) / MARKER).exists()
    metrics = [json.loads(x) for x in (st.out_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [{"name": "parts", "step": 0, "value": 3}]
    assert st.is_complete(tmp_path)


def test_stages_of_an_earlier_key_scheme_are_reported_not_silently_missed(tmp_path, capsys):
    from platform.orchestrator import Orchestrator
    from platform.stage import KEY_SCHEME, earlier_scheme_stages

    st = Stage("prepare", FN + "prepare", {"sleep_s": 0})
    run_stage(st, tmp_path)
    assert earlier_scheme_stages(tmp_path) == []
    old = tmp_path / "artifacts" / "prepare" / "0123456789abcdef"  # as the previous version wrote it
    old.mkdir(parents=True)
    (old / MARKER).write_text(json.dumps({"stage": "prepare", "key": old.name, "summary": {}}))
    assert earlier_scheme_stages(tmp_path) == [old]
    Orchestrator({"name": "debug"}, tmp_path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "1 finished stage(s)" in out and f"(now {KEY_SCHEME})" in out
