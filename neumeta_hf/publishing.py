"""Publishing: model cards (rendered from the Jinja templates in `model_cards/`), saving a sampled network with
its card and pictures, and uploads to the Hub in one commit. The only module that talks to the Hub: model files
(the families', shipped as remote code) hold no card or upload code.
"""

import contextlib
import json
import os
import shutil
import tempfile
import types
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_session
from huggingface_hub.errors import HfHubHTTPError
from transformers import PreTrainedModel

from .evaluation import sweep_markdown
from .targets import image_normalisation, network_width, target, task_for
from .tasks import PICTURES, metric_name

TEMPLATES = Path(__file__).parent / "model_cards"  # a link to the top-level model_cards/, packaged as data
# The licence of weights whose base network's card declares none (neumeta-hf's own); the hypernetwork config's
# `license` (inherited from the base's card, or set in the recipe) takes precedence.
DEFAULT_LICENSE = "mit"
# What a failed Hub call raises: the Hub's refusals, offline mode (an OSError), an invalid repo id (a ValueError)
# and connection failures, which raise the HTTP client's own error, the base class of HfHubHTTPError.
HUB_ERRORS = (OSError, ValueError, *HfHubHTTPError.__bases__)

# ------------------------------------------------------------------------------------------------------ cards


def looks_like_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and name.count("/") == 1


def _local_name(path: str | None) -> str | None:
    """A local directory as a card shows it: its last two parts (`run/hypernetwork`), never the machine's path."""
    return "/".join(Path(path).resolve().parts[-2:]) if path else None


def base_card_license(source: str | None) -> str | None:
    """The licence a base network's model card declares, from its local directory's README.md or its Hub repo;
    None where there is no card, it names no licence, or the Hub cannot be reached."""
    if not source:
        return None
    readme = Path(source) / "README.md"
    if not readme.is_file() and not looks_like_hub_id(source):
        return None
    try:
        return ModelCard.load(readme if readme.is_file() else source).data.license
    except HUB_ERRORS:
        return None


def training_status(config) -> str:
    """What a hypernetwork's config says of its training, in words for its card and `info`."""
    if config.trained_steps == 0:
        return "untrained: the starting point from_base_model builds (train it with training/train.py)"
    if config.trained_steps is None:
        return "not recorded (saved before neumeta-hf recorded it)"
    return f"{config.trained_steps:,} optimiser steps"


def hypernetwork_card(
    hyper, repo_id: str | None = None, sweep: dict | None = None, training: dict | None = None,
    sweep_plot: str | None = None, pictures: list[str] | None = None,
) -> ModelCard:
    """The card of a trained hypernetwork: what it is, its widths and sizes, the sweep (table and `sweep_plot`),
    `pictures` (names in `tasks.PICTURES` of files beside the card: what sampled networks make), how to
    sample."""
    config = hyper.config
    full = hyper.spec.skeleton(config.full_width)
    stock = not target(config.family).needs_remote_code  # the card names the stock class and its width field
    smoothing = config.smoothing
    dataset = (sweep or {}).get("dataset") or (training or {}).get("dataset")
    card_data = ModelCardData(
        library_name="neumeta-hf",  # transformers alone cannot load it: the card's snippet installs neumeta-hf
        license=config.license or DEFAULT_LICENSE,
        tags=["neumeta", "hypernetwork", "implicit-neural-representation", config.family],
        datasets=[dataset] if looks_like_hub_id(dataset) else None,
        base_model=config.base_model if looks_like_hub_id(config.base_model) else None,
        pipeline_tag=target(config.family).task_name(hyper.spec.family_config),
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
        untrained=config.trained_steps == 0,
        training_status=training_status(config),
        morph=config.morph,
        width_field=target(config.family).width_field if stock else None,
        architecture=type(full).__name__ if stock else None,
        inr_description=f"{config.num_layers} x {config.hidden_size}, {config.num_frequencies} Fourier frequencies, {layout}",
        **hyper.parameter_counts(),
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
    dataset: str | None = None, split: str = "test", pictures: list[str] | None = None, license: str | None = None,
) -> ModelCard:
    """The card of a sampled network: width, size, its hypernetwork, measured metrics as `model-index`,
    `pictures` (names in `tasks.PICTURES` of the hypernetwork's pictures, copied beside the card) and `license`
    (its hypernetwork's, `NeuMetaConfig.license`; None: `DEFAULT_LICENSE`)."""
    config = network.config
    kind = target(config.model_type)
    task = kind.task_name(config, type(network))
    stock = not kind.needs_remote_code  # the card names the stock class and its width field
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
        license=license or DEFAULT_LICENSE,
        tags=["neumeta", config.model_type] + ([task] if task else []),
        datasets=[dataset] if looks_like_hub_id(dataset) else None,
        pipeline_tag=task,
        base_model=hypernetwork if looks_like_hub_id(hypernetwork) else None,
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
        width_field=kind.width_field if stock else None,
        layer_widths=getattr(config, "neumeta_layer_widths", None),
        auto_class=task_for(config, type(network)).auto_class_name,
        pipeline_tag=task,
        num_parameters=network.num_parameters(),
        # A local directory is named, not linked: its path means nothing on another machine or on the Hub.
        hypernetwork=hypernetwork if looks_like_hub_id(hypernetwork) else _local_name(hypernetwork),
        hypernetwork_link=f"https://huggingface.co/{hypernetwork}" if looks_like_hub_id(hypernetwork) else None,
        num_channels=getattr(config, "num_channels", None),
        image_size=getattr(config, "image_size", None),
        image_mean=[round(v, 4) for v in image_mean],
        image_std=[round(v, 4) for v in image_std],
        results=results,
        pictures={name: PICTURES[name] for name in pictures or ()},
    )


# ------------------------------------------------------------------------------------- saving sampled networks


def attach_card(network: PreTrainedModel, card, pictures: dict[str, Path] | None = None) -> PreTrainedModel:
    """Make this network instance publish itself with `card` (a `ModelCard`, or a callable rendering one, so that
    networks never saved never pay for rendering) and `pictures` (file name -> where the file is): its
    `save_pretrained` also writes README.md, the pictures and its preprocessor (`save_preprocessor`), and its `push_to_hub` uploads all that in one commit. The
    class is unchanged: saved, a stock network still needs no remote code."""
    network.model_card, network.card_pictures = card, dict(pictures or {})
    network.save_pretrained = types.MethodType(_save_with_card, network)
    network.push_to_hub = types.MethodType(_push_with_card, network)
    return network


def _save_with_card(network: PreTrainedModel, save_directory, *args, **kwargs):
    type(network).save_pretrained(network, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        save_preprocessor(network, save_directory)
        card = network.model_card
        (card() if callable(card) else card).save(os.path.join(save_directory, "README.md"))
        for name, source in network.card_pictures.items():
            shutil.copy(source, os.path.join(save_directory, name))


def _push_with_card(network: PreTrainedModel, repo_id: str, commit_message: str | None = None,
                    private: bool | None = None, token=None):
    """What `save_pretrained` writes, card included, in one commit (transformers' own push would replace the
    card with a generic one). A failed upload raises and changes nothing locally."""
    config = network.config
    message = commit_message or f"Upload {config.model_type} of width {network_width(config)} sampled by NeuMeta"
    with tempfile.TemporaryDirectory() as directory:
        network.save_pretrained(directory)
        if callable(network.model_card):  # rendered again for the repo: its snippets name it
            network.model_card(repo_id=repo_id).save(os.path.join(directory, "README.md"))
        return upload_in_one_commit(directory, repo_id, message, private=private, token=token)


def save_network(model: PreTrainedModel, directory):
    """`save_pretrained`, plus what feeds it (`save_preprocessor`), so that the directory works with
    `pipeline(...)`."""
    model.save_pretrained(directory)
    save_preprocessor(model, directory)


PREPROCESSOR_FILES = {"preprocessor_config.json": "AutoImageProcessor", "tokenizer_config.json": "AutoTokenizer"}


def load_preprocessor(source: str):
    """The image processor or tokenizer a stock model's directory or Hub repo comes with (None: neither), to
    travel with every network sampled from it."""
    import transformers
    from transformers.utils import cached_file

    for name, auto_class in PREPROCESSOR_FILES.items():
        if cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False):  # fmt: skip
            return getattr(transformers, auto_class).from_pretrained(source)
    return None


def save_preprocessor(network: PreTrainedModel, directory):
    """Beside a saved network: the preprocessor it carries from its base (`network.preprocessor`, set by
    `NeuMetaModel.sample_model`), else the one its adapter builds from its config (a stock vision type's image
    processor at its input size and normalisation; families write their own; nothing for text without one)."""
    preprocessor = getattr(network, "preprocessor", None)
    if preprocessor is not None:
        preprocessor.save_pretrained(directory)
    else:
        target(network.config.model_type).save_processor(network.config, directory)


# ----------------------------------------------------------------------------------------------------- uploads


def push_hypernetwork(
    hyper, repo_id: str, sweep: dict | None = None, sweep_plot: str | None = None, training: dict | None = None,
    commit_message: str | None = None, private: bool | None = None, token=None, pictures: list[str] | None = None,
    allow_untrained: bool = False,
):
    """Upload a hypernetwork's config, weights, model card (with the sweep table when given), the sweep plot and
    `pictures` (files named as in `tasks.PICTURES`, from `evaluation.write_pictures`) in one commit
    (`NeuMetaModel.push_to_hub`). An untrained one (`trained_steps` 0) only with `allow_untrained`."""
    if hyper.config.trained_steps == 0 and not allow_untrained:
        raise ValueError("this hypernetwork is untrained (trained_steps 0: as from_base_model built it), so its "
                         "networks are only the base resampled; train it first, or pass allow_untrained=True "
                         "(CLI: --untrained) to upload it as it is")  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        hyper.save_pretrained(directory)
        if sweep is not None:
            Path(directory, "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
        if sweep_plot is not None:
            shutil.copy(sweep_plot, Path(directory, "sweep.png"))
        for picture in pictures or ():
            shutil.copy(picture, Path(directory, Path(picture).name))
        card = hypernetwork_card(
            hyper, repo_id=repo_id, sweep=sweep, training=training,
            sweep_plot="sweep.png" if sweep_plot else None, pictures=[Path(p).name for p in pictures or ()],
        )  # fmt: skip
        card.save(Path(directory, "README.md"))
        message = commit_message or f"Upload NeuMeta hypernetwork for {hyper.config.family}"
        return upload_in_one_commit(directory, repo_id, message, private=private, token=token)


def upload_in_one_commit(directory, repo_id: str, commit_message: str, private: bool | None = None, token=None):
    """Create `repo_id` if needed and upload everything in `directory` as one commit. A failed upload raises
    RuntimeError with a one-line reason (a Hub that stops answering: after `hub_timeout()` seconds);
    `directory` is only read."""
    api = HfApi(token=token)
    try:
        with waiting_at_most(hub_timeout()):
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            return api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=commit_message)
    except HUB_ERRORS as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0].rstrip(".")
        if "Timeout" in type(error).__name__:
            reason = (f"the Hub did not answer ({hub_timeout():g} s per request, each retried by huggingface_hub: "
                      f"{reason}); set {HUB_TIMEOUT_VARIABLE} to wait longer")  # fmt: skip
        raise RuntimeError(f"upload to {repo_id} failed: {reason}; nothing local was changed") from error


HUB_TIMEOUT_VARIABLE = "NEUMETA_HUB_TIMEOUT"


def hub_timeout() -> float:
    """Seconds an upload waits for each connection, read and write ($NEUMETA_HUB_TIMEOUT, default 120)."""
    value = os.environ.get(HUB_TIMEOUT_VARIABLE, "120")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{HUB_TIMEOUT_VARIABLE}={value!r}: give the seconds an upload may wait, e.g. 120")
    return seconds


@contextlib.contextmanager
def waiting_at_most(seconds: float):
    """Inside: every request of huggingface_hub's shared HTTP client (which by default waits forever) waits at
    most `seconds` to connect, and for each read and write."""
    session = get_session()

    def limit(request):
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), seconds)

    session.event_hooks["request"].append(limit)
    try:
        yield
    finally:
        session.event_hooks["request"].remove(limit)
