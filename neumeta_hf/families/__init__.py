"""Target families: small transformers models whose width NeuMeta varies.

Each family is a config + model pair registered with `AutoConfig` and `AutoModelForImageClassification` when
`neumeta_hf` is imported, and marked for `trust_remote_code` saving so that a saved network carries its code.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_common import NeuMetaFamilyConfig
from .configuration_lenet import NeuMetaLeNetConfig
from .configuration_mlp import NeuMetaMLPConfig
from .configuration_resnet_cifar import NeuMetaResNetCifarConfig
from .image_processing_neumeta import NeuMetaImageProcessor
from .modeling_common import ChannelGroup, NeuMetaFamilyModel
from .modeling_lenet import NeuMetaLeNetForImageClassification
from .modeling_mlp import NeuMetaMLPForImageClassification
from .modeling_resnet_cifar import NeuMetaResNetCifarForImageClassification

FAMILIES: dict[str, type[NeuMetaFamilyModel]] = {
    model.config_class.model_type: model
    for model in (
        NeuMetaMLPForImageClassification,
        NeuMetaLeNetForImageClassification,
        NeuMetaResNetCifarForImageClassification,
    )
}


def family_model_class(family: str) -> type[NeuMetaFamilyModel]:
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[family]


for _model in FAMILIES.values():
    AutoConfig.register(_model.config_class.model_type, _model.config_class, exist_ok=True)
    AutoModelForImageClassification.register(_model.config_class, _model, exist_ok=True)
    _model.config_class.register_for_auto_class()
    _model.register_for_auto_class("AutoModelForImageClassification")
NeuMetaImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "FAMILIES",
    "ChannelGroup",
    "NeuMetaFamilyConfig",
    "NeuMetaFamilyModel",
    "NeuMetaImageProcessor",
    "NeuMetaLeNetConfig",
    "NeuMetaLeNetForImageClassification",
    "NeuMetaMLPConfig",
    "NeuMetaMLPForImageClassification",
    "NeuMetaResNetCifarConfig",
    "NeuMetaResNetCifarForImageClassification",
    "family_model_class",
]
