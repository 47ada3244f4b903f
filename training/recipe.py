"""Training recipes: typed, nested configuration read from YAML, with `dotted.key=value` overrides.

Every section is a dataclass; an unknown key anywhere is an error naming the key and the valid ones.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from neumeta_hf.data import DataConfig


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


@dataclass
class HypernetworkConfig:
    """How the NeuMeta hypernetwork is built around the base network (`NeuMetaModel.from_base_model`)."""

    width_range: list[int] | None = None
    train_widths: list[int] | None = None  # default: every width in the range
    morph: str = "all"
    smooth: bool = True
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
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU)
    l2_weight: float = 1e-4
    reconstruction_weight: float = 1.0
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0
    mixup_alpha: float = 0.0  # > 0: train on mixup-blended images, Beta(alpha, alpha) weights; 0: off
    sandwich: bool = False  # each step also trains the smallest width, reconstructs the full one (digits: 2.5x a step)
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_widths: list[int] | None = None  # default: smallest, middle and largest of the range
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint directory

    def __post_init__(self):
        if self.mixup_alpha < 0:
            raise ValueError(f"training.mixup_alpha must be >= 0 (0 turns mixup off), got {self.mixup_alpha}")


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
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)
    training: OptimConfig = field(default_factory=OptimConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A `TrainConfig` from a YAML file (or the defaults) with `dotted.key=value` overrides applied."""
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
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
        section[leaf] = yaml.safe_load(value)
    return _build(TrainConfig, raw, "")


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
    """YAML reads `2e-3` as a string (it wants `2.0e-3`): convert strings for numeric fields."""
    numeric = [t for t in (typing.get_args(hint) or (hint,)) if t in (int, float)]
    if isinstance(value, str) and numeric:
        try:
            return numeric[0](float(value)) if numeric[0] is int else float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    return value
