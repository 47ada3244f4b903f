import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_unet import NeuMetaUNetConfig
from .modeling_common import IGNORE_INDEX, ChannelGroup, ConvNorm, NeuMetaFamilyModel


class DoubleConv(nn.Module):
    """Two 3x3 conv+norm+ReLU layers: one U-Net level."""

    def __init__(self, in_channels, out_channels, norm):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 3, 1, norm)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, 1, norm)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class NeuMetaUNetForSemanticSegmentation(NeuMetaFamilyModel):
    config_class = NeuMetaUNetConfig
    task = "image-segmentation"
    output_class = SemanticSegmenterOutput
    ignore_index = IGNORE_INDEX

    def __init__(self, config: NeuMetaUNetConfig):
        super().__init__(config)
        # With morph "last" only the bottleneck follows `width`; the other levels keep their full-width sizes.
        c1, c2 = config.morphed(config.full_width), config.morphed(2 * config.full_width)
        c3 = config.scaled(4 * config.full_width)
        self.enc1 = DoubleConv(config.num_channels, c1, config.norm)
        self.enc2 = DoubleConv(c1, c2, config.norm)
        self.bottleneck = DoubleConv(c2, c3, config.norm)
        # Nearest upsampling then a 3x3 conv (not a transposed conv): every layer stays an nn.Conv2d.
        self.up2 = ConvNorm(c3, c2, 3, 1, config.norm)
        self.dec2 = DoubleConv(2 * c2, c2, config.norm)
        self.up1 = ConvNorm(c2, c1, 3, 1, config.norm)
        self.dec1 = DoubleConv(2 * c1, c1, config.norm)
        self.classifier = nn.Conv2d(c1, config.num_classes, 1)
        self.post_init()

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores `[N, classes, H, W]` at the input resolution."""
        skip1 = self.enc1(pixel_values)
        skip2 = self.enc2(F.max_pool2d(skip1, 2))
        hidden = self.bottleneck(F.max_pool2d(skip2, 2))
        hidden = self.dec2(torch.cat([self._upsample(self.up2, hidden), skip2], dim=1))
        hidden = self.dec1(torch.cat([self._upsample(self.up1, hidden), skip1], dim=1))
        return self.classifier(hidden)

    @staticmethod
    def _upsample(up: ConvNorm, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(up(F.interpolate(hidden, scale_factor=2, mode="nearest")))

    def channel_groups(self) -> list[ChannelGroup]:
        """In network order; with morph "last" only the bottleneck's two groups scale."""
        all_scale = self.config.morph == "all"
        # A decoder's first conv reads [upsampled; skip]: each part of its input axis belongs to another group.
        up1, skip1 = self._concat_slices("dec1.conv1.conv.weight", self.up1.conv.out_channels)
        up2, skip2 = self._concat_slices("dec2.conv1.conv.weight", self.up2.conv.out_channels)
        return [
            *self._level_groups("enc1", [("enc2.conv1.conv.weight", 1), skip1], all_scale),
            *self._level_groups("enc2", [("bottleneck.conv1.conv.weight", 1), skip2], all_scale),
            *self._level_groups("bottleneck", [("up2.conv.weight", 1)], True),
            ChannelGroup.of("up2", self._out_members("up2.conv", "up2.norm") + (up2,), all_scale),
            *self._level_groups("dec2", [("up1.conv.weight", 1)], all_scale),
            ChannelGroup.of("up1", self._out_members("up1.conv", "up1.norm") + (up1,), all_scale),
            *self._level_groups("dec1", [("classifier.weight", 1)], all_scale),
        ]

    def _level_groups(self, level: str, readers: list[tuple], scales: bool) -> list[ChannelGroup]:
        """A level's two groups: between its convs (`<level>.hidden`), and its output with every reader."""
        hidden = self._out_members(f"{level}.conv1.conv", f"{level}.conv1.norm") + ((f"{level}.conv2.conv.weight", 1),)
        outputs = self._out_members(f"{level}.conv2.conv", f"{level}.conv2.norm") + tuple(readers)
        return [ChannelGroup.of(f"{level}.hidden", hidden, scales), ChannelGroup.of(level, outputs, scales)]

    def _concat_slices(self, name: str, upsampled: int) -> tuple[tuple, tuple]:
        """The upsampled and skip parts of a decoder conv's input axis, at this instance's sizes."""
        total = self.get_parameter(name).shape[1]
        return (name, 1, 0, upsampled), (name, 1, upsampled, total)
