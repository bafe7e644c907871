"""The sampler interface shared by the ``hf`` and ``vllm`` backends.

Everything is in token ids, not strings: the E-step's log q is over the ids that were sampled, and
log p must score exactly those ids, so callers build scoring sequences by concatenating separately
tokenized parts with the sampled ids (re-tokenizing decoded text could merge or split tokens).

Conventions every backend follows:
- ``temperature == 0`` is greedy decoding; otherwise plain ancestral sampling at that temperature
  (no top-k / top-p: they distort log q).
- ``SampleOut.logprobs`` are log-probabilities under the model's temperature-1 softmax (vLLM's
  default "raw" logprobs). At temperature 1 that is exactly log q; at other temperatures it is the
  model's own density of the sampled ids, not the tempered proposal's.
- The stop token ends a sequence and is NOT part of ``token_ids`` / ``logprobs`` / ``text``;
  ``finished`` says the stop token was produced (False: cut at ``max_tokens``). Its own
  log-probability is ``stop_logprob``, and ``logprob_sum`` (the sequence's log q) includes it: the
  probability of a finished sequence includes the probability of stopping where it stopped.
- ``banned_token_ids`` (control tokens such as pad, BOS, EOS, SoL and the form prefixes) get
  probability zero: they are masked out of the distribution that is sampled, and ``logprobs`` are
  under that masked, renormalised distribution, so log q is the density of what was actually drawn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass
class SampleOut:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finished: bool
    stop_logprob: float = 0.0  # log p of the stop token that ended a finished sample (0.0 otherwise)

    @property
    def logprob_sum(self) -> float:
        """log q of the whole sampled sequence: its tokens and, if it finished, its stop token."""
        return float(sum(self.logprobs)) + (self.stop_logprob if self.finished else 0.0)


class Sampler(ABC):
    """What callers use: ``sample``, ``score``, ``score_tokens`` and ``tokenizer``.

    A backend implements ``_sample`` and ``_score_tokens``, which get arguments already checked
    (``_sample`` at least one prompt); the checks and ``score`` are the same for every backend.
    """

    tokenizer: Any

    def sample(
        self,
        prompts_ids: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop_token_id: Optional[int] = None,
        seed: int = 0,
        banned_token_ids: Sequence[int] = (),
        first: int = 0,
    ) -> list[list[SampleOut]]:
        """``n`` samples per prompt: result[i][j] is sample ``first + j`` of prompt i.

        Sample j of a prompt is the same whether it is drawn among ``n=8`` from 0 or alone with
        ``first=j, n=1``: what lets the E-step's sample store top K up (experiments/sample_store.py).
        """
        check_sample_args(prompts_ids, n, max_tokens, temperature, stop_token_id, banned_token_ids)
        if first < 0:
            raise ValueError(f"first (index of the first sample drawn) must be >= 0, got {first}")
        if not prompts_ids:
            return []
        return self._sample(prompts_ids, n, max_tokens, temperature, stop_token_id, seed, banned_token_ids, first)

    def score(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[float]:
        """Sum of log p(cont token | prefix + earlier cont tokens), per pair."""
        return [float(sum(t)) for t in self.score_tokens(prefix_ids, cont_ids)]

    def score_tokens(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[list[float]]:
        """Per-token log p of each continuation token (the terms ``score`` sums)."""
        check_score_args(prefix_ids, cont_ids)
        return self._score_tokens(prefix_ids, cont_ids)

    @abstractmethod
    def _sample(self, prompts_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                stop_token_id: Optional[int], seed: int, banned_token_ids: Sequence[int],
                first: int = 0) -> list[list[SampleOut]]: ...

    @abstractmethod
    def _score_tokens(self, prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> list[list[float]]: ...


def check_sample_args(prompts_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                      stop_token_id: Optional[int] = None, banned_token_ids: Sequence[int] = ()) -> None:
    """Argument checks shared by the backends: one clear error instead of a shape error deep inside."""
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    for i, p in enumerate(prompts_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (BOS)")
    if stop_token_id is not None and stop_token_id in set(banned_token_ids):
        raise ValueError(f"the stop token {stop_token_id} is also banned: a sample could never finish")


def check_score_args(prefix_ids: list[list[int]], cont_ids: list[list[int]]) -> None:
    if len(prefix_ids) != len(cont_ids):
        raise ValueError(f"score: {len(prefix_ids)} prefixes but {len(cont_ids)} continuations")
    for i, p in enumerate(prefix_ids):
        if len(p) == 0:
            raise ValueError(f"score: prefix {i} is empty; the first continuation token needs a context (BOS)")
