"""Metrics of sampled networks over a dataset (through `evaluate`), width sweeps, and their JSON / Markdown /
plot reports."""

import json
from pathlib import Path

import numpy as np
import torch

from .progress import progress_bar

SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png")
# Metric modules ship inside the package: `evaluate.load("accuracy")` would need the Hub.
METRICS_DIR = Path(__file__).parent / "metrics"
METRICS = ("accuracy", "top5_accuracy")


def load_metric(name: str):
    """One of the bundled metric modules (`accuracy`, `top5_accuracy`), loaded from its file."""
    import evaluate  # imported here: it costs ~0.9 s, which `import neumeta_hf` need not pay

    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; bundled metrics: {', '.join(METRICS)}")
    return evaluate.load(str(METRICS_DIR / name))


@torch.no_grad()
def evaluate_model(model, dataset, batch_size: int = 512, device=None) -> dict[str, float]:
    """Accuracy and top-5 accuracy (fractions) of an image classifier on a dataset with `pixel_values` and
    `labels`, batched, on the model's device."""
    device = device or next(model.parameters()).device
    metrics = {name: load_metric(name) for name in METRICS}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        logits = model(batch["pixel_values"].to(device)).logits.float().cpu()
        ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        metrics["accuracy"].add_batch(predictions=ranked[:, 0], references=batch["labels"])
        metrics["top5_accuracy"].add_batch(predictions=ranked.tolist(), references=batch["labels"])
    return {name: metric.compute()[name] for name, metric in metrics.items()}


def evaluate_accuracy(model, dataset, batch_size: int = 512, device=None) -> float:
    """Top-1 accuracy (a fraction)."""
    return evaluate_model(model, dataset, batch_size, device)["accuracy"]


def check_labels(dataset, num_labels: int, where: str = "the dataset"):
    """ValueError unless every label of `dataset` (a `datasets.Dataset`) is a class index below `num_labels`.
    Reads the label column alone: `labels`, or `label` under a transform that renames it (`data.load_splits`)."""
    raw = dataset.with_format("numpy")  # without the transform: images stay undecoded
    labels = np.asarray(raw["labels" if "labels" in raw.column_names else "label"])
    if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"{where} has labels {labels.min()}..{labels.max()}, but the network has num_labels={num_labels} "
            f"classes (labels 0..{num_labels - 1}); use data whose labels fit, or a network with more classes"
        )


def evaluate_width(hyper, dataset, width: int, num_samples: int | None = None, batch_size: int = 512) -> dict:
    """Metrics of the hypernetwork's sampled network of width `width`."""
    return evaluate_model(hyper.sample_model(width, num_samples=num_samples), dataset, batch_size)


def sweep(
    hyper,
    dataset,
    widths=None,
    num_samples: int | None = None,
    base_accuracy: float | None = None,
    dataset_name: str = "",
    split: str = "test",
    batch_size: int = 512,
) -> dict:
    """Accuracy of the sampled network at each width (default: every width in the trained range).

    Returns the `sweep.json` structure: metric, dataset, split, base {width, accuracy}, and one result per
    width with `seen_in_training` and `num_parameters`. Labels outside the networks' classes are a ValueError.
    """
    check_labels(dataset, hyper.base_network.config.num_labels)
    low, high = hyper.config.width_range
    widths = list(widths or range(low, high + 1))
    results = []
    for width in progress_bar(widths, desc="width sweep", unit="width"):
        network = hyper.sample_model(width, num_samples=num_samples)
        results.append(
            {
                "width": width,
                **evaluate_model(network, dataset, batch_size),
                "seen_in_training": width in hyper.config.train_widths,
                "num_parameters": network.num_parameters(),
            }
        )
    return {
        "metric": "accuracy",
        "dataset": dataset_name,
        "split": split,
        "num_samples": hyper.config.num_samples if num_samples is None else num_samples,
        "base": {"width": hyper.config.full_width, "accuracy": base_accuracy},
        "results": results,
    }


def sweep_markdown(result: dict) -> str:
    base = result["base"]
    lines = [
        f"Accuracy on {result['dataset']} ({result['split']}); base network (width {base['width']}): "
        + (f"{base['accuracy']:.4f}" if base["accuracy"] is not None else "n/a"),
        "",
        "| width | seen in training | parameters | accuracy |",
        "|---:|:---:|---:|---:|",
    ]
    for row in result["results"]:
        seen = "yes" if row["seen_in_training"] else "no"
        lines.append(f"| {row['width']} | {seen} | {row['num_parameters']:,} | {row['accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict, path: str | Path):
    """Accuracy against width: seen widths filled, unseen hollow, the base network as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([r["width"] for r in rows], [r["accuracy"] for r in rows], color="tab:blue", lw=1, zorder=1)
    for seen, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "white", "edgecolors": "tab:blue"})):
        chosen = [r for r in rows if r["seen_in_training"] == seen]
        label = "NeuMeta, width seen in training" if seen else "NeuMeta, unseen width"
        axis.scatter([r["width"] for r in chosen], [r["accuracy"] for r in chosen], s=28, label=label, zorder=2, **style)
    if result["base"]["accuracy"] is not None:
        axis.axhline(result["base"]["accuracy"], color="gray", ls="--", label=f"base network (width {result['base']['width']})")
    axis.set_xlabel("width")
    axis.set_ylabel(f"{result['split']} accuracy")
    axis.set_title(f"Sampled networks on {result['dataset']}")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_sweep(result: dict, directory: str | Path) -> list[Path]:
    """Write sweep.json, sweep.md and sweep.png into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in SWEEP_FILES]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(sweep_markdown(result))
    plot_sweep(result, paths[2])
    return paths
