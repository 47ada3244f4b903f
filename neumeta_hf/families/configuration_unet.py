from .configuration_common import NeuMetaFamilyConfig


class NeuMetaUNetConfig(NeuMetaFamilyConfig):
    """Small U-Net for semantic segmentation: two encoder levels at `width` and 2 `width` channels (two 3x3 convs
    each, then 2x2 max-pooling), a bottleneck at 4 `width`, and two decoder levels that upsample, halve the
    channels, concatenate the encoder's skip and apply two 3x3 convs; a 1x1 conv gives per-pixel class scores.
    Default input 1x64x64, 11 classes (class 0 is background); full width 32.

    `morph="last"` lets only the bottleneck's channels follow `width` (the NeuMeta paper morphs one encoder
    block); `morph="all"` scales every level by width / 32.
    `norm="batch"` uses BatchNorm after every 3x3 conv; `norm="none"` uses biased convs instead (what folding
    BatchNorm into the convs produces).
    """

    model_type = "neumeta-unet"
    full_width = 32

    norm: str = "batch"
    num_classes: int = 11
    image_size: int = 64

    def __post_init__(self, **kwargs):
        # Two poolings halve the map twice, and upsampling must give back the skip connections' exact size.
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"neumeta-unet: image_size must be a positive multiple of 4, got {self.image_size}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"neumeta-unet: norm must be 'batch' or 'none', got {self.norm!r}")
        super().__post_init__(**kwargs)
