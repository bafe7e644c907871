"""The ``lm`` teacher's generate function: a local checkpoint behind the configured sampler.

``SamplerGenerate(model_path, sampler_cfg, seed)`` is the ``generate(prompts, max_tokens, temperature)``
callable that ``experiments.teacher.LMTeacher`` takes; ``build_teacher`` makes one for
``teacher.kind=lm`` from ``teacher.model_path`` and the stage's ``sampler`` section (hf or vllm).

- Lazy: the sampler, and with it the model, is built on the first call, i.e. on the teacher's first
  cache miss; a rerun whose every request is cached never loads the model. ``close()`` (called by
  LMTeacher after each batch of misses) frees it again; a vLLM engine must be closed before another
  one starts in the same process.
- Prompt: the paper's teacher prompt (experiments.teacher.TEACHER_PROMPT) as one user turn of the
  tokenizer's chat template, with the generation prompt, when the tokenizer has a template (an
  instruct model such as SmolLM2-135M-Instruct); otherwise the tokenizer's own encoding of the
  prompt (BOS first, the project's convention).
- Stop: a chat model stops at its end-of-turn token (the special token its template writes after an
  assistant message), any other at EOS. The thought is cut at the first EOS / end-of-turn token, and
  decoded without special tokens, so a teacher cannot leak latent or chat tokens into the text the
  student's tokenizer re-encodes.
- Seeded: both samplers draw a sample as a pure function of (seed, prompt ids, sample index), so a
  rerun, or the same prompts in other batches, write the same thoughts.
- Compute: every answer is a ``Generation`` with its prompt tokens and generated tokens (the sampled
  ids plus the stop token when one was produced: it was computed too), the convention of the E-step
  and eval stages. The teacher's FLOPs are 2N per prompt token (prefill) plus 2N per generated token
  (decode), N = the checkpoint's parameter count from its safetensors headers (no model load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

_MARK = "LMTEACHERMARK"  # a plain-text assistant reply, to find what the chat template writes after one


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int


def has_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def encode_prompt(tok: Any, prompt: str) -> list[int]:
    """Prompt ids: one user turn of the chat template (+ generation prompt) if there is one, else
    the tokenizer's plain encoding with its special tokens (BOS)."""
    if has_chat_template(tok):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        # the template writes its own special tokens (e.g. <|im_start|>); adding BOS again would double it
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tok(prompt)["input_ids"])
    if not ids:
        raise ValueError("the teacher prompt encodes to no tokens")
    return ids


def end_of_turn_id(tok: Any) -> Optional[int]:
    """The special token the chat template writes right after an assistant message (None: no template,
    or the template writes no special token there)."""
    if not has_chat_template(tok):
        return None
    try:
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}], tokenize=False)
    except Exception:  # a template that refuses an assistant turn: fall back to EOS
        return None
    if _MARK not in text:
        return None
    after = text.split(_MARK, 1)[1]
    ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(getattr(tok, "all_special_ids", []) or []) | set(tok.get_added_vocab().values())
    return ids[0] if ids and ids[0] in special else None


def stop_ids(tok: Any) -> tuple[Optional[int], set[int]]:
    """(the sampler's stop token, every id a thought is cut at): end-of-turn for chat models, else EOS."""
    eos = getattr(tok, "eos_token_id", None)
    eot = end_of_turn_id(tok)
    stop = eot if eot is not None else eos
    return stop, {i for i in (eot, eos) if i is not None}


def checkpoint_params(model_dir: str | Path) -> int:
    from experiments.estep import checkpoint_num_params  # safetensors headers only

    return checkpoint_num_params(model_dir)


class SamplerGenerate:
    """``generate(prompts, max_tokens, temperature) -> list[Generation]`` over a lazily built sampler."""

    def __init__(self, model_path: str | Path, sampler_cfg: Optional[dict[str, Any]] = None, seed: int = 0):
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").exists():
            raise FileNotFoundError(f"teacher.model_path={model_path}: no model checkpoint there (config.json missing)")
        self.sampler_cfg = dict(sampler_cfg or {})
        self.seed = int(seed)
        self.sampler: Any = None
        self.builds = 0  # how many times the model was loaded (tests: 0 on a fully cached rerun)
        self._num_params: Optional[int] = None

    @property
    def num_params(self) -> int:
        if self._num_params is None:
            self._num_params = checkpoint_params(self.model_path)
        return self._num_params

    def _ensure_sampler(self) -> Any:
        if self.sampler is None:
            import sys

            from experiments.samplers import build_sampler

            backend = self.sampler_cfg.get("backend", "hf")
            print(f"lm teacher: loading {self.model_path} (sampler.backend={backend})", file=sys.stderr, flush=True)
            self.sampler = build_sampler(self.sampler_cfg, self.model_path)
            self.builds += 1
        return self.sampler

    def __call__(self, prompts: list[str], max_tokens: int, temperature: float) -> list[Generation]:
        if not prompts:
            return []
        sampler = self._ensure_sampler()
        tok = sampler.tokenizer
        ids = [encode_prompt(tok, p) for p in prompts]
        stop, cut_at = stop_ids(tok)
        outs = sampler.sample(ids, n=1, max_tokens=int(max_tokens), temperature=float(temperature),
                              stop_token_id=stop, seed=self.seed)
        result = []
        for prompt_ids, (out,) in zip(ids, outs):
            toks = list(out.token_ids)
            cut = next((i for i, t in enumerate(toks) if t in cut_at), len(toks))
            text = tok.decode(toks[:cut], skip_special_tokens=True)
            result.append(Generation(text, len(prompt_ids), len(toks) + int(out.finished)))
        return result

    def close(self) -> None:
        """Free the model (and shut a vLLM engine down); the next call builds it again."""
        if self.sampler is not None:
            close = getattr(self.sampler, "close", None)
            if close is not None:
                close()
            self.sampler = None
