from .configuration_common import NeuMetaFamilyConfig


class NeuMetaResNetCifarConfig(NeuMetaFamilyConfig):
    """CIFAR ResNet (He et al. 2016): a 3x3 stem and three stages of `(depth - 2) / 6` basic blocks at 16, 32
    and 64 channels, 1x1 projection shortcuts where the shape changes. Default input 3x32x32; full width 64.

    `width` is the hidden width of the last block when `morph="last"` (the NeuMeta paper's setting); with
    `morph="all"` every stage, residual streams included, scales by width / 64.
    `norm="batch"` uses BatchNorm after every conv; `norm="none"` uses biased convs instead (what folding
    BatchNorm into the convs produces).
    """

    model_type = "neumeta-resnet-cifar"
    full_width = 64

    depth: int = 20
    norm: str = "batch"
    num_channels: int = 3
    image_size: int = 32

    def __post_init__(self, **kwargs):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"neumeta-resnet-cifar: depth must be 6n+2 (20, 32, 56, ...), got {self.depth}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"neumeta-resnet-cifar: norm must be 'batch' or 'none', got {self.norm!r}")
        super().__post_init__(**kwargs)
