import torch
from torch import nn

from .configuration_resnet_cifar import NeuMetaResNetCifarConfig
from .modeling_common import ChannelGroup, ConvNorm, NeuMetaFamilyModel

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    def __init__(self, in_channels, hidden_channels, out_channels, stride, norm):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, hidden_channels, 3, stride, norm)
        self.conv2 = ConvNorm(hidden_channels, out_channels, 3, 1, norm)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = ConvNorm(in_channels, out_channels, 1, stride, norm) if changes_shape else None

    def forward(self, x):
        residual = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + residual)


class NeuMetaResNetCifarForImageClassification(NeuMetaFamilyModel):
    config_class = NeuMetaResNetCifarConfig

    def __init__(self, config: NeuMetaResNetCifarConfig):
        super().__init__(config)
        blocks_per_stage = (config.depth - 2) // 6
        streams = [config.morphed(channels) for channels in STAGE_CHANNELS]
        self.stem = ConvNorm(config.num_channels, streams[0], 3, 1, config.norm)
        self.stages = nn.ModuleList()
        in_channels = streams[0]
        for stage, out_channels in enumerate(streams):
            blocks = nn.ModuleList()
            for index in range(blocks_per_stage):
                is_last_block = stage == len(streams) - 1 and index == blocks_per_stage - 1
                hidden = config.width if (is_last_block and config.morph == "last") else out_channels
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, hidden, out_channels, stride, config.norm))
                in_channels = out_channels
            self.stages.append(blocks)
        self.classifier = nn.Linear(streams[-1], config.num_classes)
        self.post_init()

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.stem(pixel_values))
        for blocks in self.stages:
            for block in blocks:
                hidden = block(hidden)
        return self.classifier(hidden.mean(dim=(2, 3)))

    def channel_groups(self) -> list[ChannelGroup]:
        all_scale = self.config.morph == "all"
        groups = []
        # A residual stream: written by the stem or a stage's first shortcut and by every block's conv2,
        # read by every block's conv1 and shortcut and finally by the classifier.
        stream_writers, stream_readers, streams = ["stem.conv", "stem.norm"], [], 0
        for stage, blocks in enumerate(self.stages):
            for index, block in enumerate(blocks):
                prefix = f"stages.{stage}.{index}"
                readers = [(f"{prefix}.conv1.conv.weight", 1)]
                if block.shortcut is not None:
                    readers.append((f"{prefix}.shortcut.conv.weight", 1))
                    stream = self._out_members(*stream_writers) + tuple(stream_readers + readers)
                    groups.append(ChannelGroup.of(f"stream{streams}", stream, all_scale))
                    streams += 1
                    stream_writers, stream_readers = [f"{prefix}.shortcut.conv", f"{prefix}.shortcut.norm"], []
                else:
                    stream_readers.extend(readers)
                stream_writers += [f"{prefix}.conv2.conv", f"{prefix}.conv2.norm"]
                hidden = self._out_members(f"{prefix}.conv1.conv", f"{prefix}.conv1.norm")
                hidden += ((f"{prefix}.conv2.conv.weight", 1),)
                is_last = stage == len(self.stages) - 1 and index == len(blocks) - 1
                groups.append(ChannelGroup.of(f"{prefix}.hidden", hidden, all_scale or is_last))
        stream = self._out_members(*stream_writers) + tuple(stream_readers + [("classifier.weight", 1)])
        groups.append(ChannelGroup.of(f"stream{streams}", stream, all_scale))
        return groups
