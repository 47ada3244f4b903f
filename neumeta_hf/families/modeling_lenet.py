import torch
import torch.nn.functional as F
from torch import nn

from .configuration_lenet import NeuMetaLeNetConfig
from .modeling_common import ChannelGroup, NeuMetaFamilyModel


class NeuMetaLeNetForImageClassification(NeuMetaFamilyModel):
    config_class = NeuMetaLeNetConfig

    def __init__(self, config: NeuMetaLeNetConfig):
        super().__init__(config)
        # With morph "last" only the last hidden layer (conv3) follows `width`.
        c1, c2 = config.morphed(config.full_width), config.morphed(2 * config.full_width)
        c3 = config.scaled(4 * config.full_width)
        spatial = (config.image_size // 2 - 4) // 2  # after conv1 (padded), pool, conv2 (valid), pool
        if spatial < 1:
            raise ValueError(f"neumeta-lenet needs image_size >= 12, got {config.image_size}")
        self.conv1 = nn.Conv2d(config.num_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        # LeNet-5's C5: a convolution whose kernel covers the whole map is the fully connected layer, and keeps
        # each input channel's 5x5 weights together as one kernel (one coordinate per channel pair).
        self.conv3 = nn.Conv2d(c2, c3, spatial)
        self.classifier = nn.Linear(c3, config.num_classes)
        self.post_init()

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = F.max_pool2d(torch.relu(self.conv1(pixel_values)), 2)
        hidden = F.max_pool2d(torch.relu(self.conv2(hidden)), 2)
        hidden = torch.relu(self.conv3(hidden)).flatten(1)
        return self.classifier(hidden)

    def channel_groups(self) -> list[ChannelGroup]:
        scales = self.config.morph == "all"
        return [
            ChannelGroup.of("conv1", self._out_members("conv1") + (("conv2.weight", 1),), scales),
            ChannelGroup.of("conv2", self._out_members("conv2") + (("conv3.weight", 1),), scales),
            ChannelGroup.of("conv3", self._out_members("conv3") + (("classifier.weight", 1),), True),
        ]
