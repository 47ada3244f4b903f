"""The bundled importance-sampled NLL metric: hand-computed values, batching, numerical range, ragged input."""

import math
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import neumeta_hf

METRIC_DIR = Path(neumeta_hf.__file__).parent / "metrics" / "nll"


def compute(log_weights, batch_size=None):
    metric = evaluate.load(str(METRIC_DIR))
    batch_size = batch_size or len(log_weights)
    for start in range(0, len(log_weights), batch_size):
        metric.add_batch(log_weights=log_weights[start : start + batch_size])
    return metric.compute()


def test_hand_computed_examples():
    constant = compute(np.full((3, 1000), -123.25))  # every sample as good: the estimate is that weight
    assert constant["nll"] == pytest.approx(123.25, abs=1e-12)
    assert constant["negative_elbo"] == pytest.approx(123.25, abs=1e-12)
    assert constant["num_importance_samples"] == 1000
    # log mean(1, 3) = log 2; the ELBO is the mean log-weight, (log 1 + log 3) / 2
    two = compute(np.log([[1.0, 3.0]]))
    assert two["nll"] == pytest.approx(-math.log(2), abs=1e-15)
    assert two["negative_elbo"] == pytest.approx(-math.log(3) / 2, abs=1e-15)
    assert two["num_importance_samples"] == 2


def test_means_over_examples_match_a_direct_computation():
    log_weights = np.random.default_rng(0).normal(-90.0, 4.0, (37, 50))
    result = compute(log_weights, batch_size=8)
    assert result["nll"] == pytest.approx(-(logsumexp(log_weights, 1) - math.log(50)).mean(), rel=1e-14)
    assert result["negative_elbo"] == pytest.approx(-log_weights.mean(), rel=1e-14)
    assert result["negative_elbo"] > result["nll"]  # Jensen: the ELBO is the looser bound


def test_inputs_as_arrays_lists_tensors_or_single_examples_agree():
    log_weights = np.random.default_rng(1).normal(-50.0, 2.0, (6, 10)).astype(np.float32)
    whole = compute(log_weights)
    assert compute(list(log_weights), batch_size=4) == whole
    assert compute(torch.from_numpy(log_weights), batch_size=5) == whole
    metric = evaluate.load(str(METRIC_DIR))
    for weights in log_weights:
        metric.add(log_weights=weights)
    assert metric.compute() == whole == evaluate.load(str(METRIC_DIR)).compute(log_weights=log_weights)


def test_large_magnitudes_and_impossible_samples_stay_finite():
    # Log-weights of real images are thousands of nats below 0: exp would underflow without logsumexp.
    result = compute(np.array([[-1e4, -1e4 + math.log(3)], [-np.inf, -2e4]]))
    expected = ((1e4 - math.log(2)) + (2e4 + math.log(2))) / 2
    assert result["nll"] == pytest.approx(expected, rel=1e-15)
    assert result["negative_elbo"] == math.inf  # an impossible sample makes the ELBO -inf, not the estimate


def test_ragged_or_misshapen_weights_raise():
    metric = evaluate.load(str(METRIC_DIR))
    metric.add_batch(log_weights=np.zeros((2, 10)))
    metric.add_batch(log_weights=[np.zeros(10), np.zeros(20)])
    with pytest.raises(ValueError, match="same number of importance samples K; got K = 10, 20"):
        metric.compute()
    with pytest.raises(ValueError, match=r"1-D array \[K\], got shape \(2, 3\)"):
        evaluate.load(str(METRIC_DIR)).add(log_weights=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        evaluate.load(str(METRIC_DIR)).add_batch(log_weights=np.zeros((2, 0)))
