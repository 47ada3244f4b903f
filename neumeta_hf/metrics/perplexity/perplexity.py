"""Perplexity of a causal language model over token blocks, as an `evaluate` metric module shipped with neumeta_hf
so that it loads without the Hub."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Token-weighted perplexity: exp of the mean negative log-likelihood (nats) per predicted token, over every token
of every block but the block's first (the first has nothing before it to be predicted from).
"""
_INPUTS = """
Args:
    nll (list of float): each block's summed negative log-likelihood of its predicted tokens, in nats.
    tokens (list of int): each block's number of predicted tokens.
Returns:
    perplexity (float): exp(sum(nll) / sum(tokens)).
    nll_per_token (float): sum(nll) / sum(tokens), in nats.
    num_tokens (int): sum(tokens), the tokens the figures are over.
Examples:
    >>> metric = evaluate.load("neumeta_hf/metrics/perplexity")
    >>> metric.compute(nll=[2.0, 4.0], tokens=[1, 2])
    {'perplexity': 7.38905609893065, 'nll_per_token': 2.0, 'num_tokens': 3}
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, tokens):
        total = sum(tokens)
        if total == 0:
            raise ValueError("perplexity needs at least one predicted token")
        mean = math.fsum(nll) / total
        return {"perplexity": math.exp(mean), "nll_per_token": mean, "num_tokens": total}
