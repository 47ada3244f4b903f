"""Importance-sampled negative log-likelihood of a latent-variable generative model (a VAE), as an `evaluate` metric
module shipped with neumeta_hf so that it loads without the Hub.

Each example's K log-weights are stored as raw float64 bytes rather than as a sequence of floats: `evaluate` hands
sequence features back to `_compute` as Python lists, one float object per weight (10,000 examples x K = 1,000 is
ten million of them), against one `np.frombuffer` over the joined bytes.
"""

import datasets
import evaluate
import numpy as np
from scipy.special import logsumexp

_DTYPE = np.dtype("<f8")  # float64: weights are sums of thousands of per-pixel terms, and logsumexp subtracts

_DESCRIPTION = """
Negative log-likelihood -log p(x) in nats, estimated per example from K importance samples z_k ~ q(z | x)
(Burda et al., 2016): log p(x) ~ logsumexp_k(w_k) - log K, with log-weights w_k = log p(x, z_k) - log q(z_k | x).
In expectation that estimate is a lower bound on log p(x) that tightens as K grows; the mean log-weight estimates
the looser ELBO, reported alongside (negated).
"""
_INPUTS = """
Args:
    log_weights (list of 1-D float arrays [K], or one array [N, K]): each example's importance log-weights
        log p(x, z_k) - log q(z_k | x); K must be the same for every example.
Returns:
    nll (float): mean over examples of -(logsumexp(log_weights) - log K), in nats.
    negative_elbo (float): mean over examples of -mean(log_weights), in nats; never below nll (the mean of the
        log-weights is at most their log-mean-exp).
    num_importance_samples (int): K.
Examples:
    >>> import numpy as np
    >>> metric = evaluate.load("neumeta_hf/metrics/nll")
    >>> metric.compute(log_weights=np.log([[1.0, 3.0], [2.0, 2.0]]))
    {'nll': -0.6931471805599454, 'negative_elbo': -0.6212266624470001, 'num_importance_samples': 2}
"""


def importance_scores(log_weights: np.ndarray) -> dict:
    """NLL, negative ELBO (nats, means over examples) and K of an [N, K] array of log-weights."""
    num_samples = log_weights.shape[1]
    log_likelihood = logsumexp(log_weights, axis=1) - np.log(num_samples)
    return {
        "nll": float(-log_likelihood.mean()),
        "negative_elbo": float(-log_weights.mean()),
        "num_importance_samples": num_samples,
    }


def _encode(log_weights) -> bytes:
    log_weights = np.asarray(log_weights, dtype=_DTYPE)
    if log_weights.ndim != 1 or not log_weights.size:
        raise ValueError(f"each example's log_weights must be a non-empty 1-D array [K], got shape {log_weights.shape}")
    return log_weights.tobytes()


class NLL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"log_weights": datasets.Value("binary")}),
        )

    def add_batch(self, *, log_weights=None, **kwargs):
        """Add a batch of examples' log-weights (a list of [K] arrays or one [N, K] array), stored as bytes."""
        super().add_batch(log_weights=[_encode(weights) for weights in log_weights], **kwargs)

    def add(self, *, log_weights=None, **kwargs):
        """Add one example's [K] log-weights, stored as bytes."""
        super().add(log_weights=_encode(log_weights), **kwargs)

    def _compute(self, log_weights):
        sizes = np.unique(np.fromiter(map(len, log_weights), dtype=np.int64, count=len(log_weights)))
        if len(sizes) > 1:  # the mean over examples would mix estimators of different tightness
            counts = ", ".join(str(size // _DTYPE.itemsize) for size in sizes)
            raise ValueError(f"every example needs the same number of importance samples K; got K = {counts}")
        return importance_scores(np.frombuffer(b"".join(log_weights), dtype=_DTYPE).reshape(len(log_weights), -1))
