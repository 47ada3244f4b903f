"""Generation end to end: a VAE hypernetwork trained by training/train.py on binarised digits, a network sampled
at an unseen width, pushed through the (fake) Hub and used by a stranger with transformers alone."""

import json

import numpy as np
import pytest
import torch
from conftest import BLOCK_NEUMETA, REPO, run

import neumeta_hf as nm
from training import train as train_script

VAE = str(REPO / "training" / "configs" / "fashion_mnist_vae.yaml")
# The shipped recipe on scikit-learn's 8x8 digits (always available), shortened.
QUICK_VAE = [
    "data.name=digits", "data.validation_size=100", "data.max_test_samples=100", "base.epochs=15",
    "training.epochs=null", "training.max_steps=200", "training.warmup_steps=10", "training.checkpoint_every=200",
    "training.eval_every=200", "sweep.widths=[8,21,32]", "sweep.save_width=21",
]  # fmt: skip

GENERATE_WITHOUT_NEUMETA = BLOCK_NEUMETA + r"""
import torch
from transformers import AutoModel

model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
images = model.generate_images(4, generator=torch.Generator().manual_seed(0))
pictures = model.generate_images(2, return_pil=True)
print(json.dumps({"module": type(model).__module__, "width": model.config.width, "images": images.tolist(),
                  "pil": [picture.size for picture in pictures]}))
"""


def test_a_pretrained_vae_base_is_fed_binarised_pixels_as_it_was_trained(tmp_path):
    """Found running the VAE benchmark: with base.pretrained, every stage after the base took the base's saved
    normalisation (mean 0, std 1) into data.image_mean, which binarised data refuses -- the nested stage, the
    hypernetwork and the plain method all stopped before training."""
    from neumeta_hf.data import load_splits
    from neumeta_hf.publishing import save_network
    from training.recipe import load_config
    from training.train_base import adopt_base_preprocessing

    save_network(nm.NeuMetaVAEModel(nm.NeuMetaVAEConfig(image_size=8)), tmp_path / "base")
    config = load_config(VAE, [f"output_dir={tmp_path / 'run'}", *QUICK_VAE, f"base.pretrained={tmp_path / 'base'}"])
    adopt_base_preprocessing(config)
    assert config.data.image_mean is None and config.data.image_std is None
    train, _, _, _ = load_splits(config.data)
    assert set(train[:16]["pixel_values"].unique().tolist()) == {0.0, 1.0}


@pytest.mark.slow
def test_sampled_vae_generates_images_through_the_hub_without_neumeta_hf(hub, tmp_path, fresh_accelerate_state):  # noqa: F811
    from training.recipe import load_config

    config = load_config(VAE, [f"output_dir={tmp_path / 'run'}", *QUICK_VAE])
    result = train_script.train(config)
    assert result["metric"] == "nll" and not result["higher_is_better"]
    nll = {row["width"]: row["nll"] for row in result["results"]}
    assert not next(row for row in result["results"] if row["width"] == 21)["seen_in_training"]
    # 64 binary pixels: a model that knows nothing (each pixel a fair coin) scores 64 log 2 = 44.4 nats.
    assert max(nll.values()) < 40, nll
    assert all(row["negative_elbo"] >= row["nll"] - 1e-6 for row in result["results"])  # the bound holds
    hypernetwork = tmp_path / "run" / "hypernetwork"
    card = (hypernetwork / "README.md").read_text()
    assert "Negative log-likelihood across widths" in card and "(samples.png)" in card and "(reconstructions.png)" in card

    pushed = run(["sample", str(hypernetwork), "--width", "21", "--output", str(tmp_path / "nets"),
                  "--push-to-hub", "me/vae-w21"], hub, tmp_path)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    files = hub.repo_files("me/vae-w21")
    assert {"modeling_vae.py", "configuration_vae.py", "README.md", "model.safetensors"} <= set(files)
    assert "model.generate_images(8, return_pil=True)" in files["README.md"].decode()
    # The sampled network's card shows its hypernetwork's pictures, which travel with it.
    assert "(samples.png)" in files["README.md"].decode() and files["samples.png"][:4] == b"\x89PNG"
    assert (tmp_path / "run" / "sampled-width-21" / "reconstructions.png").is_file()

    generated = run(["me/vae-w21"], hub, tmp_path, code=GENERATE_WITHOUT_NEUMETA)
    assert generated.returncode == 0, generated.stderr[-3000:]
    loaded = json.loads(generated.stdout.strip().splitlines()[-1])
    assert not loaded["module"].startswith("neumeta_hf") and loaded["width"] == 21
    assert loaded["pil"] == [[8, 8], [8, 8]]
    network = nm.NeuMetaModel.from_pretrained(hypernetwork).sample_model(21)
    expected = network.generate_images(4, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.asarray(loaded["images"]), expected.numpy(), atol=1e-6)
