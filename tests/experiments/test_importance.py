"""Importance weights, resampling, ELBO and ESS against hand computations."""

import math

import numpy as np
import pytest

from experiments.importance import effective_sample_size, elbo, log_weights, normalized_weights, resample

# weights proportional to 1, 2, 3, 4: every quantity below is a small fraction by hand
LOG_W = np.log([1.0, 2.0, 3.0, 4.0])


def test_log_weights_is_difference():
    assert log_weights([-10.0, -20.5], [-3.0, -4.5]).tolist() == [-7.0, -16.0]
    with pytest.raises(ValueError, match="shape"):
        log_weights([1.0, 2.0], [1.0])


def test_normalized_weights_hand_values():
    np.testing.assert_allclose(normalized_weights(LOG_W), [0.1, 0.2, 0.3, 0.4], atol=1e-12)


def test_elbo_hand_values():
    assert elbo(LOG_W, 1) == pytest.approx(0.0, abs=1e-12)
    assert elbo(LOG_W, 2) == pytest.approx(math.log(3 / 2), abs=1e-12)
    assert elbo(LOG_W, 4) == pytest.approx(math.log(10 / 4), abs=1e-12)
    with pytest.raises(ValueError, match="n=5"):
        elbo(LOG_W, 5)


def test_ess_hand_values():
    assert effective_sample_size(LOG_W) == pytest.approx(1 / 0.30, rel=1e-12)
    assert effective_sample_size([5.0, 5.0, 5.0]) == pytest.approx(3.0)
    assert effective_sample_size([0.0, -1000.0]) == pytest.approx(1.0)


def test_invariance_to_a_constant_and_no_overflow():
    shifted = LOG_W - 12345.0
    np.testing.assert_allclose(normalized_weights(shifted), normalized_weights(LOG_W), atol=1e-12)
    assert effective_sample_size(shifted) == pytest.approx(effective_sample_size(LOG_W))
    # the ELBO shifts by exactly the constant
    assert elbo(shifted, 4) == pytest.approx(elbo(LOG_W, 4) - 12345.0, abs=1e-9)
    draws_a = [resample(LOG_W, np.random.default_rng(3)) for _ in range(5)]
    draws_b = [resample(shifted, np.random.default_rng(3)) for _ in range(5)]
    assert draws_a == draws_b


def test_resample_is_seeded_and_not_argmax():
    a = [resample(LOG_W, rng) for rng in [np.random.default_rng(7)] for _ in range(200)]
    rng = np.random.default_rng(7)
    b = [resample(LOG_W, rng) for _ in range(200)]
    assert a == b
    assert set(b) == {0, 1, 2, 3}  # argmax would always give 3


def test_resample_distribution_chi_square():
    rng = np.random.default_rng(0)
    n = 20_000
    counts = np.bincount([resample(LOG_W, rng) for _ in range(n)], minlength=4)
    expected = n * np.array([0.1, 0.2, 0.3, 0.4])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square critical value, 3 degrees of freedom, alpha = 0.001 (standard table)
    assert chi2 < 16.266, (counts, chi2)
    # and a wrong distribution (uniform) is rejected by the same statistic
    uniform = np.full(4, n / 4)
    assert float(((counts - uniform) ** 2 / uniform).sum()) > 16.266


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        normalized_weights([0.0, float("nan")])
    with pytest.raises(ValueError, match="\\+inf"):
        normalized_weights([0.0, float("inf")])
    assert elbo([float("-inf"), 0.0], 1) == float("-inf")
    with pytest.raises(ValueError, match="no finite"):
        normalized_weights([float("-inf"), float("-inf")])
    with pytest.raises(ValueError, match="1-D"):
        normalized_weights([[0.0, 1.0]])
    with pytest.raises(TypeError, match="Generator"):
        resample(LOG_W, 3)
    # a sample with -inf weight (e.g. impossible under p) is never drawn
    rng = np.random.default_rng(1)
    assert all(resample([0.0, float("-inf")], rng) == 0 for _ in range(100))
