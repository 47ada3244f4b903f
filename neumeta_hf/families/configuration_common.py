"""Fields shared by every target family: a width, class labels, the input image and its normalisation.

This file, like every file in this folder, imports only torch and transformers: it is copied next to saved
networks so that they load with `trust_remote_code=True` where neumeta_hf is not installed.
"""

from typing import ClassVar

from transformers import PreTrainedConfig

MORPH_MODES = ("all", "last")


class NeuMetaFamilyConfig(PreTrainedConfig):
    """Base config of a target family (a transformers 5 dataclass config: subclasses redeclare defaults).

    Args:
        width: the width that NeuMeta varies; its meaning (and how each layer's size follows from it) is the
            family's. Defaults to the family's full width.
        morph: "all" scales every hidden layer with `width`; "last" only the last hidden layer or block.
        num_classes: number of output classes (taken from `id2label` when that is given).
        num_channels, image_size: shape of the input images (`num_channels x image_size x image_size`).
        image_mean, image_std: per-channel normalisation the network expects, written into its image processor.
    """

    full_width: ClassVar[int] = 64

    width: int | None = None
    morph: str = "all"
    num_classes: int = 10
    num_channels: int = 1
    image_size: int = 8
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs):
        name = type(self).__name__
        if self.width is None:
            self.width = self.full_width
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"{name}: width must be a positive integer, got {self.width!r}")
        if self.morph not in MORPH_MODES:
            raise ValueError(f"{name}: morph must be one of {MORPH_MODES}, got {self.morph!r}")
        if self.id2label is None:
            self.id2label = {i: str(i) for i in range(self.num_classes)}
        if self.label2id is None:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
        self.image_mean = list(self.image_mean or [0.5] * self.num_channels)
        self.image_std = list(self.image_std or [0.5] * self.num_channels)
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(
                f"{name}: image_mean and image_std need one value per input channel ({self.num_channels}), "
                f"got {self.image_mean} and {self.image_std}"
            )
        super().__post_init__(**kwargs)
        self.num_classes = self.num_labels

    def at_width(self, width: int) -> "NeuMetaFamilyConfig":
        """The same config at width `width` (everything else unchanged)."""
        return type(self).from_dict({**self.to_dict(), "width": width})

    def scaled(self, base: int) -> int:
        """`base` channels scaled by width / full width, at least one (the rule every family uses)."""
        return max(1, round(base * self.width / self.full_width))

    def morphed(self, base: int) -> int:
        """`base` channels of a layer that follows the width only under morph "all": `scaled` then, else as they
        are (with morph "last" only the family's last hidden layer or block follows the width)."""
        return self.scaled(base) if self.morph == "all" else base
