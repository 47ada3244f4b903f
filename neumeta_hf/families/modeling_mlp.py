import torch
from torch import nn

from .configuration_mlp import NeuMetaMLPConfig
from .modeling_common import ChannelGroup, NeuMetaFamilyModel


class NeuMetaMLPForImageClassification(NeuMetaFamilyModel):
    config_class = NeuMetaMLPConfig

    def __init__(self, config: NeuMetaMLPConfig):
        super().__init__(config)
        in_features = config.num_channels * config.image_size**2
        # With morph "last" only the second hidden layer follows `width`.
        first = config.width if config.morph == "all" else config.full_width
        self.fc1 = nn.Linear(in_features, first)
        self.fc2 = nn.Linear(first, config.width)
        self.classifier = nn.Linear(config.width, config.num_classes)
        self.post_init()

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(pixel_values.flatten(1)))
        hidden = torch.relu(self.fc2(hidden))
        return self.classifier(hidden)

    def channel_groups(self) -> list[ChannelGroup]:
        return [
            ChannelGroup.of("fc1", self._out_members("fc1") + (("fc2.weight", 1),), self.config.morph == "all"),
            ChannelGroup.of("fc2", self._out_members("fc2") + (("classifier.weight", 1),), True),
        ]
