"""Teachers write one synthetic thought per chunk (docs/method.md "Teacher prompt").

Kinds behind one interface, ``Teacher.thoughts(requests) -> list[str | None]``:
- ``oracle``: the embedded corpus's worked solutions. A chunk whose sentences carry no oracle
  reasoning (a question paragraph) is asked for only under ``data.thought_chunks=all`` and gets an
  empty thought: the raw corpus omits reasoning only before answers, and an invented restatement
  would teach the model filler. The E-step then samples every chunk from a format the model saw.
- ``lm``: a local checkpoint (``teacher.model_path``) through ``generate(prompts, max_tokens, temperature)``;
  by default experiments.teacher_lm.SamplerGenerate on the configured sampler (hf or vllm), built
  on the first cache miss, seeded, with the chat template of an instruct model; it counts prompt
  and generated tokens, and ``generation_flops`` = 2N per prompt token + 2N per generated token.
- ``openai_compatible``: chat completions over HTTP (urllib), ``concurrency`` threads, retries with
  exponential backoff on network errors, 429 and 5xx.
Every kind caches answers per (doc_id, chunk_index, prompt hash) in ``cache_dir/teacher_<kind>.jsonl``,
appended as each answer arrives, so a rerun (or a resumed crash) sends no request twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

TEACHER_PROMPT = (
    "Below are two consecutive passages of a document, a prefix and a suffix. Write the latent "
    "thoughts behind the suffix: the background knowledge a reader needs that the text leaves out, "
    "and the reasoning behind each claim in the suffix, deriving every calculation step by step. "
    "Use concise declarative sentences. Do not use markdown, do not mention the prefix or the "
    "suffix, and do not add filler or commentary.\n\n"
    "Prefix:\n{prefix}\n\nSuffix:\n{suffix}\n\nLatent thoughts:"
)

Generate = Callable[[list[str], int, float], list[str]]


class TeacherError(RuntimeError):
    pass


@dataclass(frozen=True)
class ThoughtRequest:
    doc_id: str
    chunk_index: int
    prefix: str  # the previous raw chunk ("" for the first)
    suffix: str  # the chunk the thought belongs to
    oracle: Optional[str] = None  # worked reasoning of the chunk's sentences, if the corpus has it


def teacher_prompt(req: ThoughtRequest) -> str:
    return TEACHER_PROMPT.format(prefix=req.prefix.strip() or "(start of document)", suffix=req.suffix.strip())


def build_requests(doc: Any, poisson_mean: float = 7.0, max_sentences: int = 20) -> list[ThoughtRequest]:
    """One request per chunk of a Document; ``oracle`` joins the oracle texts of its sentences."""
    from experiments.chunking import chunk_document, chunk_texts

    chunks = chunk_texts(doc, poisson_mean, max_sentences)
    indices = chunk_document(doc.paragraphs, poisson_mean, max_sentences)
    reqs = []
    for i, (text, sents) in enumerate(zip(chunks, indices)):
        oracle = " ".join(doc.oracle[s] for s in sents if s in doc.oracle) or None
        reqs.append(ThoughtRequest(doc.doc_id, i, chunks[i - 1] if i else "", text, oracle))
    return reqs


class Teacher:
    """Base: the cache and the bookkeeping; subclasses implement ``_generate`` for cache misses."""

    kind = "base"

    def __init__(self, cache_dir: Optional[Path], settings: Optional[dict] = None):
        self.settings = settings or {}  # what, besides the prompt, changes the answer (model, temperature)
        self.requests_sent = 0
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, str], Optional[str]] = {}
        self._extra: dict[tuple[str, int, str], dict] = {}  # what a kind stores beside a thought (token counts)
        self.cache_path = Path(cache_dir) / f"teacher_{self.kind}.jsonl" if cache_dir is not None else None
        if self.cache_path is not None and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: that request is redone
                    continue
                key = (row.pop("doc_id"), row.pop("chunk_index"), row.pop("prompt_hash"))
                self._cache[key] = row.pop("thought")
                self._extra[key] = row

    def prompt(self, req: ThoughtRequest) -> str:
        return teacher_prompt(req)

    def _key(self, req: ThoughtRequest) -> tuple[str, int, str]:
        blob = json.dumps({"prompt": self.prompt(req), **self.settings}, sort_keys=True).encode("utf-8")
        return req.doc_id, req.chunk_index, hashlib.sha256(blob).hexdigest()[:20]

    def _store(self, key: tuple[str, int, str], thought: Optional[str], **extra: Any) -> None:
        with self._lock:
            self._cache[key] = thought
            self._extra[key] = extra
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    row = {"doc_id": key[0], "chunk_index": key[1], "prompt_hash": key[2], "thought": thought, **extra}
                    f.write(json.dumps(row) + "\n")

    def thoughts(self, requests: Sequence[ThoughtRequest]) -> list[Optional[str]]:
        keys = [self._key(r) for r in requests]
        missing = {}
        for k, r in zip(keys, requests):
            if k not in self._cache and k not in missing:
                missing[k] = r
        if missing:
            self._generate(list(missing.items()))
        return [self._cache[k] for k in keys]

    def _generate(self, items: list[tuple[tuple[str, int, str], ThoughtRequest]]) -> None:
        raise NotImplementedError


class OracleTeacher(Teacher):
    kind = "oracle"

    def prompt(self, req: ThoughtRequest) -> str:
        return req.oracle or ""

    def _generate(self, items):
        for key, req in items:
            # "" (an empty thought) for a chunk without reasoning: asked for one (thought_chunks=all),
            # the oracle's answer is that there is nothing to infer, not that it has no answer
            self._store(key, req.oracle.strip() if req.oracle and req.oracle.strip() else "")


def _clean(text: str) -> Optional[str]:
    text = text.strip()
    return text or None


class LMTeacher(Teacher):
    """A local model's thoughts through ``generate(prompts, max_tokens, temperature)``.

    ``generate`` returns per prompt either a str (a stand-in) or an experiments.teacher_lm.Generation
    whose prompt and generated token counts are cached with the thought. ``prompt_tokens``,
    ``generated_tokens`` and ``generation_flops`` cover the thoughts of the last ``thoughts()`` call,
    including ones a crashed earlier attempt generated and cached (their compute was spent for this
    output and never reported). FLOPs: 2N per prompt token (prefill) + 2N per generated token,
    N = ``num_params`` (the generate function's, else 0). Misses go to ``generate`` ``group_size`` at a
    time and are cached after each group, so a crash loses one group at most.
    """

    kind = "lm"
    group_size = 256

    def __init__(self, cache_dir, generate: Generate, max_tokens: int, temperature: float, settings: dict,
                 num_params: Optional[int] = None):
        super().__init__(cache_dir, settings)
        self.generate, self.max_tokens, self.temperature = generate, max_tokens, temperature
        self._num_params = num_params
        self._last_keys: list[tuple[str, int, str]] = []

    @property
    def num_params(self) -> int:
        if self._num_params is None:
            self._num_params = int(getattr(self.generate, "num_params", 0) or 0)
        return self._num_params

    def _count(self, name: str) -> int:
        return sum(int(self._extra.get(k, {}).get(name, 0)) for k in self._last_keys)

    @property
    def prompt_tokens(self) -> int:
        return self._count("prompt_tokens")

    @property
    def generated_tokens(self) -> int:
        return self._count("generated_tokens")

    @property
    def generation_flops(self) -> float:
        tokens = self.prompt_tokens + self.generated_tokens
        return 2.0 * self.num_params * tokens if tokens else 0.0

    def thoughts(self, requests: Sequence[ThoughtRequest]) -> list[Optional[str]]:
        out = super().thoughts(requests)
        self._last_keys = list(dict.fromkeys(self._key(r) for r in requests))
        return out

    def _generate(self, items):
        try:
            for start in range(0, len(items), self.group_size):
                group = items[start : start + self.group_size]
                outputs = self.generate([self.prompt(r) for _, r in group], self.max_tokens, self.temperature)
                self.requests_sent += len(group)
                if len(outputs) != len(group):
                    raise TeacherError(f"lm teacher: sampler returned {len(outputs)} outputs for {len(group)} prompts")
                for (key, _), out in zip(group, outputs):
                    if isinstance(out, str):
                        self._store(key, _clean(out))
                    else:
                        self._store(key, _clean(out.text), prompt_tokens=int(out.prompt_tokens),
                                    generated_tokens=int(out.generated_tokens))
        finally:
            close = getattr(self.generate, "close", None)
            if close is not None:  # free the model (a vLLM engine must not outlive its use)
                close()


class OpenAICompatibleTeacher(Teacher):
    kind = "openai_compatible"

    def __init__(self, cache_dir, cfg: dict, backoff_s: float = 1.0):
        if not cfg.get("base_url") or not cfg.get("model"):
            raise ValueError("teacher.kind=openai_compatible needs teacher.base_url and teacher.model")
        super().__init__(cache_dir, {"model": cfg["model"], "temperature": cfg["temperature"], "max_tokens": cfg["max_tokens"]})
        self.url = cfg["base_url"].rstrip("/") + "/chat/completions"
        self.model = cfg["model"]
        self.temperature, self.max_tokens = float(cfg["temperature"]), int(cfg["max_tokens"])
        self.concurrency, self.max_retries = int(cfg["concurrency"]), int(cfg["max_retries"])
        self.timeout_s, self.backoff_s = float(cfg["timeout_s"]), backoff_s
        # a local vLLM server needs no key: an unset variable sends no Authorization header
        self.api_key = os.environ.get(cfg.get("api_key_env") or "OPENAI_API_KEY")

    def _post(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "n": 1,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.requests_sent += 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode("utf-8"))["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code != 429 and e.code < 500:  # a bad request will not get better by retrying
                    raise TeacherError(f"teacher {self.url}: HTTP {e.code}: {detail}") from None
                last = TeacherError(f"HTTP {e.code}: {detail}")
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, json.JSONDecodeError) as e:
                last = e
        raise TeacherError(f"teacher {self.url}: gave up after {self.max_retries + 1} attempts: {last}")

    def _generate(self, items):
        def one(item):
            key, req = item
            self._store(key, _clean(self._post(self.prompt(req))))

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            list(pool.map(one, items))  # list(): re-raise the first worker error here


def build_teacher(teacher_cfg: dict, cache_dir: Optional[Path], generate: Optional[Generate] = None, *,
                  sampler_cfg: Optional[dict] = None, seed: int = 0, **kwargs) -> Teacher:
    """A Teacher from TeacherConfig fields.

    Kind ``lm``: ``generate`` is the sampler callable; without one, experiments.teacher_lm.SamplerGenerate
    on ``teacher.model_path`` with ``sampler_cfg`` (the ``sampler`` config section: backend hf or vllm)
    and ``seed``; it loads the model only on the first cache miss. ``kwargs`` go to the
    openai_compatible teacher.
    """
    from dataclasses import asdict

    from experiments.config import TeacherConfig

    unknown = sorted(set(teacher_cfg) - set(asdict(TeacherConfig())))
    if unknown:
        raise ValueError(f"unknown teacher field(s) {unknown}; valid: {sorted(asdict(TeacherConfig()))}")
    teacher_cfg = {**asdict(TeacherConfig()), **teacher_cfg}  # a partial dict gets the config defaults
    kind = teacher_cfg["kind"]
    if kind == "oracle":
        return OracleTeacher(cache_dir)
    if kind == "lm":
        settings = {**{k: teacher_cfg.get(k) for k in ("model_path", "temperature", "max_tokens")}, "seed": int(seed)}
        if generate is None:
            from experiments.teacher_lm import SamplerGenerate

            if not teacher_cfg.get("model_path") or teacher_cfg["model_path"] == "???":
                raise ValueError("teacher.kind=lm needs teacher.model_path (a local Hugging Face checkpoint)")
            sampler_cfg = dict(sampler_cfg or {})
            generate = SamplerGenerate(teacher_cfg["model_path"], sampler_cfg, seed)
            settings["backend"] = sampler_cfg.get("backend", "hf")  # hf and vllm draw different samples
        return LMTeacher(cache_dir, generate, int(teacher_cfg["max_tokens"]), float(teacher_cfg["temperature"]), settings)
    if kind == "openai_compatible":
        return OpenAICompatibleTeacher(cache_dir, teacher_cfg, **kwargs)
    raise ValueError(f"teacher.kind={kind!r} is not one of ['oracle', 'lm', 'openai_compatible']")
