from .configuration_common import NeuMetaFamilyConfig


class NeuMetaMLPConfig(NeuMetaFamilyConfig):
    """Flatten -> two hidden layers of `width` units -> classes. Default input: 1x8x8 digits; full width 64."""

    model_type = "neumeta-mlp"
    full_width = 64
