"""Importance weights of the E-step (docs/method.md "E-step, exactly", "ELBO and ESS"): pure math over K samples.

For one chunk X with K thoughts Z_1..Z_K drawn from q(Z | X):
    log w_k = log p(Z_k, X) - log q(Z_k | X)
Selection draws one thought from softmax(log w) (importance resampling, not argmax), and
    ELBO_n = logsumexp(log w[:n]) - log n
is a lower bound on log p(X) that tightens as n grows. Everything here takes a 1-D array over K and
is invariant to adding a constant to log w (except the ELBO, which shifts by that constant).
"""

from __future__ import annotations

import math

import numpy as np


def _as_1d(log_w, name: str = "log_w") -> np.ndarray:
    arr = np.asarray(log_w, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array over the K samples, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN: {arr.tolist()}")
    if np.isposinf(arr).any():
        raise ValueError(f"{name} contains +inf (a log p or log q overflow): {arr.tolist()}")
    if not np.isfinite(arr).any():
        raise ValueError(f"{name} has no finite entry, weights are undefined: {arr.tolist()}")
    return arr


def log_weights(log_p_joint, log_q) -> np.ndarray:
    """log w = log p(Z, X) - log q(Z | X), elementwise over the K samples."""
    p = np.asarray(log_p_joint, dtype=np.float64)
    q = np.asarray(log_q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"log_p_joint shape {p.shape} != log_q shape {q.shape}")
    return p - q


def normalized_weights(log_w) -> np.ndarray:
    """softmax over K; subtracting the max keeps exp from overflowing for log w ~ -1000."""
    arr = _as_1d(log_w)
    w = np.exp(arr - arr.max())
    return w / w.sum()


def resample(log_w, rng: np.random.Generator) -> int:
    """Draw one index with probability softmax(log w)_k (a seeded numpy Generator)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    w = normalized_weights(log_w)
    # inverse CDF on one uniform: one draw per call keeps the stream position predictable
    cdf = np.cumsum(w)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(idx, len(w) - 1)


def elbo(log_w, n: int) -> float:
    """ELBO_n = logsumexp(log w[:n]) - log n (the first n samples; n <= K)."""
    arr = _as_1d(log_w)
    if not 1 <= n <= arr.size:
        raise ValueError(f"elbo: n={n} must be in [1, K={arr.size}]")
    head = arr[:n]
    if not np.isfinite(head).any():
        return float("-inf")  # every one of the first n samples is impossible under p
    m = head.max()
    return float(m + np.log(np.exp(head - m).sum())) - math.log(n)


def effective_sample_size(log_w) -> float:
    """ESS = 1 / sum(w_norm^2): K for uniform weights, 1 when one sample takes all the mass."""
    w = normalized_weights(log_w)
    return float(1.0 / np.sum(w**2))
