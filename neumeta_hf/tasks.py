"""What a task is, in one place: the pipeline task a target network serves and everything neumeta-hf does
differently for it.

A `Task` says
* the Auto class that loads such a network and the pipeline tag its card carries;
* the output the network returns: a `ModelOutput` with `logits` whose axis 1 runs over the classes
  (`[N, classes]` for image classification, `[N, classes, H, W]` per pixel for semantic segmentation);
* the task loss against the data's `labels` and the distillation loss between a generated network and the base
  (KL divergence of the class distributions at every output position);
* the scores it reports (`metrics`), computed through the `evaluate` modules shipped in `neumeta_hf/metrics`;
  the first is the main one, which sweeps, plots and benchmark tables show;
* what the permutation's function check compares (`function_output`).

`task_for(config)` gives a target network's task: a family's model class names it (`task`), a stock
transformers model's follows from its architecture (`targets.task_of`).
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

METRICS_DIR = Path(__file__).parent / "metrics"  # `evaluate.load("accuracy")` would need the Hub
IGNORE_INDEX = 255  # label of pixels that count for no class (unlabelled), as in scene_parse_150 layouts


class Task:
    """A pipeline task: its Auto class and pipeline tag, loss, distillation target, metrics and function check.

    The base class serves tasks neumeta-hf only samples networks for (stock text models): logits compared,
    cross-entropy over axis 1, no bundled metrics.
    """

    metrics: tuple[str, ...] = ()
    higher_is_better = True  # of the main metric
    ignore_index: int = -100  # a label that counts for no class

    def __init__(self, name: str, auto_class_name: str):
        self.name, self.auto_class_name = name, auto_class_name

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def auto_class(self):
        return getattr(transformers, self.auto_class_name)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over axis 1 against class indices (or class probabilities, e.g. mixed-up labels)."""
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_index)

    def distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """KL(teacher || student) of the temperature-softened class distributions, averaged over examples and
        output positions, times temperature^2 (Hinton et al., 2015)."""
        positions = logits.numel() // logits.shape[1]
        divergence = F.kl_div(
            F.log_softmax(logits / temperature, 1),
            F.log_softmax(teacher_logits / temperature, 1),
            log_target=True,
            reduction="sum",
        )
        return divergence / positions * temperature**2

    def function_output(self, outputs) -> torch.Tensor:
        """What must not change when hidden channels are permuted."""
        return outputs.logits

    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict[str, float]:
        raise NotImplementedError(f"neumeta-hf does not evaluate {self.name} networks")

    @staticmethod
    def load_metric(name: str):
        """One of the metric modules bundled in `neumeta_hf/metrics`, loaded from its file."""
        import evaluate  # imported here: it costs ~0.9 s, which `import neumeta_hf` need not pay

        if not (METRICS_DIR / name / f"{name}.py").is_file():
            bundled = sorted(path.name for path in METRICS_DIR.iterdir() if path.is_dir())
            raise ValueError(f"Unknown metric {name!r}; bundled metrics: {', '.join(bundled)}")
        return evaluate.load(str(METRICS_DIR / name))


class ImageClassification(Task):
    metrics = ("accuracy", "top5_accuracy")

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict[str, float]:
        """Accuracy and top-5 accuracy (fractions) on a dataset with `pixel_values` and `labels`."""
        device = device or next(model.parameters()).device
        metrics = {name: self.load_metric(name) for name in self.metrics}
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            logits = model(batch["pixel_values"].to(device)).logits.float().cpu()
            ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            metrics["accuracy"].add_batch(predictions=ranked[:, 0], references=batch["labels"])
            metrics["top5_accuracy"].add_batch(predictions=ranked.tolist(), references=batch["labels"])
        return {name: metric.compute()[name] for name, metric in metrics.items()}


class SemanticSegmentation(Task):
    metrics = ("mean_iou", "pixel_accuracy")
    ignore_index = IGNORE_INDEX

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict:
        """Mean IoU over the classes, pixel accuracy (fractions) and per-class IoU on a dataset with
        `pixel_values` and per-pixel `labels` ([H, W] class indices; `IGNORE_INDEX` counts for none)."""
        device = device or next(model.parameters()).device
        metric = self.load_metric("mean_iou")
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            logits = model(batch["pixel_values"].to(device)).logits.float()
            labels = batch["labels"]
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            metric.add_batch(predictions=logits.argmax(1).cpu().numpy(), references=labels.numpy())
        scores = metric.compute(num_labels=model.config.num_labels, ignore_index=self.ignore_index)
        # A class in neither maps has no IoU: None rather than NaN, which JSON cannot hold.
        scores["per_category_iou"] = [None if math.isnan(iou) else iou for iou in scores["per_category_iou"]]
        return scores


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        ImageClassification("image-classification", "AutoModelForImageClassification"),
        SemanticSegmentation("image-segmentation", "AutoModelForSemanticSegmentation"),
        Task("text-classification", "AutoModelForSequenceClassification"),
        Task("text-generation", "AutoModelForCausalLM"),
        Task("fill-mask", "AutoModelForMaskedLM"),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def auto_class(task_name: str):
    """The transformers Auto class that loads a network of this task."""
    return get_task(task_name).auto_class
