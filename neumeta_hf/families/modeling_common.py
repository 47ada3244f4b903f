"""Pieces shared by every target family: the classification head contract, initialisation, conv+norm blocks
and the description of coupled channels that NeuMeta morphs and permutes.

Imports only torch, transformers and huggingface_hub (a transformers dependency; see configuration_common.py),
and the image processor only where it is used: it needs Pillow, which loading and running a network must not.
"""

import os
import shutil
import tempfile
from typing import NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput


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
    """Base of the family networks: `forward(pixel_values, labels=None)` -> `ImageClassifierOutput`."""

    main_input_name = "pixel_values"
    base_model_prefix = "network"
    task = "image-classification"  # the pipeline task (`neumeta_hf.tasks`): output, loss, metrics, Auto class

    def forward(self, pixel_values, labels=None, **kwargs):
        logits = self.classify(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

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
        """Also writes `preprocessor_config.json`, so the directory works with `pipeline("image-classification")`,
        and the model card (`README.md`) when one is attached as `model_card`: a card, or a callable that
        renders one (so that networks which are never saved never pay for rendering)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.image_processor().save_pretrained(save_directory)
            write_model_card(self, save_directory)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None, token=None):
        """Upload what `save_pretrained` writes -- config, weights, model code, image processor and the attached
        model card -- in one commit. A failed upload raises and changes nothing locally."""
        message = commit_message or f"Upload {self.config.model_type} of width {self.config.width}"
        return upload_saved(self, repo_id, message, private=private, token=token)

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


# What a failed upload raises: the Hub's refusals, offline mode (an OSError), an invalid repo id (a ValueError)
# and connection failures, which raise the HTTP client's own error, the base class of HfHubHTTPError.
UPLOAD_ERRORS = (OSError, ValueError, *HfHubHTTPError.__bases__)


def write_model_card(network: PreTrainedModel, directory):
    """Write the card attached to `network` as `model_card` (a card, or a callable rendering one) as README.md,
    and beside it the pictures the card shows (`card_pictures`: file name -> where the file is)."""
    card = getattr(network, "model_card", None)
    if card is not None:
        (card() if callable(card) else card).save(os.path.join(directory, "README.md"))
    for name, source in getattr(network, "card_pictures", {}).items():
        shutil.copy(source, os.path.join(directory, name))


def upload_saved(network: PreTrainedModel, repo_id: str, commit_message: str, private: bool | None = None, token=None):
    """Upload what `network.save_pretrained` writes in one commit (`upload_in_one_commit`)."""
    with tempfile.TemporaryDirectory() as directory:
        network.save_pretrained(directory)
        return upload_in_one_commit(directory, repo_id, commit_message, private=private, token=token)


def upload_in_one_commit(directory, repo_id: str, commit_message: str, private: bool | None = None, token=None):
    """Create `repo_id` if needed and upload everything in `directory` as one commit. A failed upload raises
    RuntimeError with a one-line reason; `directory` is only read."""
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=commit_message)
    except UPLOAD_ERRORS as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0].rstrip(".")
        raise RuntimeError(f"upload to {repo_id} failed: {reason}; nothing local was changed") from error
