"""Model cards for hypernetworks and sampled networks, rendered from the Jinja templates in `model_cards/`."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation import PICTURES, metric_name, sweep_markdown
from .targets import image_normalisation, is_stock, network_width, task_for, task_of, width_field

TEMPLATES = Path(__file__).parent / "model_cards"  # a link to the top-level model_cards/, packaged as data
LICENSE = "mit"



def _looks_like_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and name.count("/") == 1


def hypernetwork_card(
    hyper, repo_id: str | None = None, sweep: dict | None = None, training: dict | None = None,
    sweep_plot: str | None = None, pictures: list[str] | None = None,
) -> ModelCard:
    """The card of a trained hypernetwork: what it is, its widths and sizes, the sweep (table and `sweep_plot`),
    `pictures` (names in `evaluation.PICTURES` of files beside the card: what sampled networks make), how to
    sample."""
    config = hyper.config
    full = hyper.spec.skeleton(config.full_width)
    stock = is_stock(config.family)
    smoothing = config.smoothing
    dataset = (sweep or {}).get("dataset") or (training or {}).get("dataset")
    card_data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        tags=["neumeta", "hypernetwork", "implicit-neural-representation", config.family],
        datasets=[dataset] if _looks_like_hub_id(dataset) else None,
        pipeline_tag=task_of(hyper.spec.family_config),
        model_name=repo_id or f"{config.family}-hypernetwork",
    )
    layout = "a shared trunk" if config.shared_trunk else "one residual MLP head per generated tensor"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "hypernetwork.md"),
        model_name=repo_id or f"NeuMeta hypernetwork for {config.family}",
        repo_id=repo_id or "path/to/this/directory",
        family=config.family,
        full_width=config.full_width,
        width_range=config.width_range,
        train_widths=", ".join(map(str, config.train_widths)),
        morph=config.morph,
        width_field=width_field(config.family) if stock else None,
        architecture=type(full).__name__ if stock else None,
        inr_description=f"{config.num_layers} x {config.hidden_size}, {config.num_frequencies} Fourier frequencies, {layout}",
        inr_parameters=sum(p.numel() for p in hyper.inr.parameters()),
        network_parameters=sum(p.numel() for p in full.parameters()),
        smoothing=(
            f"total variation {smoothing['total_variation_before']:.4g} -> {smoothing['total_variation_after']:.4g}"
            if smoothing else "not applied"
        ),
        sampling=(
            f"`sample_model` averages {config.num_samples} generations, the first noise-free, the others with "
            "coordinate noise (`num_samples=1`: one, faster)"
            if config.num_samples > 1
            else "`sample_model` uses one noise-free generation (`num_samples` > 1 averages noisy ones)"
        ),
        training=training,
        example_width=(config.width_range[0] + config.width_range[1]) // 2,
        sweep_table=sweep_markdown(sweep) if sweep else None,
        sweep_plot=sweep_plot,
        metric_name=metric_name(sweep["metric"]) if sweep else None,
        pictures={name: PICTURES[name] for name in pictures or ()},
    )


def sampled_network_card(
    network, repo_id: str | None = None, hypernetwork: str | None = None, metrics: dict | None = None,
    dataset: str | None = None, split: str = "test", pictures: list[str] | None = None,
) -> ModelCard:
    """The card of a sampled network: width, size, its hypernetwork, measured metrics as `model-index`, and
    `pictures` (names in `evaluation.PICTURES` of the hypernetwork's pictures, copied beside the card)."""
    config = network.config
    task = task_of(config, type(network))
    stock = is_stock(config.model_type)
    width = network_width(config)
    image_mean, image_std = image_normalisation(config)
    results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset or "unknown",
            dataset_name=dataset or "unknown",
            dataset_split=split,
            metric_type=name,
            metric_value=value,
        )
        for name, value in (metrics or {}).items()
    ]
    name = repo_id or f"{config.model_type}-width-{width}"
    card_data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        tags=["neumeta", config.model_type] + ([task] if task else []),
        datasets=[dataset] if _looks_like_hub_id(dataset) else None,
        pipeline_tag=task,
        base_model=hypernetwork if _looks_like_hub_id(hypernetwork) else None,
        model_name=name,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "sampled_network.md"),
        model_name=name,
        repo_id=repo_id or "path/to/this/directory",
        family=config.model_type,
        width=width,
        architecture=type(network).__name__ if stock else None,
        width_field=width_field(config.model_type) if stock else None,
        layer_widths=getattr(config, "neumeta_layer_widths", None),
        auto_class=task_for(config, type(network)).auto_class_name,
        pipeline_tag=task,
        num_parameters=network.num_parameters(),
        hypernetwork=hypernetwork,
        hypernetwork_link=f"https://huggingface.co/{hypernetwork}" if _looks_like_hub_id(hypernetwork) else hypernetwork,
        num_channels=getattr(config, "num_channels", None),
        image_size=getattr(config, "image_size", None),
        image_mean=[round(v, 4) for v in image_mean],
        image_std=[round(v, 4) for v in image_std],
        results=results,
        pictures={name: PICTURES[name] for name in pictures or ()},
    )
