"""NeuMetaConfig: the target family and width range, the INR's hyper-parameters and the sampling defaults."""

import math
import operator
import os
import warnings

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from packaging.version import Version
from transformers import PreTrainedConfig

from .families.configuration_common import MORPH_MODES
from .targets import FAMILIES, target, target_config, use_layout
from .version import __version__

VERSION_KEY = "neumeta_hf_version"  # in config.json: the library version that wrote it

ANCHOR_CHANNELS = ("resampled", "first")

# The most generations one sampled network may average: the average settles within about 100 (benchmarks/README.md),
# so more is a typo far more often than a plan -- 1e9 would run for longer than a lifetime.
MAX_NUM_SAMPLES = 10_000
# The widest network anything may ask for: far beyond any that fits in memory, still within torch's sizes.
MAX_WIDTH = 2**31 - 1

# Fields a saved hypernetwork must carry: their defaults suit a config built in code, not a damaged file.
REQUIRED_FIELDS = ("family", "family_config", "width_range", "train_widths")
# Fields whose absence from an older config means what their default says (nothing recorded): loaded silently.
OPTIONAL_FIELDS = ("trained_steps", "base_model", "width_layout", "license")


def check_num_samples(num_samples) -> int:
    """`num_samples` as an int from 1 to `MAX_NUM_SAMPLES`; TypeError/ValueError naming the problem otherwise."""
    num_samples = as_integer(num_samples, "num_samples")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if num_samples > MAX_NUM_SAMPLES:
        raise ValueError(
            f"num_samples={num_samples:,} would average {num_samples:,} generations; at most {MAX_NUM_SAMPLES:,} "
            "are allowed (the average settles within about 100)"
        )
    return num_samples


def as_integer(value, name: str, hint: str = "") -> int:
    """`value` as an int, whatever its integer type (Python, numpy, a one-element integer tensor); TypeError
    naming `name` for anything else, booleans included."""
    try:
        if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer{hint}, got {value!r}") from None


def _integer_list(values, name: str) -> list[int]:
    try:
        return [as_integer(value, name) for value in values]
    except TypeError:
        raise ValueError(f"{name} must be a list of integers, got {values!r}") from None


class NeuMetaConfig(PreTrainedConfig):
    """Configuration of a NeuMeta hypernetwork.

    Args:
        family: model type of the target network: a family (`neumeta-mlp`, `neumeta-lenet`,
            `neumeta-resnet-cifar`) or a stock transformers type with a width rule (`vit`, `bert`, `llama`,
            `gpt2`; see `neumeta_hf.targets`).
        family_config: the full-width base network's config as a dict; its width (a family's `width`, a stock
            model's feed-forward width such as `intermediate_size`) is the full width.
        width_range: `[min, max]` widths trained on; sampling outside it extrapolates.
        train_widths: the widths drawn during training (default: every width in the range); the others
            in the range stay unseen.
        morph: "all" morphs every hidden layer, "last" only the last hidden layer or block (the paper's
            ResNet setting).
        hidden_size, num_layers: width and depth of each residual MLP head (paper: 256 x 4).
        num_frequencies: Fourier frequencies of the channel coordinates (paper: 16).
        size_frequencies: Fourier frequencies of the tensor position and relative sizes.
        residual_scale: initial value of the learnable scale on each residual branch (paper: 0.1).
        shared_trunk: one MLP for all tensors with per-tensor embeddings instead of a head per tensor.
        fan_in_power: generated tensors scale as fan_in ** -fan_in_power across widths. 0.5 keeps a standard
            initialisation's variance at every width (untrained INR, independent channels); 1.0 (the paper's
            division by fan-in) keeps the function of smoothly resampled channels.
        base_anchor: the INR generates a correction to the base network resampled to the width (linear
            interpolation of channels) rather than the tensors themselves, and starts at zero. An untrained
            plain INR generates nearly identical channels (row correlation ~0.9) and, in deep networks,
            exploding activations; the anchored one starts as a working network at every width.
        anchor_channels: what the base anchor is at width w: "resampled", the base's channels linearly
            interpolated to w (any base; blends neighbouring channels), or "first", its first w channels as they
            are (a base trained universally slimmable, `base.slimmable` in the recipes, whose first w channels
            already form a good width-w network).
        width_affine: also give every width a scale and a shift per channel of every layer producing a scaling
            group's channels (`nested.affine_sites`), folded into that layer: the per-width parameters of a nested
            network (`anchor_channels="first"` on the nested stage's network), its table
            (`NeuMetaModel.adopt_width_affine`; unseen widths between two trained ones interpolate them) corrected
            by a generated log scale and shift (`inr.WidthAffineINR`, tapered to zero at the full width), so that
            every width, unseen ones too, gets its own.
        predicted_widths: widths between train_widths whose rows of that table the nested stage filled when it
            was folded rather than trained (a stage with BatchNorm, `nested.NestedNetwork.folded`: the neighbours'
            affine interpolated, the statistics predicted or measured); set by `adopt_width_affine`.
        fold_fixed_axes: a weight with one axis that follows the width and one that does not (a feed-forward
            layer's input or output side, a first convolution, a classifier) gets one INR row per channel of the
            scaling axis, generating the whole fixed axis at once, instead of one row per (out, in) pair as in the
            paper. Rows drop by the fixed axis's size (64x for a ViT with hidden size 64, 768x for ViT-B), and
            with them the INR's time and memory. Default: on for stock transformers models, off for families
            (whose published results use a row per pair).
        coordinate_noise: amplitude, in channels, of the uniform noise on channel coordinates during training
            and for averaging (paper: 1.0, i.e. +-0.5 channel).
        num_samples: how many generations `sample_model` averages by default (the first without noise).
        ema_decay: decay of the exponential moving average of the INR weights kept by training.
        smoothing: what the channel permutation did (filled in by `from_base_model`).
        trained_steps: the optimiser steps its INR has had: 0 from `from_base_model` (untrained: what the card,
            `info` and `push` say), set by training; None in a config saved before it was recorded (unknown).
        base_model: the Hub id the base network was loaded from (the card's `base_model`), when it was.
        width_layout: for a stock model type without a width rule, the shared layout (`targets.LAYOUTS`)
            `from_base_model` found its feed-forward blocks to follow; loading registers the type with it again.
        license: the licence of the weights it generates, on its card and every sampled network's: the base's card's
            (read by `from_base_model`), or what the recipe sets; None: neumeta-hf's default (`mit`).
    """

    model_type = "neumeta"

    family: str = "neumeta-mlp"
    family_config: dict | None = None
    width_range: list[int] | None = None
    train_widths: list[int] | None = None
    morph: str = "all"
    hidden_size: int = 256
    num_layers: int = 4
    num_frequencies: int = 16
    size_frequencies: int = 16
    residual_scale: float = 0.1
    shared_trunk: bool = False
    fan_in_power: float = 0.5
    base_anchor: bool = True
    anchor_channels: str = "resampled"
    width_affine: bool = False
    predicted_widths: list[int] | None = None
    fold_fixed_axes: bool | None = None
    coordinate_noise: float = 1.0
    num_samples: int = 1
    ema_decay: float = 0.995
    smoothing: dict | None = None
    trained_steps: int | None = None
    base_model: str | None = None
    width_layout: str | None = None
    license: str | None = None

    def __post_init__(self, **kwargs):
        if self.width_layout is not None:
            use_layout(self.family, self.width_layout)
        kind = target(self.family)
        if self.morph not in MORPH_MODES:
            raise ValueError(f"morph must be one of {MORPH_MODES}, got {self.morph!r}")
        family_config = dict(self.family_config or {})
        if family_config.get("model_type", self.family) != self.family:
            raise ValueError(
                f"family_config is for {family_config['model_type']!r} but family is {self.family!r}"
            )
        self.family_config = kind.hypernetwork_config(family_config, self.morph).to_dict()
        if self.fold_fixed_axes is None:
            self.fold_fixed_axes = kind.folds_fixed_axes
        full_width = self.full_width
        self.width_range = _integer_list(self.width_range or [max(1, full_width // 4), full_width], "width_range")
        if len(self.width_range) != 2 or not 1 <= self.width_range[0] <= self.width_range[1]:
            raise ValueError(f"width_range must be [min, max] with 1 <= min <= max, got {self.width_range}")
        low, high = self.width_range
        if self.train_widths is not None and not len(self.train_widths):
            raise ValueError("train_widths is empty: name the widths to train, or leave it unset (None) for every width "
                             f"of width_range {self.width_range}")  # fmt: skip
        self.train_widths = sorted(_integer_list(self.train_widths or range(low, high + 1), "train_widths"))
        outside = [w for w in self.train_widths if not low <= w <= high]
        if outside:
            raise ValueError(f"train_widths {outside} lie outside width_range {self.width_range}")
        self.predicted_widths = sorted(_integer_list(self.predicted_widths or [], "predicted_widths"))
        misplaced = [w for w in self.predicted_widths if not low <= w < full_width or w in self.train_widths]
        if misplaced:
            raise ValueError(f"predicted_widths {misplaced} must lie between width_range's smallest width {low} and "
                             f"the full width {full_width}, and not among train_widths")  # fmt: skip
        check_num_samples(self.num_samples)
        for name in ("hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % 8:
            raise ValueError(f"hidden_size must be a multiple of 8 (for aligned grouped matmuls), got {self.hidden_size}")
        for name in ("num_frequencies", "size_frequencies", "coordinate_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("coordinate_noise", "fan_in_power", "residual_scale"):  # NaN passes every comparison
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.anchor_channels not in ANCHOR_CHANNELS:
            raise ValueError(f"anchor_channels must be one of {ANCHOR_CHANNELS}, got {self.anchor_channels!r}")
        if self.trained_steps is not None and as_integer(self.trained_steps, "trained_steps") < 0:
            raise ValueError(f"trained_steps must be a non-negative integer, got {self.trained_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        super().__post_init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`PreTrainedConfig.from_pretrained`, with a plain error for a local path that does not exist (which
        transformers would take for a malformed Hub id)."""
        source = os.fspath(pretrained_model_name_or_path)
        if not os.path.exists(source):
            try:
                validate_repo_id(source)
            except HFValidationError:
                raise FileNotFoundError(
                    f"no such directory: {source!r} (and not a Hub id, which has the form owner/name)"
                ) from None
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PreTrainedConfig.from_dict`, which every saved config goes through (`from_pretrained`, `AutoConfig`):
        refuses another model's config and a hypernetwork config without one of `REQUIRED_FIELDS`."""
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"config.json must hold a JSON object of the hypernetwork's fields, got a {type(config_dict).__name__}"
                "; it is damaged: use the config.json that NeuMetaModel.save_pretrained wrote"
            )
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type in FAMILIES:
            raise ValueError(
                f"this is a {model_type} network, not a hypernetwork; load it with "
                "AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)"
            )
        if model_type != cls.model_type:
            raise ValueError(f"this is a {model_type!r} config, not a NeuMeta hypernetwork's ({cls.model_type!r})")
        missing = [name for name in REQUIRED_FIELDS if config_dict.get(name) is None]
        if missing:
            raise ValueError(
                f"the hypernetwork config lacks {', '.join(missing)}: it is incomplete or damaged; use the "
                "config.json that NeuMetaModel.save_pretrained wrote"
            )
        config_dict = dict(config_dict)
        _check_version(config_dict.pop(VERSION_KEY, None), config_dict)
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict:
        return super().to_dict() | {VERSION_KEY: __version__}

    def family_config_object(self):
        """The full-width base network's config object (a family's, or the stock model's)."""
        return target_config(self.family, self.family_config)

    @property
    def full_width(self) -> int:
        return self.family_config[target(self.family).width_field]


def _check_version(written_by: str | None, config_dict: dict):
    """Warn about a saved config another version of the library wrote: newer (fields this one does not know are
    kept but unused), or older (fields it lacks take this version's defaults, named, since a default can change
    what sampling does: `num_samples`)."""
    writer = f"neumeta-hf {written_by}" if written_by else f"a neumeta-hf before {__version__} (no {VERSION_KEY})"
    if written_by and Version(written_by) > Version(__version__):
        warnings.warn(f"this hypernetwork was saved by {writer}, newer than this neumeta-hf {__version__}; "
                      "upgrade (pip install -U neumeta-hf) to load it as it was meant", stacklevel=3)  # fmt: skip
    own = NeuMetaConfig.__annotations__
    known = set(own) | set(PreTrainedConfig().to_dict())
    unknown = sorted(set(config_dict) - known)
    if unknown:
        warnings.warn(f"config.json has fields neumeta-hf {__version__} does not know: {', '.join(unknown)} (saved "
                      f"by {writer}); they are kept as attributes and have no effect", stacklevel=3)  # fmt: skip
    lacking = [name for name in own if name not in config_dict and name not in OPTIONAL_FIELDS]
    if lacking:
        defaults = ", ".join(f"{name}={getattr(NeuMetaConfig, name)!r}" for name in lacking)
        warnings.warn(f"config.json (saved by {writer}) lacks {', '.join(lacking)}: using this version's defaults "
                      f"{defaults}; pass them to from_pretrained to choose otherwise", stacklevel=3)  # fmt: skip
