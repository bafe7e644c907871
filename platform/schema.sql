-- The results store. One ingester (platform.ingest) owns writes; everything else opens read-only.
CREATE TABLE IF NOT EXISTS studies (
    study VARCHAR PRIMARY KEY, experiment VARCHAR, directions VARCHAR[], storage VARCHAR,
    created_at TIMESTAMP, n_trials INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    study VARCHAR, number INTEGER, state VARCHAR, params JSON, "values" DOUBLE[],
    run_id VARCHAR, error VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP,
    PRIMARY KEY (study, number)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, experiment VARCHAR, kind VARCHAR, study VARCHAR, trial INTEGER,
    seed INTEGER, params JSON, config JSON, git_commit VARCHAR, git_dirty BOOLEAN, status VARCHAR,
    error VARCHAR, run_dir VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, job_id VARCHAR,
    status VARCHAR, cached BOOLEAN, started_at TIMESTAMP, ended_at TIMESTAMP, wall_s DOUBLE,
    tokens_in BIGINT, tokens_out BIGINT, flops DOUBLE, gpu_hours DOUBLE, artifact_dir VARCHAR
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, iteration INTEGER, stage VARCHAR, name VARCHAR, step BIGINT, value DOUBLE
);
-- E-step samples stay in the Parquet files the E-step wrote: `estep_files` lists them, one row per
-- (run, file), and `estep_samples` is a view over them that platform/samples.py defines from this
-- list on every write (a store whose estep_samples is still a table of copied rows is upgraded then).
CREATE TABLE IF NOT EXISTS estep_files (
    run_id VARCHAR, iteration INTEGER, stage VARCHAR, cache_key VARCHAR,
    model_path VARCHAR, model_key VARCHAR,  -- the sampling checkpoint, as in stages
    path VARCHAR,  -- relative to the results folder (absolute when outside it)
    shard INTEGER,  -- NULL for the stage's merged file
    num_rows BIGINT, bytes BIGINT, mtime BIGINT,  -- mtime in ns: an unchanged file is not read again
    columns VARCHAR,  -- the file's sample columns and their Parquet (Arrow) types: name:type,...
    registered_at TIMESTAMP,
    part INTEGER, file_index UBIGINT  -- its read_parquet in the view and its place in that list
);
-- Rows an earlier version copied into its estep_samples table whose Parquet file was gone when the
-- store was upgraded: kept here, and read by the view. The columns are the view's: chunk_text is the
-- chunk X the thought explains, finished whether the thought ended with EoL (not cut), annotated
-- whether the corpus gives the chunk reasoning (embedded: answers), thought_correct whether the
-- thought is exactly that reasoning (NULL where the corpus has none to compare with).
CREATE TABLE IF NOT EXISTS estep_samples_legacy (
    run_id VARCHAR, iteration INTEGER, doc_id VARCHAR, chunk_id INTEGER, sample_idx INTEGER,
    thought VARCHAR, thought_tokens INTEGER, log_p_joint DOUBLE, log_q DOUBLE, log_w DOUBLE,
    selected BOOLEAN, model_path VARCHAR, chunk_text VARCHAR, finished BOOLEAN, annotated BOOLEAN,
    thought_correct BOOLEAN, model_key VARCHAR
);
-- Lineage: the checkpoint behind a stage's numbers. For a stage that reads a model (estep, eval: its
-- input `model`) that model; for one that writes a model/ folder (init_model, mstep) its own. model_key
-- is that model stage's cache key, model_path its checkpoint folder relative to the results folder
-- (artifacts/mstep/<key>/model). NULL for stages without a model and for markers written before this.
ALTER TABLE stages ADD COLUMN IF NOT EXISTS model_key VARCHAR;
ALTER TABLE stages ADD COLUMN IF NOT EXISTS model_path VARCHAR;
-- The stage (cache key) that wrote the metric: joins a metrics row to its stages row exactly.
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS cache_key VARCHAR;
-- The objectives' metric names (accuracy, estep_flops), in the order of directions and trials.values.
ALTER TABLE studies ADD COLUMN IF NOT EXISTS metric_names VARCHAR[];
-- A trial whose params repeat an earlier trial's: that trial's number (same run id, same run folder);
-- cache_hit: every stage of the trial was a cache hit (it computed nothing).
ALTER TABLE trials ADD COLUMN IF NOT EXISTS duplicate_of INTEGER;
ALTER TABLE trials ADD COLUMN IF NOT EXISTS cache_hit BOOLEAN;
-- One row per shard of a sharded stage (E-step): the stages row is the merge, with the shards' compute summed.
CREATE TABLE IF NOT EXISTS shards (
    run_id VARCHAR, stage VARCHAR, iteration INTEGER, cache_key VARCHAR, shard INTEGER, job_id VARCHAR,
    host VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, wall_s DOUBLE, tokens_in BIGINT, tokens_out BIGINT,
    flops DOUBLE
);
-- The shards of a stage the run got from the cache: not compute this run spent (as stages.cached).
ALTER TABLE shards ADD COLUMN IF NOT EXISTS cached BOOLEAN;
-- The E-step's sample store: tokens_in / tokens_out / flops stay what the result costs drawn from
-- scratch (the estep_flops objective; the same with the store on or off); these say what of it was
-- computed now (tokens_generated, samples_drawn, flops_computed) and what was taken from the store
-- (tokens_reused, samples_reused). NULL for stages that have no samples and for older markers.
ALTER TABLE stages ADD COLUMN IF NOT EXISTS tokens_generated BIGINT;
ALTER TABLE stages ADD COLUMN IF NOT EXISTS tokens_reused BIGINT;
ALTER TABLE stages ADD COLUMN IF NOT EXISTS samples_drawn BIGINT;
ALTER TABLE stages ADD COLUMN IF NOT EXISTS samples_reused BIGINT;
ALTER TABLE stages ADD COLUMN IF NOT EXISTS flops_computed DOUBLE;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS tokens_generated BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS tokens_reused BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS samples_drawn BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS samples_reused BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS flops_computed DOUBLE;
-- Per run and iteration, the eval stage's metrics side by side, each at the last step the stage logged
-- it (the value the orchestrator reports to Optuna). The views are replaced on every write, so a store
-- written by an earlier version is upgraded in place; readers define them afresh (platform/store.py).
CREATE OR REPLACE VIEW iterations AS
SELECT r.run_id, r.experiment, r.kind, r.study, r.trial, r.seed, m.iteration,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'accuracy') AS accuracy,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'nll') AS nll,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'elbo_1') AS elbo_1,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'elbo_2') AS elbo_2,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'elbo_4') AS elbo_4,
       arg_max(m.value, m.step) FILTER (WHERE m.name = 'thought_tokens_mean') AS thought_tokens_mean
FROM runs r JOIN metrics m USING (run_id)
WHERE m.stage = 'eval'
GROUP BY ALL;
CREATE OR REPLACE VIEW accuracy_by_iteration AS
SELECT kind, experiment, iteration, count(*) AS n_runs, avg(accuracy) AS mean_accuracy,
       stddev_samp(accuracy) / sqrt(count(*)) AS se_accuracy
FROM iterations GROUP BY ALL ORDER BY kind, experiment, iteration;
-- Gain over the run's warm start (iteration 0) against cumulative E-step compute.
CREATE OR REPLACE VIEW gain_vs_estep_compute AS
WITH estep AS (
    SELECT run_id, iteration, sum(flops) AS estep_flops, sum(gpu_hours) AS estep_gpu_hours
    FROM stages WHERE stage = 'estep' GROUP BY ALL
), cum AS (
    SELECT run_id, iteration,
           sum(estep_flops) OVER (PARTITION BY run_id ORDER BY iteration) AS cum_estep_flops
    FROM estep
)
SELECT i.run_id, i.kind, i.iteration, r.params, c.cum_estep_flops, i.accuracy,
       i.accuracy - first_value(i.accuracy) OVER (PARTITION BY i.run_id ORDER BY i.iteration) AS gain
FROM iterations i JOIN runs r USING (run_id) LEFT JOIN cum c USING (run_id, iteration);
-- Replicate seeds (sweep.seeds): a trial ran once per seed; "values" are the means over them,
-- values_se their standard errors (objective order), run_ids the runs (seed order).
ALTER TABLE trials ADD COLUMN IF NOT EXISTS seeds INTEGER[];
ALTER TABLE trials ADD COLUMN IF NOT EXISTS run_ids VARCHAR[];
ALTER TABLE trials ADD COLUMN IF NOT EXISTS values_se DOUBLE[];
-- Compute spent by the study's drivers (every stage computed, not cached) and why a budget stopped it.
ALTER TABLE studies ADD COLUMN IF NOT EXISTS spend_flops DOUBLE;
ALTER TABLE studies ADD COLUMN IF NOT EXISTS spend_gpu_hours DOUBLE;
ALTER TABLE studies ADD COLUMN IF NOT EXISTS spend_wall_s DOUBLE;
ALTER TABLE studies ADD COLUMN IF NOT EXISTS stopped_by_budget VARCHAR;
