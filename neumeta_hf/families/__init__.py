"""Target families: small transformers models whose width NeuMeta varies.

What a family provides (the contract every part of neumeta-hf relies on):

* a config class, subclass of `NeuMetaFamilyConfig`, with a unique `model_type`, a `full_width` class variable
  and `at_width(width)`; layer sizes follow `width` (`scaled`), and the `morph` mode says which layers do
  ("all", or "last": only the last hidden layer or block);
* a model class, subclass of `NeuMetaFamilyModel`, whose `task` names its pipeline task (`neumeta_hf.tasks`:
  the output it returns, its loss, metrics and Auto class); it builds on the meta device (no data-dependent
  work in `__init__`), and its `channel_groups()` lists every group of coupled hidden channels as
  `ChannelSlice`s -- whole axes, or `[start, stop)` where an axis concatenates groups -- so that permuting a
  group's channels in every member keeps the function (the test every family passes). BatchNorm layers are
  `<name>.conv` + `<name>.norm` pairs (`ConvNorm`), which `folding.py` folds before NeuMeta morphs them;
* files that import only torch and transformers (and each other, relatively): they travel with every saved
  network as remote code.

Adding a family is adding its two files and one `register_family(ModelClass)` call at the end of
`neumeta_hf/targets.py`, which makes it known to neumeta-hf and to transformers' Auto classes.
"""

from .configuration_common import NeuMetaFamilyConfig
from .configuration_lenet import NeuMetaLeNetConfig
from .configuration_mlp import NeuMetaMLPConfig
from .configuration_resnet_cifar import NeuMetaResNetCifarConfig
from .configuration_unet import NeuMetaUNetConfig
from .configuration_vae import NeuMetaVAEConfig
from .image_processing_neumeta import NeuMetaImageProcessor
from .modeling_common import ChannelGroup, ChannelSlice, NeuMetaFamilyModel
from .modeling_lenet import NeuMetaLeNetForImageClassification
from .modeling_mlp import NeuMetaMLPForImageClassification
from .modeling_resnet_cifar import NeuMetaResNetCifarForImageClassification
from .modeling_unet import NeuMetaUNetForSemanticSegmentation
from .modeling_vae import NeuMetaVAEModel, NeuMetaVAEOutput

NeuMetaImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ChannelGroup",
    "ChannelSlice",
    "NeuMetaFamilyConfig",
    "NeuMetaFamilyModel",
    "NeuMetaImageProcessor",
    "NeuMetaLeNetConfig",
    "NeuMetaLeNetForImageClassification",
    "NeuMetaMLPConfig",
    "NeuMetaMLPForImageClassification",
    "NeuMetaResNetCifarConfig",
    "NeuMetaResNetCifarForImageClassification",
    "NeuMetaUNetConfig",
    "NeuMetaUNetForSemanticSegmentation",
    "NeuMetaVAEConfig",
    "NeuMetaVAEModel",
    "NeuMetaVAEOutput",
]
