"""What NeuMeta needs to know about a target network, in one place: one adapter per kind of target.

`target(model_type)` is the `Target` that answers every question neumeta-hf asks about a network of that type
(the contract is `Target`'s docstring). Two kinds exist:

* `FamilyTarget`: one of our own families (`neumeta_hf/families`), registered with `register_family`; the config
  has a `width` and the model lists its `channel_groups()`; saved networks carry their code (remote code);
* `StockTarget`: a stock transformers model, through a `WidthRule` in `WIDTH_RULES`: a table keyed by
  `model_type` (as PEFT maps model types to target modules) that says which config field is the feed-forward
  width and which tensors, along which axis, follow it in every layer. NeuMeta then varies that width; the
  sampled network is an instance of the stock class and needs no remote code.

Adding a family is its two files and one `register_family(ModelClass)` call at the end of this module. Adding a
stock model type is one `WIDTH_RULES` entry: the config field, a regular expression matching a layer's prefix in
parameter names (the layer index as its group), `{name inside the layer: axis}` for every tensor whose rows or
columns are the feed-forward hidden units, and for a vision type its stock image processor.
`tests/test_stock_models.py` checks a rule by permuting those units, which must leave the model's function
unchanged. A type without an entry whose feed-forward blocks follow a layout other types share (`LAYOUTS`:
Llama's gated MLP, BERT's feed-forward) is found out by the same check (`discover_layout`) and served by it.
"""

import copy
import dataclasses
import difflib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig, PreTrainedModel

from .families import (
    ChannelGroup,
    ChannelSlice,
    NeuMetaFamilyModel,
    NeuMetaLeNetForImageClassification,
    NeuMetaMLPForImageClassification,
    NeuMetaResNetCifarForImageClassification,
    NeuMetaUNetForSemanticSegmentation,
    NeuMetaVAEModel,
)
from .tasks import Task, auto_class, get_task


class Target:
    """What neumeta-hf asks of one kind of target network (one subclass per kind, one instance per model type).

    The contract -- every other module asks these questions here, never "is this a family?":

    * `config_class`, `width_field` (the config field holding the width NeuMeta varies), `network_width(config)`
      and `config_at_width(config, width)` (the same config at another width, everything else unchanged);
    * `network_class(config)`: the class of a network with this config; `trainable_network_class()`: the class
      the training scripts train from data (an image classifier for stock types); `standalone_fields(width)`:
      the config fields of a network trained on its own at `width` (every layer following the width);
    * `channel_groups(model)`: the groups of coupled hidden channels, in the order NeuMeta morphs them;
      `producers(model, group, state)`: the member slices that produce a group's channels -- weights along their
      output axis, then biases (L1 pruning's importance; the nested stage's per-width scale and shift);
    * `task_name(config, model_class)`: the pipeline task (`neumeta_hf.tasks`), None for a head neumeta-hf does
      not know;
    * `hypernetwork_config(values, morph)`: the target config a hypernetwork stores, for a morph mode;
      `base_config_values(base)`: what a hypernetwork records of its base network's config;
    * `save_processor(config, directory)`: write beside a saved network what `pipeline(...)` needs to feed it;
    * facts: `needs_remote_code` (saved networks carry their model code), `independent_layers` (each layer's
      width may differ: mix'n'match), `folds_fixed_axes` (the default of `NeuMetaConfig.fold_fixed_axes`),
      `slimmable_kind` (what its nested-width baseline is called).
    """

    config_class: type[PreTrainedConfig]
    width_field: str
    needs_remote_code: bool
    independent_layers: bool
    folds_fixed_axes: bool
    slimmable_kind: str

    def __init__(self, model_type: str):
        self.model_type = model_type

    def __repr__(self):
        return f"{type(self).__name__}({self.model_type!r})"

    def network_width(self, config: PreTrainedConfig) -> int:
        raise NotImplementedError

    def config_at_width(self, config: PreTrainedConfig, width: int) -> PreTrainedConfig:
        raise NotImplementedError

    def network_class(self, config: PreTrainedConfig) -> type[PreTrainedModel]:
        raise NotImplementedError

    def trainable_network_class(self) -> type[PreTrainedModel]:
        raise NotImplementedError

    def standalone_fields(self, width: int) -> dict:
        return {self.width_field: width}

    def channel_groups(self, model: PreTrainedModel) -> list[ChannelGroup]:
        raise NotImplementedError

    def producers(self, model: PreTrainedModel, group: ChannelGroup, state: dict) -> list[ChannelSlice]:
        raise NotImplementedError

    def filters(self, model: PreTrainedModel, group: ChannelGroup, state: dict) -> list[torch.Tensor]:
        """The weights that produce a group's channels, channels first."""
        producers = self.producers(model, group, state)
        return [m.of(state[m.tensor]).movedim(m.axis, 0) for m in producers if state[m.tensor].dim() > 1]

    def task_name(self, config: PreTrainedConfig, model_class: type | None = None) -> str | None:
        raise NotImplementedError

    def hypernetwork_config(self, values: dict, morph: str) -> PreTrainedConfig:
        raise NotImplementedError

    def base_config_values(self, base: PreTrainedModel) -> dict:
        return base.config.to_dict()

    def save_processor(self, config: PreTrainedConfig, directory) -> None:
        """Nothing by default."""


class FamilyTarget(Target):
    """One of neumeta-hf's families: the config's `width`, the model's own `channel_groups()` and task."""

    needs_remote_code, independent_layers, folds_fixed_axes, slimmable_kind = True, False, False, "US-Nets"
    width_field = "width"

    def __init__(self, model_class: type[NeuMetaFamilyModel]):
        super().__init__(model_class.config_class.model_type)
        self.model_class = model_class
        self.config_class = model_class.config_class

    def network_width(self, config):
        return config.width

    def config_at_width(self, config, width):
        return config.at_width(width)

    def network_class(self, config):
        return self.model_class

    def trainable_network_class(self):
        return self.model_class

    def standalone_fields(self, width):
        return {"width": width, "morph": "all"}  # with morph "last" only the last layer would follow the width

    def channel_groups(self, model):
        return model.channel_groups()

    def producers(self, model, group, state):
        """Multi-dimensional weights along their output axis (axis 1 of a transposed convolution), then the
        biases of the same layers."""
        weights = [m for m in group.members if state[m.tensor].dim() > 1 and m.axis == output_axis(model, m.tensor)]
        layers = {m.tensor.rpartition(".")[0] for m in weights}
        return weights + [m for m in group.members if m.tensor in {f"{layer}.bias" for layer in layers}]

    def task_name(self, config, model_class=None):
        return self.model_class.task

    def hypernetwork_config(self, values, morph):
        unknown = unknown_fields(self.config_class, values)
        if unknown:  # our own families: every field is known, so an unknown key is a typo or another family's
            raise ValueError(f"family_config has no field {unknown[0]!r} for {self.model_type}."
                             f"{_close_match(unknown[0], self.config_class)} Its own fields (beside PreTrainedConfig's): "
                             f"{', '.join(sorted(own_fields(self.config_class)))}")  # fmt: skip
        return self.config_class.from_dict({**values, "morph": morph})


@dataclass(frozen=True)
class WidthRule:
    """Where the feed-forward width of one stock `model_type` lives.

    Args:
        width_field: the config field holding the width (`intermediate_size`).
        layer_pattern: a regular expression matching one layer's prefix in parameter names; group 1 is the
            layer index.
        members: tensor name inside the layer -> the axis indexed by the feed-forward hidden units. Names a
            model lacks (optional biases) are skipped. The first is the units' producer (their input weights).
        default_width: the width when `width_field` is None in a config (GPT-2: 4 x n_embd).
        image_processor: for a vision type, the transformers image processor class that feeds it, with
            `processor_options` (DeiT's would centre-crop to 224 pixels).
    """

    width_field: str
    layer_pattern: str
    members: dict[str, int]
    default_width: Callable[[PreTrainedConfig], int] | None = field(default=None, compare=False)
    image_processor: str | None = None
    processor_options: dict = field(default_factory=dict)


# Shared by the model types with the same feed-forward layout (and the same tensor names).
_VISION_MLP = {"mlp.fc1.weight": 0, "mlp.fc1.bias": 0, "mlp.fc2.weight": 1}
_BERT_FFN = WidthRule(
    "intermediate_size",
    r"encoder\.layer\.(\d+)\.",
    {"intermediate.dense.weight": 0, "intermediate.dense.bias": 0, "output.dense.weight": 1},
)
_GATED_MLP = WidthRule(  # Llama's SwiGLU block: gate and up projections, then down
    "intermediate_size",
    r"layers\.(\d+)\.",
    {
        "mlp.gate_proj.weight": 0,
        "mlp.gate_proj.bias": 0,
        "mlp.up_proj.weight": 0,
        "mlp.up_proj.bias": 0,
        "mlp.down_proj.weight": 1,
    },
)
WIDTH_RULES: dict[str, WidthRule] = {
    "vit": WidthRule("intermediate_size", r"layers\.(\d+)\.", _VISION_MLP, image_processor="ViTImageProcessor"),
    "deit": WidthRule(
        "intermediate_size", r"layers\.(\d+)\.", _VISION_MLP, image_processor="DeiTImageProcessor",
        processor_options={"do_center_crop": False},
    ),  # fmt: skip
    "bert": _BERT_FFN,
    "roberta": _BERT_FFN,
    "distilbert": WidthRule(
        "hidden_dim", r"transformer\.layer\.(\d+)\.", {"ffn.lin1.weight": 0, "ffn.lin1.bias": 0, "ffn.lin2.weight": 1}
    ),
    "llama": _GATED_MLP,
    "mistral": _GATED_MLP,
    "qwen2": _GATED_MLP,
    "qwen3": _GATED_MLP,
    "gemma": _GATED_MLP,
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


class StockTarget(Target):
    """A stock transformers model whose feed-forward width follows its `WidthRule`; every layer's width is its
    own (one channel group per layer), and the sampled network is an instance of the stock class."""

    needs_remote_code, independent_layers, folds_fixed_axes = False, True, True
    slimmable_kind = "MatFormer-style nested FFN"

    def __init__(self, model_type: str, rule: WidthRule):
        super().__init__(model_type)
        self.rule = rule
        self.width_field = rule.width_field

    @property
    def config_class(self):
        return CONFIG_MAPPING[self.model_type]

    def network_width(self, config):
        width = getattr(config, self.rule.width_field, None)
        return self.rule.default_width(config) if width is None and self.rule.default_width else width

    def config_at_width(self, config, width):
        narrower = copy.deepcopy(config)
        setattr(narrower, self.rule.width_field, width)
        return narrower

    def network_class(self, config):
        return architecture_class(config)

    def trainable_network_class(self):
        """The class the training scripts train for this type: its `AutoModelForImageClassification` class (ViT),
        else its `AutoModelForCausalLM` class (Llama, GPT-2); a type with neither is a ValueError."""
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        )

        name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(self.model_type)
        if isinstance(name, tuple):  # DeiT's: its classifier, then the one with a distillation head
            name = name[0]
        name = name or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(self.model_type)
        if name is None:
            trainable = [t for t in WIDTH_RULES if t in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
                         or t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES]  # fmt: skip
            raise ValueError(
                f"{self.model_type} has no image classification or causal language model; the training scripts "
                f"train image classifiers and language models (families, or stock types {', '.join(trainable)}). "
                f"Build a hypernetwork around a trained {self.model_type} model with NeuMetaModel.from_base_model "
                "instead"
            )
        return getattr(transformers, name)

    def channel_groups(self, model):
        """One group per layer (its feed-forward hidden units), in layer order."""
        pattern = re.compile(rf"^(.*?{self.rule.layer_pattern})(.+)$")
        layers: dict[int, list[tuple[str, int]]] = {}
        for name in model.state_dict():
            match = pattern.match(name)
            if match and match.group(3) in self.rule.members:
                layers.setdefault(int(match.group(2)), []).append((name, self.rule.members[match.group(3)]))
        if not layers:
            raise ValueError(
                f"No tensor of {type(model).__name__} matches the {self.model_type} width rule "
                f"({self.rule.layer_pattern} + {', '.join(self.rule.members)}); the model's layout differs from "
                "the rule's"
            )
        return [ChannelGroup.of(f"layer{index}.ffn", tuple(members), True) for index, members in sorted(layers.items())]

    def producers(self, model, group, state):
        """The rule's first tensor (the units' input weights; GPT-2's Conv1D stores it transposed), then its bias."""
        producer = next(iter(self.rule.members))
        bias = producer.rpartition(".")[0] + ".bias"
        return [m for m in group.members if m.tensor.endswith(producer)] + [
            m for m in group.members if m.tensor.endswith(bias)
        ]

    def task_name(self, config, model_class=None):
        """What the model class's name says (`model_class`, else the first of `config.architectures`)."""
        name = model_class.__name__ if model_class is not None else (config.architectures or [""])[0]
        return next((task for suffix, task in _TASK_SUFFIXES.items() if name.endswith(suffix)), None)

    def hypernetwork_config(self, values, morph):
        if morph != "all":
            raise ValueError(f"a stock {self.model_type} model morphs its feed-forward width in every layer: use morph='all'")
        unknown = unknown_fields(self.config_class, values)
        if unknown:  # a warning: configs saved by other transformers versions may carry fields this one dropped
            warnings.warn(f"family_config has field(s) {', '.join(unknown)} that {self.config_class.__name__} does "
                          f"not know; they are kept but change nothing.{_close_match(unknown[0], self.config_class)}",
                          stacklevel=4)  # fmt: skip
        config = self.config_class.from_dict(dict(values))
        self.network_class(config)  # its architectures name the model class
        # Stored explicitly (GPT-2 leaves n_inner None for 4 x n_embd), so that the full width reads it.
        setattr(config, self.width_field, self.network_width(config))
        return config

    def base_config_values(self, base):
        return {**base.config.to_dict(), "architectures": [type(base).__name__]}  # the class every sample will be

    def save_processor(self, config, directory):
        """The type's stock image processor, set to the input size and normalisation, so that the directory
        works with `pipeline("image-classification")`; nothing for a text type."""
        if self.rule.image_processor is None:
            return
        processor_class = getattr(transformers, self.rule.image_processor)  # needs Pillow: imported when used
        mean, std = image_normalisation(config)
        size = {"height": config.image_size, "width": config.image_size}
        processor = processor_class(size=size, image_mean=mean, image_std=std, **self.rule.processor_options)
        processor.save_pretrained(directory)


def architecture_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    """The transformers class named first in a stock config's `architectures` (which `base_config_values`
    records)."""
    names = config.architectures or []
    model_class = getattr(transformers, names[0], None) if names else None
    if model_class is None or getattr(model_class, "config_class", None) is not type(config):
        raise ValueError(
            f"the {config.model_type} config names no model class of that type in `architectures` (got "
            f"{names}); set it, e.g. config.architectures = ['ViTForImageClassification']"
        )
    return model_class


FAMILIES: dict[str, type[NeuMetaFamilyModel]] = {}
_TARGETS: dict[str, Target] = {model_type: StockTarget(model_type, rule) for model_type, rule in WIDTH_RULES.items()}
# The feed-forward layouts that several model types share, by name. A stock type without a WIDTH_RULES entry
# whose model follows one of them (`discover_layout`) is served by it; its hypernetwork records the layout's name
# (`NeuMetaConfig.width_layout`), so that loading it registers the type again (`use_layout`).
LAYOUTS: dict[str, WidthRule] = {"gated-mlp": _GATED_MLP, "bert-ffn": _BERT_FFN}


def is_known(model_type: str) -> bool:
    return model_type in _TARGETS


def use_layout(model_type: str, layout: str) -> None:
    """Serve stock `model_type` with the `LAYOUTS` entry `layout` (a type with its own entry keeps it)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown width_layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if model_type not in _TARGETS:
        _TARGETS[model_type] = StockTarget(model_type, LAYOUTS[layout])


@torch.no_grad()
def discover_layout(model: PreTrainedModel) -> str | None:
    """The `LAYOUTS` entry a stock model of a type without a width rule follows, registered for its type (None,
    and nothing registered, when none fits): its config has the layout's width field, every layer has each of the
    layout's weights with that many hidden units, and permuting the units at random keeps its function."""
    from .smoothing import check_same_function  # smoothing builds on this module

    model_type, state = model.config.model_type, model.state_dict()
    for name, rule in LAYOUTS.items():
        width, candidate = getattr(model.config, rule.width_field, None), StockTarget(model_type, rule)
        try:
            groups = candidate.channel_groups(model)
        except ValueError:  # no tensor of the layout
            continue
        weights = [member for member in rule.members if not member.endswith(".bias")]
        complete = all(
            all(any(m.tensor.endswith(weight) for m in group.members) for weight in weights)
            and all(state[m.tensor].shape[m.axis] == width for m in group.members)
            for group in groups
        )
        if not complete:
            continue
        previous = _TARGETS.get(model_type)
        _TARGETS[model_type] = candidate  # the function check asks the target for the model's task
        permuted = copy.deepcopy(model)
        tensors = permuted.state_dict()
        for group in groups:
            reorder_channels(tensors, group, torch.randperm(width, generator=torch.Generator().manual_seed(0)))
        try:
            check_same_function(model, permuted)
            return name
        except RuntimeError:  # a coupled tensor the layout does not name: not this layout
            if previous is None:
                del _TARGETS[model_type]
            else:
                _TARGETS[model_type] = previous
    return None


def register_family(model_class: type[NeuMetaFamilyModel]) -> None:
    """Make a family known to neumeta-hf (`FAMILIES`, `target`) and to transformers: its config to `AutoConfig`,
    its model to its task's Auto class, both marked so that `save_pretrained` writes their code beside the
    weights."""
    config_class, auto = model_class.config_class, auto_class(model_class.task)
    FAMILIES[config_class.model_type] = model_class
    _TARGETS[config_class.model_type] = FamilyTarget(model_class)
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    auto.register(config_class, model_class, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class(auto.__name__)


def target(model_type: str) -> Target:
    """The adapter of `model_type`; a ValueError for a type that is neither a family nor a stock type with a
    width rule, listing both and saying how to add one."""
    if model_type not in _TARGETS:
        raise ValueError(
            f"Unknown family {model_type!r}; known families: {', '.join(FAMILIES)}; stock transformers model types "
            f"with a width rule: {', '.join(WIDTH_RULES)}, and any whose feed-forward blocks follow one of the "
            f"layouts {', '.join(LAYOUTS)} (found by from_base_model). To support another stock model type, add one "
            "entry to neumeta_hf.targets.WIDTH_RULES (its width config field, layer prefix pattern and the tensors "
            "that follow the width; see the module's docstring)."
        )
    return _TARGETS[model_type]


def family_model_class(family: str) -> type[NeuMetaFamilyModel]:
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[family]


# The questions callers ask most, by config: each one line on the adapter.


def check_model_type(model_type: str) -> None:
    target(model_type)


# What `PreTrainedConfig.to_dict` writes or `from_dict` reads beyond a config class's fields, and the input
# normalisation neumeta-hf's training writes into a stock image model's config (`image_normalisation` reads it).
_SERIALISATION_KEYS = {"model_type", "transformers_version", "_name_or_path", "auto_map", "num_labels", "torch_dtype",
                       "output_attentions", "image_mean", "image_std"}  # fmt: skip


def unknown_fields(config_class: type[PreTrainedConfig], values: dict) -> list[str]:
    """The keys of `values` that `config_class` has no field for. transformers keeps such keys as attributes
    without a word, so a misspelt field would leave the real one at its default."""
    known = {f.name for f in dataclasses.fields(config_class)} | set(config_class.attribute_map) | _SERIALISATION_KEYS
    return sorted(set(values) - known)


def own_fields(config_class: type[PreTrainedConfig]) -> set[str]:
    """The fields a config class adds to transformers' `PreTrainedConfig`."""
    return {f.name for f in dataclasses.fields(config_class)} - {f.name for f in dataclasses.fields(PreTrainedConfig)}


def _close_match(key: str, config_class: type[PreTrainedConfig]) -> str:
    close = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(config_class)], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def target_config(model_type: str, values: dict) -> PreTrainedConfig:
    """The config object of a target network from its dict (as stored in a hypernetwork's config)."""
    return target(model_type).config_class.from_dict(dict(values))


def network_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    return target(config.model_type).network_class(config)


def network_width(config: PreTrainedConfig) -> int:
    """The width NeuMeta varies: a family's `width`, or a stock model's feed-forward width."""
    return target(config.model_type).network_width(config)


def config_at_width(config: PreTrainedConfig, width: int) -> PreTrainedConfig:
    return target(config.model_type).config_at_width(config, width)


def layer_widths(model_type: str, widths, layers: int) -> list:
    """`widths` (any sequence or iterable, a generator included) as a list of one width per layer, MatFormer's
    mix'n'match: refused for a model whose layers' widths are coupled, or with other than `layers` widths. Each
    width is the caller's to check against its range."""
    if not target(model_type).independent_layers:
        raise ValueError(
            "widths (one per layer) is for stock transformers models, whose layers' feed-forward widths are "
            f"independent; {model_type}'s channel groups are coupled: pass one width"
        )
    if isinstance(widths, (str, bytes, dict, set)):  # a dict would give its keys, a set an arbitrary order
        raise TypeError(f"widths must be a list of integer widths, one per layer, got {widths!r}")
    given, widths = widths, list(widths)
    if len(widths) != layers:
        raise ValueError(f"widths needs one width per layer ({layers}), got {given!r}")
    return widths


def channel_groups(model: PreTrainedModel) -> list[ChannelGroup]:
    return target(model.config.model_type).channel_groups(model)


def reorder_channels(state: dict[str, torch.Tensor], group: ChannelGroup, order: torch.Tensor) -> None:
    """Put the channels of `group` in `order`, in place, in every member slice of `state` (name -> tensor)."""
    for member in group.members:
        channels = member.of(state[member.tensor])
        channels.copy_(channels.index_select(member.axis, order))


def task_for(config: PreTrainedConfig, model_class: type | None = None) -> Task:
    """The `Task` of a target network; a stock model with an unknown head compares logits only."""
    name = target(config.model_type).task_name(config, model_class)
    return get_task(name) if name is not None else Task("unknown", "AutoModel")


def output_axis(model: torch.nn.Module, name: str) -> int:
    """The axis of tensor `name` that runs over its layer's outputs: 0, but 1 for a transposed convolution's
    weight, which is laid out [in, out, *kernel]."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    return 1 if leaf == "weight" and isinstance(module, torch.nn.modules.conv._ConvTransposeNd) else 0


def example_inputs(config: PreTrainedConfig, batch_size: int = 8, generator: torch.Generator | None = None) -> dict:
    """Random inputs for a function check: images for image models, token ids for text models."""
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        size = config.image_size
        return {"pixel_values": torch.randn(batch_size, config.num_channels, size, size, generator=generator)}
    return {"input_ids": torch.randint(0, config.vocab_size, (batch_size, 12), generator=generator)}


def multiply_accumulates(network: PreTrainedModel) -> int:
    """Multiply-accumulates of one forward pass on one example -- an image, or one token of a text model --
    over the convolutions and linear layers (attention's own products are left out). Runs on the meta device
    too, without storage: what a budget in MACs (`NeuMetaModel.width_for_budget`) is checked against."""
    device = next(network.parameters()).device
    inputs = {name: value[:, :1].to(device) if name == "input_ids" else value.to(device)
              for name, value in example_inputs(network.config, batch_size=1).items()}  # fmt: skip
    counts = []

    def count(module, args, output):
        # Inputs per output value: a Linear's or Conv2d's weight[0]; GPT-2's Conv1D stores its weight transposed.
        transposed = isinstance(module, transformers.pytorch_utils.Conv1D)
        per_output = module.weight.shape[0] if transposed else module.weight[0].numel()
        counts.append(output.numel() * per_output)

    kinds = (torch.nn.Linear, torch.nn.Conv2d, transformers.pytorch_utils.Conv1D)
    handles = [module.register_forward_hook(count) for module in network.modules() if isinstance(module, kinds)]
    try:
        with torch.no_grad():
            network.eval()(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(counts)


def image_normalisation(config: PreTrainedConfig) -> tuple[list[float], list[float]]:
    """(mean, std) per input channel that an image model expects: a family's, or what neumeta-hf's training wrote
    into a stock model's config; 0.5 (the stock image processor's default) where nothing was recorded."""
    default = [0.5] * getattr(config, "num_channels", 1)
    return list(getattr(config, "image_mean", None) or default), list(getattr(config, "image_std", None) or default)


register_family(NeuMetaMLPForImageClassification)
register_family(NeuMetaLeNetForImageClassification)
register_family(NeuMetaResNetCifarForImageClassification)
register_family(NeuMetaUNetForSemanticSegmentation)
register_family(NeuMetaVAEModel)
