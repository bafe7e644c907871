import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from experiments.corpus import Problem, make_document
from experiments.teacher import TeacherError, ThoughtRequest, build_requests, build_teacher, teacher_prompt

DOC = make_document("d0", [Problem("What is 3*7+5?", "26", "3*7=21. 21+5=26.", "arith"),
                           Problem("Solve 2*x+4=10 for x.", "3", "10-4=6. 6/2=3. So x=3.", "equation")])


class FakeServer:
    """A chat-completions endpoint on 127.0.0.1; ``fail_first`` answers 503 that many times."""

    def __init__(self, fail_first=0, status=503):
        self.bodies, self.headers, self.fail_left, self.status = [], [], fail_first, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers))
                    fail = outer.fail_left > 0
                    outer.fail_left -= fail
                if fail or self.path != "/v1/chat/completions":
                    self.send_response(outer.status if fail else 404)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                content = body["messages"][0]["content"]
                suffix = content.split("Suffix:\n")[1].split("\n\nLatent thoughts:")[0]
                reply = {"choices": [{"message": {"role": "assistant", "content": f" Thought about {suffix} "}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _cfg(url, **kw):
    return {"kind": "openai_compatible", "base_url": url, "model": "teacher-x", "concurrency": 3,
            "max_retries": 2, "temperature": 0.7, "max_tokens": 64, "api_key_env": "TEST_TEACHER_KEY", **kw}


def test_build_requests_pairs_chunks_with_prefix_and_oracle():
    reqs = build_requests(DOC)
    assert [(r.chunk_index, r.oracle) for r in reqs] == [
        (0, None), (1, "3*7=21. 21+5=26."), (2, None), (3, "10-4=6. 6/2=3. So x=3.")]
    assert reqs[0].prefix == "" and reqs[1].prefix == "What is 3*7+5?\n\n" and reqs[1].suffix == "Answer: 26.\n\n"


def test_oracle_teacher_returns_worked_solutions_and_empty_thoughts_elsewhere(tmp_path):
    t = build_teacher({"kind": "oracle"}, tmp_path)
    assert t.thoughts(build_requests(DOC)) == ["", "3*7=21. 21+5=26.", "", "10-4=6. 6/2=3. So x=3."]
    assert t.requests_sent == 0


def test_prompt_follows_the_paper():
    p = teacher_prompt(ThoughtRequest("d", 1, "What is 3*7+5?\n\n", "Answer: 26.", None))
    assert p.endswith("Prefix:\nWhat is 3*7+5?\n\nSuffix:\nAnswer: 26.\n\nLatent thoughts:")
    for phrase in ("background knowledge", "step by step", "concise declarative", "markdown",
                   "do not mention the prefix or the suffix"):
        assert phrase in p
    assert "(start of document)" in teacher_prompt(ThoughtRequest("d", 0, "", "Q?", None))


def test_lm_teacher_uses_the_injected_sampler_and_caches(tmp_path):
    calls = []

    def generate(prompts, max_tokens, temperature):
        calls.append((len(prompts), max_tokens, temperature))
        return [f"  z{i}\n" for i in range(len(prompts))]

    cfg = {"kind": "lm", "model_path": "/m", "temperature": 0.5, "max_tokens": 32}
    reqs = build_requests(DOC)
    t = build_teacher(cfg, tmp_path, generate=generate)
    assert t.thoughts(reqs + reqs[:1]) == ["z0", "z1", "z2", "z3", "z0"]  # duplicates asked once
    assert calls == [(4, 32, 0.5)] and t.requests_sent == 4
    again = build_teacher(cfg, tmp_path, generate=generate)
    assert again.thoughts(reqs) == ["z0", "z1", "z2", "z3"] and again.requests_sent == 0
    hotter = build_teacher({**cfg, "temperature": 1.0}, tmp_path, generate=generate)
    hotter.thoughts(reqs[:1])
    assert hotter.requests_sent == 1  # another temperature is another answer
    with pytest.raises(FileNotFoundError, match="teacher.model_path=/m: no model checkpoint"):
        build_teacher(cfg, tmp_path)  # without generate: the configured sampler on model_path


def test_openai_compatible_counts_requests_and_rerun_sends_none(tmp_path, server, monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_KEY", "sk-test")
    reqs = build_requests(DOC)
    t = build_teacher(_cfg(server.url), tmp_path)
    out = t.thoughts(reqs)
    assert out == [f"Thought about {r.suffix.strip()}" for r in reqs]
    assert t.requests_sent == 4 and len(server.bodies) == 4
    body = server.bodies[0]
    assert body["model"] == "teacher-x" and body["temperature"] == 0.7 and body["max_tokens"] == 64
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    rerun = build_teacher(_cfg(server.url), tmp_path)
    assert rerun.thoughts(reqs) == out
    assert rerun.requests_sent == 0 and len(server.bodies) == 4
    lines = (tmp_path / "teacher_openai_compatible.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {json.loads(x)["doc_id"] for x in lines} == {"d0"}


def test_openai_compatible_retries_then_succeeds(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_TEACHER_KEY", raising=False)
    s = FakeServer(fail_first=2)
    try:
        t = build_teacher(_cfg(s.url, concurrency=1), tmp_path, backoff_s=0.01)
        assert t.thoughts(build_requests(DOC)[:1]) == ["Thought about What is 3*7+5?"]
        assert t.requests_sent == 3
        assert "Authorization" not in s.headers[0]
    finally:
        s.close()


def test_openai_compatible_gives_up_with_a_clear_error(tmp_path):
    s = FakeServer(fail_first=100)
    try:
        t = build_teacher(_cfg(s.url, concurrency=1, max_retries=1), tmp_path, backoff_s=0.01)
        with pytest.raises(TeacherError, match="gave up after 2 attempts: HTTP 503: busy"):
            t.thoughts(build_requests(DOC)[:1])
    finally:
        s.close()
    bad = FakeServer(fail_first=1, status=400)
    try:
        t = build_teacher(_cfg(bad.url), tmp_path, backoff_s=0.01)
        with pytest.raises(TeacherError, match="HTTP 400"):
            t.thoughts(build_requests(DOC)[:1])
        assert t.requests_sent == 1  # a 4xx is not retried
    finally:
        bad.close()


def test_bad_teacher_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="teacher.kind='gpt'"):
        build_teacher({"kind": "gpt"}, tmp_path)
    with pytest.raises(ValueError, match="needs teacher.base_url and teacher.model"):
        build_teacher({"kind": "openai_compatible"}, tmp_path)
    with pytest.raises(ValueError, match="unknown teacher field\\(s\\) \\['temprature'\\]"):
        build_teacher({"kind": "oracle", "temprature": 1.0}, tmp_path)


def test_cache_line_cut_short_by_a_crash_is_redone(tmp_path):
    calls = []

    def generate(prompts, max_tokens, temperature):
        calls.append(len(prompts))
        return ["z"] * len(prompts)

    cfg = {"kind": "lm", "temperature": 0.5, "max_tokens": 32}
    reqs = build_requests(DOC)
    build_teacher(cfg, tmp_path, generate=generate).thoughts(reqs)
    path = tmp_path / "teacher_lm.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1] + [lines[-1][:10]]) + "\n")
    t = build_teacher(cfg, tmp_path, generate=generate)
    assert t.thoughts(reqs) == ["z"] * 4 and t.requests_sent == 1
