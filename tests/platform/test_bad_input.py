"""Bad input through the real CLI: one `error:` block and exit code 2 before any job starts; a known
error inside a job: one `error:` line (stage, message, log), exit code 2, the traceback kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from platform.failures import final_exception, known_error
from tests.platform.conftest import ROOT

# env vars a model/data config may read: unset so the test sees the repository's defaults
_UNSET = ("TINYLLAMA_PATH", "FINEMATH_PATH", "SMOLLM2_DIR", "PLATFORM_APP", "PLATFORM_CONF_DIR")
RAW = ["experiment=raw_baseline", "experiment.baseline=none"]  # a run that needs no teacher


def _run(results: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "platform.run", *args, f"paths.results={results}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return path


def _good(i: int) -> dict:
    return {"text": f"Document {i} states a fact. It then states a second one."}


def _rejected(tmp_path: Path, *args: str) -> str:
    """Run the CLI; assert it stopped at validation: exit 2, one error block, no traceback, nothing
    written under the results folder. Returns stderr."""
    res = tmp_path / "results"
    out = _run(res, *args)
    assert out.returncode == 2, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.stderr.count("error:") == 1 and out.stderr.startswith("error: invalid config"), out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert not res.exists(), sorted(p.name for p in res.rglob("*"))  # no run folder, no artifacts
    return out.stderr


def test_oracle_teacher_on_a_corpus_without_worked_solutions_is_rejected(tmp_path):
    corpus = _write_jsonl(tmp_path / "c.jsonl", [_good(i) for i in range(5)])
    for experiment in ("experiment=synthetic_thoughts", "experiment=bootstrap", "experiment=raw_baseline"):
        err = _rejected(tmp_path, experiment, "teacher=oracle", "data=jsonl", f"data.path={corpus}")
        assert "(1 problem)" in err and "teacher.kind:" in err, err
        assert "teacher=lm teacher.model_path=" in err and "teacher=openai_compatible" in err, err
    # a raw baseline that matches nothing needs no teacher: it plans
    out = _run(tmp_path / "dry", *RAW, "data=jsonl", f"data.path={corpus}", "dry_run=true")
    assert out.returncode == 0, out.stderr


def test_empty_corpus(tmp_path):
    corpus = _write_jsonl(tmp_path / "empty.jsonl", [b"\n", b"   \n"])
    err = _rejected(tmp_path, *RAW, "data=jsonl", f"data.path={corpus}")
    assert f"data.path: {corpus}: empty corpus (no rows)" in err, err


def test_non_utf8_line(tmp_path):
    corpus = _write_jsonl(tmp_path / "bad_utf8.jsonl", [_good(0), b'{"text": "caf\xe9 au lait."}\n', _good(2)])
    err = _rejected(tmp_path, *RAW, "data=jsonl", f"data.path={corpus}")
    assert f"data.path: {corpus}:2: not UTF-8" in err, err


def test_missing_text_column(tmp_path):
    corpus = _write_jsonl(tmp_path / "nocol.jsonl", [_good(0), _good(1), {"body": "no text here."}])
    err = _rejected(tmp_path, *RAW, "data=jsonl", f"data.path={corpus}")
    assert f"data.path: {corpus}:3: missing column 'text'" in err, err


def test_parquet_without_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["a. b.", "c. d."]}), corpus)
    err = _rejected(tmp_path, *RAW, "data=parquet", f"data.path={corpus}")
    assert f"data.path: {corpus}: missing column 'text'" in err, err


def test_missing_corpus_file(tmp_path):
    err = _rejected(tmp_path, *RAW, "data=jsonl", f"data.path={tmp_path}/nope.jsonl")
    assert f"data.path: {tmp_path}/nope.jsonl: no such file" in err, err


def test_pretrained_model_without_a_path(tmp_path):
    err = _rejected(tmp_path, "model=tinyllama_1b")  # TINYLLAMA_PATH unset
    assert "(1 problem)" in err and "model.path:" in err and "TINYLLAMA_PATH" in err, err
    assert "model.path=" in err, err  # says how to set it
    # a set path that is no checkpoint names the field too
    (tmp_path / "ckpt").mkdir()
    err = _rejected(tmp_path, "model=tinyllama_1b", f"model.path={tmp_path}/ckpt")
    assert "model.path:" in err and "config.json" in err, err


def test_a_known_error_inside_a_job_is_one_line_with_stage_and_log(tmp_path):
    """Line 250 is past what validation reads: the prepare_data job raises CorpusError."""
    rows = [_good(i) for i in range(300)]
    rows[249] = b"{not json\n"
    corpus = _write_jsonl(tmp_path / "late.jsonl", rows)
    res = tmp_path / "results"
    out = _run(res, *RAW, "data=jsonl", f"data.path={corpus}")
    assert out.returncode == 2, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    line = errors[0]
    assert "stage prepare_data" in line and f"{corpus}:250: not JSON" in line and "CorpusError" in line, line
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "experiments.corpus.CorpusError" in log.read_text(), log
    [run_dir] = (res / "runs").iterdir()
    assert log.is_relative_to(run_dir / "logs")
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "failed"
    assert "Traceback (most recent call last)" in meta["error"] and "load_text_corpus" in meta["error"], meta["error"]
    assert f"experiments.corpus.CorpusError: {corpus}:250: not JSON" in meta["error"]


def test_known_errors_are_recognised_by_name_from_the_traceback_text():
    tb = ('Traceback (most recent call last):\n  File "x.py", line 3, in f\n    raise ConfigError(p)\n'
          '    ^^^^^^^^^^^^^^^^^^^^^\nplatform.validate.ConfigError: invalid config (2 problems):\n'
          '  - a: must be in [1, inf], got 0\n  - b: bad\n')
    assert known_error(tb) == ("platform.validate.ConfigError", "invalid config (2 problems):\n"
                                                               "  - a: must be in [1, inf], got 0\n  - b: bad")
    plain = ('Traceback (most recent call last):\n  File "x.py", line 3, in f\n    raise ValueError("no")\n'
             'ValueError: no\n')
    assert final_exception(plain) == ("ValueError", "no") and known_error(plain) is None
    nan = plain.replace("ValueError: no", "FloatingPointError: M-step loss is nan at step 3")
    assert known_error(nan, frozenset({"FloatingPointError"})) == ("FloatingPointError", "M-step loss is nan at step 3")
    assert final_exception("job 12 timeout:\nDUE TO TIME LIMIT") is None
