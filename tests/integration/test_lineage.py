"""Lineage on a real small run: a metrics row leads to the config, commit and checkpoint folder that
produced it, and every E-step sample names the checkpoint that sampled it."""

import json
from pathlib import Path

import yaml

from platform.store import query_rows

q = query_rows

# The README's lineage query (section "DuckDB schema"), for every metrics row.
LINEAGE_SQL = """
select m.run_id, m.stage, m.iteration, m.name, m.step, m.value, r.config, r.git_commit, r.git_dirty,
       s.artifact_dir, s.model_key,
       regexp_replace(s.artifact_dir, 'artifacts/[^/]+/[^/]+$', '') || s.model_path as checkpoint, r.run_dir
from metrics m join runs r using (run_id) join stages s using (run_id, cache_key)
"""


def test_estep_samples_name_the_checkpoint_that_sampled_them(real_results):
    assert q(real_results, "select count(*) from estep_samples") != [(0,)]
    assert q(real_results, "select count(*) from estep_samples where model_path is null") == [(0,)]
    assert q(real_results, "select count(*) from estep_samples where model_key is null") == [(0,)]
    # the E-step of iteration t samples from the run's M-step of iteration t - 1 (the warm start at t = 1)
    rows = q(real_results, """
        select distinct e.model_key, e.model_path, m.cache_key, s.model_key
        from estep_samples e
        join stages m on m.run_id = e.run_id and m.stage = 'mstep' and m.iteration = e.iteration - 1
        join stages s on s.run_id = e.run_id and s.stage = 'estep' and s.iteration = e.iteration""")
    assert rows
    for model_key, model_path, mstep_key, stage_model_key in rows:
        assert model_key == mstep_key == stage_model_key
        assert model_path == f"artifacts/mstep/{mstep_key}/model"
        assert (Path(real_results) / model_path / "config.json").is_file()


def test_every_metrics_row_has_its_stage_and_eval_rows_their_checkpoint(real_results):
    assert q(real_results, """select count(*) from metrics m left join stages s using (run_id, cache_key)
                              where s.run_id is null""") == [(0,)]
    assert q(real_results, "select count(*) from stages where stage in ('estep', 'eval', 'mstep') "
                           "and status = 'completed' and (model_key is null or model_path is null)") == [(0,)]


def test_a_metrics_row_leads_to_its_config_commit_and_checkpoint_folder(real_results):
    rows = q(real_results, LINEAGE_SQL + " where m.stage = 'eval' and m.name = 'accuracy' order by m.run_id, m.iteration")
    assert rows
    for run_id, stage, it, name, step, value, config, commit, dirty, art, model_key, checkpoint, run_dir in rows:
        ckpt = Path(checkpoint)
        assert ckpt.is_dir() and (ckpt / "config.json").is_file(), checkpoint
        assert ckpt.parent.name == model_key and ckpt.parent.parent.name == "mstep"
        # the eval stage's own marker says which model it read
        marker = json.loads((Path(art) / "_COMPLETE.json").read_text())
        assert marker["inputs"]["model"] == {"stage": "mstep", "key": model_key}
        git = json.loads((Path(run_dir) / "git.json").read_text())
        assert commit == git["commit"] and commit and len(commit) == 40
        assert json.loads(config) == yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        # the value is the eval stage's own metric
        lines = [json.loads(x) for x in (Path(art) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert {"name": name, "step": step, "value": value} in lines
