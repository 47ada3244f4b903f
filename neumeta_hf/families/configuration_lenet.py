from .configuration_common import NeuMetaFamilyConfig


class NeuMetaLeNetConfig(NeuMetaFamilyConfig):
    """LeNet-5-style CNN: conv5x5(width) -> pool -> conv5x5(2 width) -> pool -> conv5x5(4 width) as the fully
    connected layer over the 5x5 map -> classes. Default input: 1x28x28; full width 32."""

    model_type = "neumeta-lenet"
    full_width = 32

    image_size: int = 28
