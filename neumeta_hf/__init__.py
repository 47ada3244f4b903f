"""neumeta-hf: Neural Metamorphosis (Yang & Wang, ECCV 2024) in the Hugging Face ecosystem.

One trained hypernetwork (`NeuMetaModel`) yields a working network of any width in its range:

    hyper = NeuMetaModel.from_pretrained("path/or/repo")
    net = hyper.sample_model(width=20)
"""

from transformers import AutoConfig, AutoModel

from .configuration_neumeta import NeuMetaConfig
from .families import (
    NeuMetaImageProcessor,
    NeuMetaLeNetConfig,
    NeuMetaLeNetForImageClassification,
    NeuMetaMLPConfig,
    NeuMetaMLPForImageClassification,
    NeuMetaResNetCifarConfig,
    NeuMetaResNetCifarForImageClassification,
    NeuMetaUNetConfig,
    NeuMetaUNetForSemanticSegmentation,
    NeuMetaVAEConfig,
    NeuMetaVAEModel,
    NeuMetaVAEOutput,
)
from .folding import fold_batch_norm
from .modeling_neumeta import NeuMetaModel, NeuMetaOutput
from .morph import MorphSpec
from .smoothing import smooth_channels
from .targets import FAMILIES, target
from .version import __version__ as __version__  # the one place it is set

AutoConfig.register(NeuMetaConfig.model_type, NeuMetaConfig, exist_ok=True)
AutoModel.register(NeuMetaConfig, NeuMetaModel, exist_ok=True)

__all__ = [
    "FAMILIES",
    "MorphSpec",
    "NeuMetaConfig",
    "NeuMetaImageProcessor",
    "NeuMetaLeNetConfig",
    "NeuMetaLeNetForImageClassification",
    "NeuMetaMLPConfig",
    "NeuMetaMLPForImageClassification",
    "NeuMetaModel",
    "NeuMetaOutput",
    "NeuMetaResNetCifarConfig",
    "NeuMetaResNetCifarForImageClassification",
    "NeuMetaUNetConfig",
    "NeuMetaUNetForSemanticSegmentation",
    "NeuMetaVAEConfig",
    "NeuMetaVAEModel",
    "NeuMetaVAEOutput",
    "fold_batch_norm",
    "smooth_channels",
    "target",
]
