"""A sampled network must load and classify with transformers alone, where neumeta_hf cannot be imported (and,
for the model without its processor, where Pillow is not installed)."""


import numpy as np
import pytest
import torch
from conftest import BLOCK_NEUMETA, LOAD_WITHOUT_NEUMETA, SMALL_INR, inputs_for, random_base, run_in_clean_process
from PIL import Image
from transformers import AutoImageProcessor

import neumeta_hf as nm
from neumeta_hf.targets import FAMILIES, task_for

# Pillow hidden as if it were not installed: the path finder no longer finds it, so `find_spec("PIL")` is None,
# which is what transformers checks before importing anything that needs it.
LOAD_WITHOUT_PILLOW = BLOCK_NEUMETA + r"""
import importlib.machinery

class WithoutPillow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == "PIL" else super().find_spec(name, path, target)

sys.meta_path[:] = [WithoutPillow if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path]
import numpy as np, torch, transformers

auto_class = getattr(transformers, open(sys.argv[1] + "/auto_class.txt").read())
model = auto_class.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = torch.from_numpy(np.load(sys.argv[1] + "/inputs.npy"))
print(json.dumps({"pillow_imported": "PIL" in sys.modules, "logits": model(inputs).logits.tolist()}))
"""


def test_sampled_network_loads_and_classifies_without_neumeta_hf(mlp_hyper, tmp_path):
    network = mlp_hyper.sample_model(27)
    network.save_pretrained(tmp_path)
    inputs = inputs_for(network.config)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8), "L").save(
        tmp_path / "digit.png"
    )
    loaded = run_in_clean_process(LOAD_WITHOUT_NEUMETA, tmp_path)
    assert not loaded["module"].startswith("neumeta_hf") and loaded["width"] == 27
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["logits"]), network(inputs).logits)
    assert loaded["pipeline"]["label"] in network.config.id2label.values()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loads_and_runs_without_pillow(family, tmp_path):
    """Only the image processor and the pipeline need Pillow: the model's code must import without it (issue 25:
    the VAE's lazy `from PIL import Image` made transformers refuse to load it)."""
    config = FAMILIES[family].config_class()
    hyper = nm.NeuMetaModel.from_base_model(random_base(config), smooth=False, **SMALL_INR)
    network = hyper.sample_model(hyper.config.width_range[0])
    network.save_pretrained(tmp_path)
    (tmp_path / "auto_class.txt").write_text(task_for(network.config, type(network)).auto_class_name)
    inputs = inputs_for(network.config)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    loaded = run_in_clean_process(LOAD_WITHOUT_PILLOW, tmp_path)
    assert not loaded["pillow_imported"]
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["logits"]), network(inputs).logits)


def test_preprocessing_brings_any_image_to_the_network_input(mlp_hyper, tmp_path):
    network = mlp_hyper.sample_model(32)
    network.save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(processor).__name__ == "NeuMetaImageProcessor"  # loaded from the saved code file
    gray = Image.fromarray(np.full((16, 16), 255, dtype=np.uint8), "L")
    for image in (gray, gray.convert("RGB")):
        pixels = processor(image, return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 1, 8, 8)
        expected = (1.0 - network.config.image_mean[0]) / network.config.image_std[0]
        torch.testing.assert_close(pixels, torch.full((1, 1, 8, 8), expected))


def test_rgb_family_processor_keeps_three_channels(tmp_path):
    config = nm.NeuMetaResNetCifarConfig(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.2])
    processor = nm.NeuMetaImageProcessor.for_config(config)
    pixels = processor(Image.new("L", (40, 40), 51), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([-1.5, -1.0, -0.5]))


@pytest.mark.slow
def test_pipeline_classifies_digit_images_with_a_sampled_network(tmp_path):
    """End to end: digits base network -> hypernetwork -> sampled network -> pipeline on PIL images."""
    from accelerate import Accelerator
    from transformers import pipeline

    from neumeta_hf.data import DataConfig, load_splits
    from training.recipe import BaseConfig
    from training.train_base import train_network

    train, _, test, info = load_splits(DataConfig("digits"))
    base = train_network(
        nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs())),
        train, BaseConfig(epochs=15), Accelerator(), seed=0,
    )
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(32, 64), hidden_size=32, num_layers=1)
    hyper.sample_model(48).save_pretrained(tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path), trust_remote_code=True)
    raw = test.with_format("numpy")  # drops the normalising transform: uint8 images as stored
    images = [Image.fromarray(np.asarray(image, dtype=np.uint8)[0], "L") for image in raw[:100]["image"]]
    predicted = [classify(image, top_k=1)[0]["label"] for image in images]
    expected = [info.id2label[int(label)] for label in raw[:100]["label"]]
    correct = sum(p == e for p, e in zip(predicted, expected))
    assert correct >= 80, correct  # chance: 10
