"""Training recipes: typed, nested configuration read from YAML, with `dotted.key=value` overrides.

Every section is a dataclass; an unknown key anywhere (the free-form `hypernetwork.config` and
`base.family_config` included) is an error naming the key and the valid ones, and every value is checked
(`check_recipe`) before anything runs, so that a bad recipe fails in a second rather than after training.
"""

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from neumeta_hf import NeuMetaConfig
from neumeta_hf.configuration_neumeta import check_num_samples
from neumeta_hf.data import DataConfig
from neumeta_hf.targets import own_fields, target, task_for
from neumeta_hf.text_data import TextDataConfig


@dataclass
class BaseConfig:
    """The full-width base network: loaded from `pretrained` (local dir or Hub id) or trained here."""

    family: str = "neumeta-mlp"
    pretrained: str | None = None
    family_config: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    milestones: list[float] = field(default_factory=list)  # fractions of training; empty: cosine decay
    warmup_steps: int = 0  # linear warm-up of the learning rate before its decay
    max_grad_norm: float | None = None  # clip the gradients' norm to this (None: no clipping)
    # Universally slimmable training (US-Nets): each step the full width on the task's loss, and the smallest width
    # of hypernetwork.width_range and two random widths distilled from the full width's outputs (the task's
    # distillation: class predictions, or a VAE's posterior and pixels); width w is then the first w channels of
    # every layer. One process; with BatchNorm, each width's statistics are recomputed before use.
    slimmable: bool = False
    prune_from: str | None = None  # a trained network, L1-pruned to family_config.width, then fine-tuned


@dataclass
class NestedConfig:
    """The importance-ordered nested stage between the base network and the hypernetwork (`neumeta_hf.nested`):
    the base's channels sorted by importance (the same function), then every width of hypernetwork.train_widths
    distilled from the base with the sandwich rule, each with a scale and shift per channel of its own. Width w
    is then the first w channels of every layer, so the hypernetwork builds on it unpermuted (hypernetwork.smooth
    false) and anchored on those channels. Off (`enabled: false`): the paper's plain method."""

    enabled: bool = False
    pretrained: str | None = None  # a saved nested stage (OUTPUT_DIR/nested of an earlier run): not trained again
    epochs: float = 7
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 1.0  # of the distillation from the base
    # The teacher of every width: "base" (the fixed base network) or "inplace" (US-Nets: the full width learns
    # the labels, the others its predictions).
    teacher: str = "base"
    # With teacher "base": the full width also learns the labels, with this weight beside its distillation, so that
    # it can end better than a base short of convergence (the narrower widths still follow the base).
    label_weight: float = 0.0
    warm_start: bool = True  # false: the shared weights start from a fresh initialisation, not the base's
    random_widths: int = 2  # each step trains the full width, the smallest and this many random ones
    every_width: bool = False  # the random ones drawn from every width of the range, not only the trained ones
    # Stock models: the last random width of each step is one width per layer, each drawn on its own, so that
    # mixed networks (sample_model(widths=[...]), MatFormer's mix'n'match) are trained too.
    mix_layers: bool = False
    # A base with BatchNorm: each trained width's statistics are computed from this many training batches at the
    # end of the stage and folded in with its scale and shift (sampled networks need no data).
    calibration_batches: int = 20
    # ... and those of the widths between trained ones: "predicted" from the full network's without running them
    # (they stay unseen by any data), or "measured" like a trained width's (each width's calibrated network; where
    # the stage drew every width, the network it trained: on a ResNet-8 with every 4th width trained, predicted
    # statistics lost 1-2.6 points at widths 18-38 against measured ones).
    untrained_statistics: str = "predicted"


@dataclass
class HypernetworkConfig:
    """How the NeuMeta hypernetwork is built around the base network (`NeuMetaModel.from_base_model`)."""

    width_range: list[int] | None = None
    train_widths: list[int] | None = None  # default: every width in the range
    morph: str = "all"
    smooth: bool | None = None  # permute channels for smoothness; default: yes, unless nested.enabled
    config: dict = field(default_factory=dict)  # any other NeuMetaConfig field (hidden_size, coordinate_noise, ...)


@dataclass
class OptimConfig:
    """The hypernetwork's training: objective, optimiser, schedule, checkpoints and logging."""

    max_steps: int = 1000
    epochs: float | None = None  # if set, max_steps = epochs x steps per epoch
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | multistep | constant
    warmup_steps: int = 0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of max_steps (multistep)
    gamma: float = 0.1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    # no | bf16 | fp16 (GPU); unset: accelerate's own (`accelerate config`, `accelerate launch --mixed_precision`,
    # ACCELERATE_MIXED_PRECISION), "no" if none says.
    mixed_precision: str | None = None
    l2_weight: float = 1e-4
    reconstruction_weight: float = 1.0
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0
    # A trained network to distil from instead of the base (local dir or Hub id; the base's family and labels, any
    # width), e.g. a plain full-width network when the base is a slimmable one.
    teacher: str | None = None
    mixup_alpha: float = 0.0  # > 0: train on mixup-blended images, Beta(alpha, alpha) weights; 0: off
    # The pipeline's (nested.enabled): false trains only the generated corrections of the per-width scales and
    # shifts (hypernetwork.config.width_affine), the INR's weight corrections staying zero, so every width is the nested
    # network with its own scales and shifts. The plain method trains its INR whatever this says.
    train_corrections: bool = True
    sandwich: bool = False  # each step also trains the smallest width, reconstructs the full one (digits: 2.5x a step)
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_widths: list[int] | None = None  # default: smallest, middle and largest of the range
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint directory


@dataclass
class SweepConfig:
    """The width sweep at the end of training, and the sampled network saved beside it."""

    widths: list[int] | None = None  # default: every width in the range
    num_samples: int | None = None  # default: the hypernetwork's num_samples
    batch_size: int = 512
    save_width: int | None = None  # default: the middle of the range


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"
    overwrite_output_dir: bool = False  # replace an earlier run in output_dir (otherwise it is an error)
    seed: int = 0
    data: DataConfig | TextDataConfig = field(default_factory=DataConfig)  # text for language models (`data_config_class`)
    base: BaseConfig = field(default_factory=BaseConfig)
    nested: NestedConfig = field(default_factory=NestedConfig)
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)
    training: OptimConfig = field(default_factory=OptimConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A `TrainConfig` from a YAML file (or the defaults) with `dotted.key=value` overrides applied."""
    raw = read_yaml(Path(path).read_text(), str(path)) if path else {}
    raw = raw or {}
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"Override {override!r} is not of the form dotted.key=value")
        key, value = override.split("=", 1)
        section = raw
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"Override {override!r}: {part!r} is not a section")
        section[leaf] = read_yaml(value, f"override {override!r}")
    data = raw.pop("data", None) or {}  # its fields follow from the base's task
    config = _build(TrainConfig, raw, "")
    config.data = _build(data_config_class(config.base.family), data, "data.")
    check_recipe(config)
    return config


def data_config_class(family: str) -> type:
    """The `data` section a family's networks train on: text (`TextDataConfig`) for language models, else images
    (`DataConfig`). An unknown family is a ValueError naming the known ones."""
    model_class = target(family).trainable_network_class()
    task = task_for(model_class.config_class(), model_class)
    return TextDataConfig if task.name == "text-generation" else DataConfig


class _RecipeLoader(yaml.SafeLoader):
    """Plain YAML: safe tags only (no code runs), no aliases (a few nested aliases expand to billions of
    values), no key given twice in one mapping (the last would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "aliases (*name, of an &name anchor) are not allowed in recipes: write the values out",
                event.start_mark,
            )  # fmt: skip
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {', '.join(repeated)} given twice in one mapping", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, where: str):
    """`text` as plain YAML (`_RecipeLoader`); any error a ValueError naming `where` and the line."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        hint = " (indent with spaces, not tabs)" if "'\\t'" in str(error) else ""
        hint += " (no tags that build Python objects: nothing in a recipe runs code)" if "python/" in str(error) else ""
        raise ValueError(f"{where} is not a plain YAML recipe{hint}: {error}") from None


# Settings that may change when a run is resumed without making it another run: they do not change what the
# training steps compute (learning_rate is applied from the resumed step on, and said so).
RESUMABLE_CHANGES = {
    "output_dir",
    "overwrite_output_dir",
    "training.resume_from_checkpoint",
    "training.learning_rate",
    "training.max_grad_norm",
    "training.checkpoint_every",
    "training.eval_every",
    "training.eval_widths",
}


def run_identity(config) -> dict:
    """Everything in the recipe that determines the training run, flat (not `RESUMABLE_CHANGES`, not the sweep):
    checkpoints carry it and its hash, so a run resumes only its own checkpoints."""
    flat = flatten(config_to_dict(config))
    return {key: value for key, value in flat.items() if key not in RESUMABLE_CHANGES and not key.startswith("sweep.")}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested config -> flat {dotted.key: value}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_POSITIVE_INTEGERS = (
    "base.epochs", "base.batch_size", "nested.batch_size", "training.max_steps", "training.batch_size",
    "training.gradient_accumulation_steps", "training.checkpoint_every", "training.eval_every",
    "sweep.batch_size", "sweep.num_samples", "sweep.save_width", "data.max_train_samples", "data.max_test_samples",
    "data.num_channels", "data.block_size", "data.vocab_size",
)  # fmt: skip
_NON_NEGATIVE_INTEGERS = ("data.validation_size", "nested.random_widths")
_POSITIVE_NUMBERS = ("base.learning_rate", "nested.epochs", "training.gamma", "nested.learning_rate", "nested.temperature",
                     "training.learning_rate", "training.epochs", "training.max_grad_norm", "base.max_grad_norm")
_NON_NEGATIVE_NUMBERS = (
    "base.weight_decay", "base.warmup_steps", "nested.weight_decay", "nested.label_weight", "training.weight_decay",
    "training.warmup_steps",
    "training.l2_weight", "training.reconstruction_weight", "training.distillation_weight", "training.mixup_alpha",
)  # fmt: skip
_WIDTH_LISTS = ("hypernetwork.width_range", "hypernetwork.train_widths", "training.eval_widths", "sweep.widths")
_CHOICES = {
    "training.scheduler": ("cosine", "multistep", "constant"),
    "training.mixed_precision": ("no", "bf16", "fp16"),
    "nested.teacher": ("base", "inplace"),
    "nested.untrained_statistics": ("predicted", "measured"),
}
# NeuMetaConfig fields that the recipe sets through keys of its own, or that are measured, not chosen.
_HYPERNETWORK_OWN_KEYS = {"family": "base.family", "family_config": "base.family_config",
                          "width_range": "hypernetwork.width_range", "train_widths": "hypernetwork.train_widths",
                          "morph": "hypernetwork.morph", "smoothing": None}  # fmt: skip


def check_recipe(config: "TrainConfig"):
    """Every value of the recipe in its range, every free-form key a real field: a ValueError naming the key,
    the value and what is allowed. (Checks against the data come later, still before training.)"""
    flat = flatten(config_to_dict(config))
    for key in (key for key in _POSITIVE_INTEGERS if key in flat):  # image or text data: each has its own keys
        value = flat[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key in ("sweep.num_samples", "hypernetwork.config.num_samples"):  # bounded: 1e9 would run for a lifetime
        if flat.get(key) is not None:
            try:
                check_num_samples(flat[key])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{key}: {error}") from None
    for key in (key for key in _NON_NEGATIVE_INTEGERS if key in flat):
        value = flat[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    for key in _POSITIVE_NUMBERS + _NON_NEGATIVE_NUMBERS:
        value, positive = flat[key], key in _POSITIVE_NUMBERS
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            value <= 0 if positive else value < 0
        ):
            raise ValueError(f"{key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    for key in _WIDTH_LISTS:
        value = flat[key]
        if value is not None and (
            not isinstance(value, list)
            or not value
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in value)
        ):
            raise ValueError(f"{key} must be a non-empty list of positive integer widths, got {value!r}")
    width_range = flat["hypernetwork.width_range"]
    if width_range is not None and (len(width_range) != 2 or width_range[0] > width_range[1]):
        raise ValueError(f"hypernetwork.width_range must be [min, max] with min <= max, got {width_range}")
    for key in ("base.milestones", "training.milestones"):
        value = flat[key]
        if not isinstance(value, list) or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 <= m <= 1 for m in value
        ):
            raise ValueError(f"{key} must be a list of fractions of training between 0 and 1, got {value!r}")
    settings = config.training
    if not settings.epochs and settings.warmup_steps > settings.max_steps:  # a quick run of a long recipe
        warnings.warn(f"training.warmup_steps ({settings.warmup_steps}) is more than training.max_steps "
                      f"({settings.max_steps}): the learning rate never reaches training.learning_rate; lower "
                      "training.warmup_steps", stacklevel=3)  # fmt: skip
    for key, allowed in _CHOICES.items():
        if flat[key] is not None and flat[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {flat[key]!r}")
    if config.nested.label_weight and config.nested.teacher == "inplace":
        raise ValueError("nested.label_weight is for nested.teacher=base: in place, the full width learns the labels "
                         "only; set it to 0 or use the base as teacher")  # fmt: skip
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
        raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {config.seed!r}")
    if not config.output_dir.strip():
        raise ValueError("output_dir must name a directory, got an empty string")
    if not isinstance(config.data.name, str) or not config.data.name.strip():
        raise ValueError(f"data.name must name a dataset (digits, fashion_mnist, a directory or a Hub id), got "
                         f"{config.data.name!r}")
    for key in ("data.image_mean", "data.image_std"):
        value = flat.get(key)
        if value is not None and (not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )):
            raise ValueError(f"{key} must be a list of numbers, one per image channel, got {value!r}")
    if isinstance(config.data, TextDataConfig) and config.training.mixup_alpha:
        raise ValueError("training.mixup_alpha blends images; a language model's tokens cannot be blended: set it to 0")
    if getattr(config.data, "image_std", None) is not None and min(config.data.image_std) <= 0:
        raise ValueError(f"data.image_std must be positive (images are divided by it), got {config.data.image_std}")

    # The defaults that follow the method: the paper's permutes channels; the nested pipeline keeps them in
    # order, anchors each width on its first channels and corrects each width's scales and shifts.
    if config.hypernetwork.smooth is None:
        config.hypernetwork.smooth = not config.nested.enabled
    if config.nested.enabled:
        config.hypernetwork.config = {"anchor_channels": "first", "width_affine": True} | config.hypernetwork.config
        anchor = config.hypernetwork.config["anchor_channels"]
        if config.hypernetwork.smooth or anchor != "first":
            raise ValueError(
                "nested.enabled: width w is the first w channels of the nested network, so the hypernetwork must "
                "keep them in order and anchor on them: leave hypernetwork.smooth and "
                f"hypernetwork.config.anchor_channels unset (now smooth={config.hypernetwork.smooth}, "
                f"anchor_channels={anchor!r}); or nested.enabled=false for the paper's plain method"
            )
    if config.nested.pretrained and not config.nested.enabled:
        raise ValueError("nested.pretrained is given but nested.enabled is false: set nested.enabled=true to build on "
                         "it, or leave nested.pretrained unset")  # fmt: skip
    if config.hypernetwork.config.get("width_affine") and not config.nested.enabled:
        raise ValueError("hypernetwork.config.width_affine corrects the nested stage's per-width scales and shifts: "
                         "set nested.enabled=true as well")  # fmt: skip
    if not config.nested.enabled:  # the plain method has only its INR to train (what the resolved recipe says)
        config.training.train_corrections = True
    affine = config.hypernetwork.config.get("width_affine")
    if config.nested.enabled and not config.training.train_corrections and not affine:
        raise ValueError("training.train_corrections=false trains only the generated per-width scales and shifts, "
                         "and this recipe has none: leave hypernetwork.config.width_affine unset (true), or "
                         "training.train_corrections true")  # fmt: skip
    model_class = target(config.base.family).trainable_network_class()  # an unknown family names the known ones
    if config.nested.mix_layers and not target(config.base.family).independent_layers:
        raise ValueError(f"nested.mix_layers trains networks with one width per layer, which stock transformers models "
                         f"have; {config.base.family}'s channel groups are coupled: set it to false")  # fmt: skip
    if config.nested.mix_layers and not config.nested.random_widths:
        raise ValueError("nested.mix_layers replaces the last random width of each step with one width per layer: "
                         "it needs nested.random_widths of at least 1")  # fmt: skip
    family_fields = own_fields(model_class.config_class) | {"id2label", "label2id", "num_labels"}
    _check_keys("base.family_config", config.base.family_config, family_fields)
    hypernetwork_config = config.hypernetwork.config
    hypernetwork_fields = own_fields(NeuMetaConfig) - set(_HYPERNETWORK_OWN_KEYS)
    _check_keys("hypernetwork.config", hypernetwork_config, hypernetwork_fields | set(_HYPERNETWORK_OWN_KEYS))
    for key in sorted(set(hypernetwork_config) & set(_HYPERNETWORK_OWN_KEYS)):
        where = _HYPERNETWORK_OWN_KEYS[key]
        raise ValueError(
            f"hypernetwork.config.{key} cannot be set here" + (f": use {where}" if where else " (it is measured)")
        )


def _check_keys(where: str, values, valid: set[str]):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of field names to values, got {values!r}")
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean {where}.{close[0]}?" if close else ""
            raise ValueError(f"Unknown key {where}.{key}.{hint} Valid keys here: {', '.join(sorted(valid))}")


def schedule_factor(
    step: int, total: int, scheduler: str, milestones=(), gamma: float = 0.1, warmup_steps: int = 0
) -> float:
    """Learning-rate multiplier at `step` of `total`: linear warm-up, then cosine decay to zero, x`gamma` at
    each milestone (a fraction of `total`) for "multistep", or 1 for "constant"."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    if scheduler == "multistep":
        return gamma ** sum(step >= fraction * total for fraction in milestones)
    if scheduler == "cosine":
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"scheduler must be cosine, multistep or constant, got {scheduler!r}")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown key(s) {', '.join(where + k for k in unknown)}; valid keys here: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}{name}")
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    """`value` checked against the field's type `hint`: booleans and strings must be what they say (a quoted
    "false" is a string, which Python takes as true), and strings for numeric fields are converted (YAML reads
    `2e-3` as a string; it wants `2.0e-3`). Numbers, lists and mappings are checked in `check_recipe`."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    if bool in allowed and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false (unquoted), got {value!r}")
    if str in allowed and not isinstance(value, str):
        note = " (YAML reads unquoted yes/no/on/off as booleans: quote it)" if isinstance(value, bool) else ""
        raise ValueError(f"{key} must be a string, got {value!r}{note}")
    numeric = [t for t in allowed if t in (int, float)]
    if isinstance(value, str) and numeric:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        if numeric[0] is int:
            if not number.is_integer():  # int() would cut "120.7" to 120 without a word
                raise ValueError(f"{key} must be a whole number, got {value!r}")
            return int(number)
        return number
    return value
