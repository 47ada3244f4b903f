"""Top-5 accuracy as an `evaluate` metric module, shipped with neumeta_hf so that it loads without the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of examples whose reference class is among the five highest-scoring predictions."
_INPUTS = """
Args:
    predictions (list of list of int): class ids ranked by score, best first (at least five, or all classes).
    references (list of int): true class ids.
Returns:
    top5_accuracy (float): in [0, 1].
"""


class Top5Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        hits = [reference in ranked[:5] for ranked, reference in zip(predictions, references)]
        return {"top5_accuracy": float(np.mean(hits))}
