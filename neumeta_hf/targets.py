"""What NeuMeta needs to know about a target network, in one place: its class, its width, the same config at
another width, and the channels that morph together.

Two kinds of targets answer these questions:

* our own families (`neumeta_hf/families`): the config has a `width` and the model lists its `channel_groups()`;
* stock transformers models, through `WIDTH_RULES`: a table keyed by `model_type` (as PEFT maps model types to
  target modules) that says which config field is the feed-forward width and which tensors, along which axis,
  follow it in every layer. NeuMeta then varies that width; the sampled network is an instance of the stock
  class and needs no remote code.

Adding a stock model type is one `WIDTH_RULES` entry: the config field, a regular expression matching a layer's
prefix in parameter names (the layer index as its group), and `{name inside the layer: axis}` for every
tensor whose rows or columns are the feed-forward hidden units. `tests/test_stock_models.py` checks a rule by
permuting those units, which must leave the model's function unchanged.
"""

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from transformers import CONFIG_MAPPING, PreTrainedConfig, PreTrainedModel

from .families import FAMILIES, ChannelGroup
from .tasks import Task, get_task


@dataclass(frozen=True)
class WidthRule:
    """Where the feed-forward width of one stock `model_type` lives.

    Args:
        width_field: the config field holding the width (`intermediate_size`).
        layer_pattern: a regular expression matching one layer's prefix in parameter names; group 1 is the
            layer index.
        members: tensor name inside the layer -> the axis indexed by the feed-forward hidden units. Names a
            model lacks (optional biases) are skipped.
        default_width: the width when `width_field` is None in a config (GPT-2: 4 x n_embd).
    """

    width_field: str
    layer_pattern: str
    members: dict[str, int]
    default_width: Callable[[PreTrainedConfig], int] | None = field(default=None, compare=False)


WIDTH_RULES: dict[str, WidthRule] = {
    "vit": WidthRule("intermediate_size", r"layers\.(\d+)\.", {"mlp.fc1.weight": 0, "mlp.fc1.bias": 0, "mlp.fc2.weight": 1}),
    "bert": WidthRule(
        "intermediate_size",
        r"encoder\.layer\.(\d+)\.",
        {"intermediate.dense.weight": 0, "intermediate.dense.bias": 0, "output.dense.weight": 1},
    ),
    "llama": WidthRule(
        "intermediate_size",
        r"layers\.(\d+)\.",
        {
            "mlp.gate_proj.weight": 0,
            "mlp.gate_proj.bias": 0,
            "mlp.up_proj.weight": 0,
            "mlp.up_proj.bias": 0,
            "mlp.down_proj.weight": 1,
        },
    ),
    # GPT-2's Conv1D layers store their weights transposed ([in, out]): c_fc's hidden units are its columns.
    "gpt2": WidthRule(
        "n_inner",
        r"h\.(\d+)\.",
        {"mlp.c_fc.weight": 1, "mlp.c_fc.bias": 0, "mlp.c_proj.weight": 0},
        default_width=lambda config: 4 * config.n_embd,
    ),
}

# What a classification head's class name says about the task (for pipeline tags and model cards).
_TASK_SUFFIXES = {
    "ForImageClassification": "image-classification",
    "ForSequenceClassification": "text-classification",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",
    "ForMaskedLM": "fill-mask",
}


def is_stock(model_type: str) -> bool:
    """Whether `model_type` is a stock transformers model (morphed through a width rule), not one of our families."""
    return model_type in WIDTH_RULES and model_type not in FAMILIES


def check_model_type(model_type: str) -> None:
    """ValueError for a model type that is neither a family nor a stock type with a width rule, listing both
    and saying how to add one."""
    if model_type in FAMILIES or model_type in WIDTH_RULES:
        return
    raise ValueError(
        f"Unknown family {model_type!r}; known families: {', '.join(FAMILIES)}; stock transformers model types "
        f"with a width rule: {', '.join(WIDTH_RULES)}. To support another stock model type, add one entry to "
        "neumeta_hf.targets.WIDTH_RULES (its width config field, layer prefix pattern and the tensors that follow "
        "the width; see the module's docstring)."
    )


def width_rule(model_type: str) -> WidthRule:
    check_model_type(model_type)
    if not is_stock(model_type):
        raise ValueError(f"{model_type!r} is a neumeta-hf family, not a stock model type with a width rule")
    return WIDTH_RULES[model_type]


def config_class(model_type: str) -> type[PreTrainedConfig]:
    check_model_type(model_type)
    return FAMILIES[model_type].config_class if model_type in FAMILIES else CONFIG_MAPPING[model_type]


def target_config(model_type: str, values: dict) -> PreTrainedConfig:
    """The config object of a target network from its dict (as stored in a hypernetwork's config)."""
    return config_class(model_type).from_dict(dict(values))


def width_field(model_type: str) -> str:
    """The config field that holds the width: `width` for a family, the width rule's field for a stock type."""
    return width_rule(model_type).width_field if is_stock(model_type) else "width"


def trainable_network_class(model_type: str) -> type[PreTrainedModel]:
    """The image classification class of a target type, for training one from data: the family's, or the stock
    type's `AutoModelForImageClassification` class (ViT); a text-only type is a ValueError."""
    check_model_type(model_type)
    if not is_stock(model_type):
        return FAMILIES[model_type]
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if name is None:
        vision = [t for t in WIDTH_RULES if t in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES]
        raise ValueError(
            f"{model_type} has no image classification model; the training scripts train image classifiers "
            f"(families, or stock types {', '.join(vision)}). Build a hypernetwork around a trained {model_type} "
            "model with NeuMetaModel.from_base_model instead"
        )
    return getattr(transformers, name)


def network_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    """The model class of a target network: the family's, or for a stock model the transformers class named first
    in `config.architectures` (which `NeuMetaModel.from_base_model` records)."""
    if not is_stock(config.model_type):
        check_model_type(config.model_type)
        return FAMILIES[config.model_type]
    names = config.architectures or []
    model_class = getattr(transformers, names[0], None) if names else None
    if model_class is None or getattr(model_class, "config_class", None) is not type(config):
        raise ValueError(
            f"the {config.model_type} config names no model class of that type in `architectures` (got {names}); "
            "set it, e.g. config.architectures = ['ViTForImageClassification']"
        )
    return model_class


def network_width(config: PreTrainedConfig) -> int:
    """The width NeuMeta varies: a family's `width`, or a stock model's feed-forward width."""
    if not is_stock(config.model_type):
        check_model_type(config.model_type)  # a stock type without a width rule has no `width` either
        return config.width
    rule = WIDTH_RULES[config.model_type]
    width = getattr(config, rule.width_field, None)
    return rule.default_width(config) if width is None and rule.default_width else width


def config_at_width(config: PreTrainedConfig, width: int) -> PreTrainedConfig:
    """The same config at width `width`, everything else unchanged."""
    if not is_stock(config.model_type):
        check_model_type(config.model_type)
        return config.at_width(width)
    narrower = copy.deepcopy(config)
    setattr(narrower, WIDTH_RULES[config.model_type].width_field, width)
    return narrower


def channel_groups(model: PreTrainedModel) -> list[ChannelGroup]:
    """Groups of coupled hidden channels: the family's own, or one per layer of a stock model (its feed-forward
    hidden units), in layer order."""
    model_type = model.config.model_type
    if not is_stock(model_type):
        check_model_type(model_type)
        return model.channel_groups()
    rule = WIDTH_RULES[model_type]
    pattern = re.compile(rf"^(.*?{rule.layer_pattern})(.+)$")
    layers: dict[int, list[tuple[str, int]]] = {}
    for name in model.state_dict():
        match = pattern.match(name)
        if match and match.group(3) in rule.members:
            layers.setdefault(int(match.group(2)), []).append((name, rule.members[match.group(3)]))
    if not layers:
        raise ValueError(
            f"No tensor of {type(model).__name__} matches the {model_type} width rule "
            f"({rule.layer_pattern} + {', '.join(rule.members)}); the model's layout differs from the rule's"
        )
    return [ChannelGroup.of(f"layer{index}.ffn", tuple(members), True) for index, members in sorted(layers.items())]


def task_of(config: PreTrainedConfig, model_class: type | None = None) -> str | None:
    """The pipeline task of a target network: what a family's model class names, or what a stock model's class
    says (`model_class`, else the first of `config.architectures`; None for a head neumeta-hf does not know)."""
    if not is_stock(config.model_type):
        return network_class(config).task
    name = model_class.__name__ if model_class is not None else (config.architectures or [""])[0]
    return next((task for suffix, task in _TASK_SUFFIXES.items() if name.endswith(suffix)), None)


def task_for(config: PreTrainedConfig, model_class: type | None = None) -> Task:
    """The `Task` of a target network (`task_of`); a stock model with an unknown head compares logits only."""
    name = task_of(config, model_class)
    return get_task(name) if name is not None else Task("unknown", "AutoModel")


def example_inputs(config: PreTrainedConfig, batch_size: int = 8, generator: torch.Generator | None = None) -> dict:
    """Random inputs for a function check: images for image models, token ids for text models."""
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        size = config.image_size
        return {"pixel_values": torch.randn(batch_size, config.num_channels, size, size, generator=generator)}
    return {"input_ids": torch.randint(0, config.vocab_size, (batch_size, 12), generator=generator)}


def image_normalisation(config: PreTrainedConfig) -> tuple[list[float], list[float]]:
    """(mean, std) per input channel that an image model expects: a family's, or what neumeta-hf's training wrote
    into a stock model's config; 0.5 (the stock image processor's default) where nothing was recorded."""
    default = [0.5] * getattr(config, "num_channels", 1)
    return list(getattr(config, "image_mean", None) or default), list(getattr(config, "image_std", None) or default)


def save_stock_image_processor(config: PreTrainedConfig, directory) -> None:
    """Save beside a stock vision model its stock image processor, set to its input size and normalisation, so
    that the directory works with `pipeline("image-classification")`; nothing for other models."""
    if config.model_type != "vit":
        return
    from transformers import ViTImageProcessor  # needs Pillow, which loading a model must not

    mean, std = image_normalisation(config)
    size = {"height": config.image_size, "width": config.image_size}
    ViTImageProcessor(size=size, image_mean=mean, image_std=std).save_pretrained(directory)
