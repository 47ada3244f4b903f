"""Pieces shared by every target family: the classification head contract and its loss, initialisation,
conv+norm blocks and the description of coupled channels that NeuMeta morphs and permutes.

Model code only: imports torch and transformers, and the image processor only where it is used (it needs
Pillow, which loading and running a network must not). Cards and uploads live in `neumeta_hf.publishing`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

# The label of pixels that count for no class (unlabelled), as in scene_parse_150 layouts. Here, in a file that
# travels with every saved network, so that a segmenter's own loss knows it; `neumeta_hf.tasks` reads it here.
IGNORE_INDEX = 255


def class_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The loss of the tasks that predict classes (`neumeta_hf.tasks`): cross-entropy of logits over axis 1 --
    per image, or per pixel -- against class indices (`ignore_index` counts for none) or class probabilities
    (mixed-up labels)."""
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


class ChannelSlice(NamedTuple):
    """Where a channel group's channels lie in one tensor: along `axis`, the whole axis (`stop` None), or
    `[start, stop)` when the axis concatenates several groups (a U-Net decoder convolution reads
    `[upsampled; skip]` channels on its input axis)."""

    tensor: str
    axis: int
    start: int = 0
    stop: int | None = None

    def length(self, shape) -> int:
        """Channels in this slice of a tensor of `shape`."""
        return (shape[self.axis] if self.stop is None else self.stop) - self.start

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """This slice of `tensor` (a view)."""
        return tensor.narrow(self.axis, self.start, self.length(tensor.shape))


class ChannelGroup(NamedTuple):
    """Channels that must move together: the same index of every member slice (`ChannelSlice`; a plain
    `(tensor name, axis)` pair means the whole axis).

    `scales` says whether the number of channels follows the config's `width`.
    """

    name: str
    members: tuple[ChannelSlice, ...]
    scales: bool

    @classmethod
    def of(cls, name: str, members, scales: bool) -> "ChannelGroup":
        """A group from members given as `ChannelSlice`s or `(tensor name, axis[, start, stop])` tuples."""
        return cls(name, tuple(ChannelSlice(*member) for member in members), scales)


class ConvNorm(nn.Module):
    """Conv followed by BatchNorm (`norm="batch"`), or a biased conv alone (`norm="none"`, e.g. BN folded in)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, norm="batch"):
        super().__init__()
        with_norm = norm == "batch"
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=not with_norm
        )
        self.norm = nn.BatchNorm2d(out_channels) if with_norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class NeuMetaFamilyModel(PreTrainedModel):
    """Base of the family networks: `forward(pixel_values, labels=None)` -> `output_class` with the class
    scores as `logits` and, given labels, the task's loss (`class_cross_entropy`)."""

    main_input_name = "pixel_values"
    base_model_prefix = "network"
    task = "image-classification"  # the pipeline task (`neumeta_hf.tasks`): output, loss, metrics, Auto class
    output_class = ImageClassifierOutput
    ignore_index = -100  # the label that counts for no class

    def forward(self, pixel_values, labels=None, **kwargs):
        logits = self.classify(pixel_values)
        loss = class_cross_entropy(logits, labels, self.ignore_index) if labels is not None else None
        return self.output_class(loss=loss, logits=logits)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def channel_groups(self) -> list[ChannelGroup]:
        """Groups of coupled hidden channels; input image channels and class outputs are never in a group."""
        raise NotImplementedError

    def image_processor(self):
        """The `NeuMetaImageProcessor` matching this network's input (needs Pillow)."""
        from .image_processing_neumeta import NeuMetaImageProcessor

        return NeuMetaImageProcessor.for_config(self.config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also writes `preprocessor_config.json`, so the directory works with `pipeline("image-classification")`."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.image_processor().save_pretrained(save_directory)

    @torch.no_grad()
    def _init_weights(self, module):
        # He initialisation for the ReLU networks here, instead of transformers' N(0, 0.02).
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def _out_members(self, *prefixes: str) -> tuple[tuple[str, int], ...]:
        """The output-channel slices of the named layers: weight rows, biases and norm statistics."""
        names = self.state_dict().keys()
        suffixes = ("weight", "bias", "running_mean", "running_var")
        return tuple(
            (f"{prefix}.{suffix}", 0)
            for prefix in prefixes
            for suffix in suffixes
            if f"{prefix}.{suffix}" in names
        )
