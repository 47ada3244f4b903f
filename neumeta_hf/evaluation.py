"""Metrics of sampled networks over a dataset (through `evaluate`), width sweeps, and their JSON / Markdown /
plot reports."""

import json
from pathlib import Path

import torch

from .progress import progress_bar
from .targets import task_for
from .tasks import metric_name

SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png")


def evaluate_model(model, dataset, batch_size: int = 512, device=None) -> dict:
    """Every metric of the network's task (`neumeta_hf.tasks`) on a dataset with `pixel_values` and `labels`:
    accuracy and top-5 accuracy for an image classifier, mean IoU, pixel accuracy and per-class IoU for a
    segmenter; batched, on the model's device."""
    return task_for(model.config, type(model)).evaluate(model, dataset, batch_size, device)


def evaluate_score(model, dataset, batch_size: int = 512, device=None) -> float:
    """The task's main metric (accuracy, mean IoU) as a fraction."""
    return evaluate_model(model, dataset, batch_size, device)[task_for(model.config, type(model)).main_metric]


def check_labels(dataset, num_labels: int, where: str = "the dataset", ignore_index: int | None = None):
    """ValueError unless every label of `dataset` (a `datasets.Dataset`) is a class index below `num_labels`
    (or `ignore_index`: unlabelled pixels). Reads the label column alone -- `labels`, or the raw `label` or `mask`
    column under a transform that renames it (`data.load_splits`) -- in Arrow, so images stay undecoded and
    per-pixel masks are scanned without converting them to Python objects."""
    import pyarrow.compute as pc

    raw = dataset.with_format("arrow")
    column = next((c for c in ("labels", "label", "mask") if c in raw.column_names), None)
    if column is None or not len(raw):
        return
    labels = raw[:][column]
    while hasattr(labels.type, "value_type"):  # per-pixel masks: lists of lists of class indices
        labels = pc.list_flatten(labels)
    if ignore_index is not None:
        labels = pc.filter(labels, pc.not_equal(labels, ignore_index))
    low, high = pc.min_max(labels).values()
    low, high = low.as_py(), high.as_py()
    if low is not None and (low < 0 or high >= num_labels):
        raise ValueError(
            f"{where} has labels {low}..{high}, but the network has num_labels={num_labels} "
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
    base_score: float | None = None,
    dataset_name: str = "",
    split: str = "test",
    batch_size: int = 512,
) -> dict:
    """The task's metrics of the sampled network at each width (default: every width in the trained range).

    Returns the `sweep.json` structure: `hypernetwork` (its `fingerprint`), `metric` (the task's main metric,
    which tables and plots show) and
    `higher_is_better`, dataset, split, base {width, <metric>}, and one result per width with every metric,
    `seen_in_training` and `num_parameters`. Labels outside the networks' classes are a ValueError.
    """
    if isinstance(widths, (dict, set, str, bytes)):  # a dict would give its keys, a set an arbitrary order
        raise TypeError(f"widths must be a list of integer widths (or None: the trained range), got {widths!r}")
    task = task_for(hyper.spec.family_config)
    check_labels(dataset, task.label_count(hyper.base_network.config), ignore_index=task.ignore_index)
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
        "hypernetwork": hyper.fingerprint(),  # the figures belong to these weights (`find_sweep`)
        "metric": task.main_metric,
        "higher_is_better": task.higher_is_better,
        "dataset": dataset_name,
        "split": split,
        "num_samples": hyper.config.num_samples if num_samples is None else num_samples,
        "base": {"width": hyper.config.full_width, task.main_metric: base_score},
        "results": results,
    }


def worst_result(result: dict) -> dict:
    """The sweep row with the worst main metric (lowest, or highest where lower is better)."""
    pick = min if result.get("higher_is_better", True) else max
    return pick(result["results"], key=lambda row: row[result["metric"]])


def sweep_markdown(result: dict) -> str:
    base, metric = result["base"], result["metric"]
    name = metric_name(metric)
    lines = [
        f"{name[0].upper() + name[1:]} on {result['dataset']} ({result['split']}); base network "
        f"(width {base['width']}): " + (f"{base[metric]:.4f}" if base.get(metric) is not None else "n/a"),
        "",
        f"| width | seen in training | parameters | {name} |",
        "|---:|:---:|---:|---:|",
    ]
    for row in result["results"]:
        seen = "yes" if row["seen_in_training"] else "no"
        lines.append(f"| {row['width']} | {seen} | {row['num_parameters']:,} | {row[metric]:.4f} |")
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict, path: str | Path):
    """The main metric against width: seen widths filled, unseen hollow, the base network as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, metric = result["results"], result["metric"]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([r["width"] for r in rows], [r[metric] for r in rows], color="tab:blue", lw=1, zorder=1)
    for seen, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "white", "edgecolors": "tab:blue"})):
        chosen = [r for r in rows if r["seen_in_training"] == seen]
        if not chosen:  # no legend entry for what is not drawn
            continue
        label = "NeuMeta, width seen in training" if seen else "NeuMeta, unseen width"
        axis.scatter([r["width"] for r in chosen], [r[metric] for r in chosen], s=28, label=label, zorder=2, **style)
    if result["base"].get(metric) is not None:
        axis.axhline(result["base"][metric], color="gray", ls="--", label=f"base network (width {result['base']['width']})")
    axis.set_xlabel("width")
    better = "" if result.get("higher_is_better", True) else " (lower is better)"
    axis.set_ylabel(f"{result['split']} {metric_name(metric)}{better}")
    axis.set_title(f"Sampled networks on {result['dataset']}")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compression_widths(hyper) -> dict[int, str]:
    """The widths at 75%, 50% and 25% compression (of the full width's channels) and the full width, those in
    the hypernetwork's range, each with a caption."""
    full, (low, high) = hyper.config.full_width, hyper.config.width_range
    chosen = {}
    for kept in (0.25, 0.5, 0.75, 1.0):
        width = round(full * kept)
        if low <= width <= high and width not in chosen:
            chosen[width] = f"width {width} (full)" if kept == 1.0 else f"width {width} ({1 - kept:.0%} compression)"
    return chosen


@torch.no_grad()
def write_pictures(hyper, dataset, directory: str | Path, num_examples: int = 8) -> list[str]:
    """Draw into `directory` what networks sampled at `compression_widths` make of the first `num_examples` of
    `dataset` (the task's `draw_pictures`: segmentation predictions, generated samples and reconstructions).
    Returns the names written (`tasks.PICTURES`); none for classification."""
    task = task_for(hyper.spec.family_config)
    if not task.pictures:
        return []
    networks = {caption: hyper.sample_model(width) for width, caption in compression_widths(hyper).items()}
    return task.draw_pictures(networks, dataset[:num_examples], hyper.base_network.config, Path(directory))


def write_sweep(result: dict, directory: str | Path) -> list[Path]:
    """Write sweep.json, sweep.md and sweep.png into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in SWEEP_FILES]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(sweep_markdown(result))
    plot_sweep(result, paths[2])
    return paths
