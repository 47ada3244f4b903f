"""Nested (slimmable) networks: the baseline of the quality benchmark, and the anchor NeuMeta can build on."""

import pytest
import torch
from accelerate import Accelerator
from conftest import SMALL_INR, inputs_for, quick_config, random_base
from torch.func import functional_call

import neumeta_hf as nm
from neumeta_hf.data import load_splits
from neumeta_hf.evaluation import evaluate_score
from neumeta_hf.pruning import first_channels, nested_weights, prune_l1
from training import train_base


@pytest.mark.parametrize("config", [nm.NeuMetaMLPConfig(), nm.NeuMetaLeNetConfig(image_size=28)])
def test_a_nested_network_is_the_first_channels_of_every_layer(config):
    base = random_base(config)
    inputs = inputs_for(config)
    network = first_channels(base, 20)
    assert network.config.width == 20
    for name, tensor in network.state_dict().items():
        full = base.state_dict()[name]
        assert torch.equal(tensor, full[tuple(slice(0, n) for n in tensor.shape)]), name
    with torch.device("meta"):
        skeleton = type(base)(config.at_width(20))
    through_views = functional_call(skeleton, nested_weights(base, skeleton), (inputs,)).logits
    torch.testing.assert_close(through_views, network(inputs).logits)
    assert torch.equal(first_channels(base, config.width)(inputs).logits, base(inputs).logits)
    with pytest.raises(ValueError, match="can only be narrower: width 70"):
        first_channels(base, 70)


def test_a_batch_norm_network_narrower_than_full_needs_calibration_which_recomputes_its_statistics():
    base = random_base(nm.NeuMetaResNetCifarConfig(depth=8))
    with pytest.raises(ValueError, match="has BatchNorm, whose statistics differ per width: pass calibration="):
        first_channels(base, 8)
    assert torch.equal(first_channels(base, 64).stem.norm.running_var, base.stem.norm.running_var)  # full width
    batches = [inputs_for(base.config, seed=seed) for seed in range(3)]
    network = first_channels(base, 8, calibration=batches)
    assert not network.training and network.stem.norm.momentum == base.stem.norm.momentum
    # US-Nets' calibration: the plain average over the batches of each batch's statistics, at this width's channels.
    outputs = [network.stem.conv(x) for x in batches]
    expected_mean = torch.stack([out.mean((0, 2, 3)) for out in outputs]).mean(0)
    expected_var = torch.stack([out.var((0, 2, 3)) for out in outputs]).mean(0)  # unbiased, as BatchNorm keeps it
    torch.testing.assert_close(network.stem.norm.running_mean, expected_mean.detach())
    torch.testing.assert_close(network.stem.norm.running_var, expected_var.detach())
    assert not torch.equal(network.stem.norm.running_mean, base.stem.norm.running_mean[:8])
    with pytest.raises(ValueError, match="at least one batch"):
        first_channels(base, 8, calibration=[])


def test_first_channel_anchor_starts_as_the_nested_network_at_every_width():
    base = random_base(nm.NeuMetaMLPConfig())
    hyper = nm.NeuMetaModel.from_base_model(
        base, width_range=(16, 64), smooth=False, anchor_channels="first", **SMALL_INR
    )
    inputs = inputs_for(base.config)
    for width in (16, 23, 40, 64):
        expected = first_channels(base, width)(inputs).logits
        torch.testing.assert_close(hyper.sample_model(width, num_samples=3)(inputs).logits, expected)
    with pytest.raises(ValueError, match='anchor_channels="first" .* pass smooth=False'):
        nm.NeuMetaModel.from_base_model(base, width_range=(16, 64), anchor_channels="first", **SMALL_INR)
    with pytest.raises(ValueError, match="anchor_channels must be one of"):
        nm.NeuMetaConfig(family="neumeta-mlp", anchor_channels="middle")


def test_slimmable_training_makes_every_width_work_and_pruned_fine_tuning_recovers(tmp_path, fresh_accelerate_state):
    config = quick_config(tmp_path, "base.slimmable=true", "base.epochs=8", "data.validation_size=300")
    train, validation, test, info = load_splits(config.data)
    assert (len(train), len(validation)) == (1438 - 300, 300)
    slimmable = train_base.build_base_network(config, train, info, Accelerator())
    plain = quick_config(tmp_path, "base.epochs=8", "data.validation_size=300")
    full_only = train_base.build_base_network(plain, train, info, Accelerator())
    # Trained at the narrow widths too, the slimmable network's first 32 channels work; the plain network's do not.
    nested = evaluate_score(first_channels(slimmable, 32), validation)
    assert nested > 0.85 and nested > evaluate_score(first_channels(full_only, 32), validation) + 0.05

    full_only.save_pretrained(tmp_path / "plain")
    finetune = quick_config(tmp_path, f"base.prune_from={tmp_path / 'plain'}", "base.family_config.width=16",
                            "base.epochs=2", "base.learning_rate=1e-3", "data.validation_size=300")  # fmt: skip
    tuned = train_base.build_base_network(finetune, train, info, Accelerator())
    assert tuned.config.width == 16
    assert evaluate_score(tuned, validation) > evaluate_score(prune_l1(full_only, 16), validation)


def test_a_slimmable_vae_distils_posterior_and_pixels_into_its_narrow_widths(tmp_path, fresh_accelerate_state):
    from test_generation import QUICK_VAE, VAE

    from training.recipe import load_config

    def trained(*extra):
        config = load_config(VAE, [f"output_dir={tmp_path}", *QUICK_VAE, "base.epochs=8", *extra])
        train, validation, test, info = load_splits(config.data)
        model = train_base.build_base_network(config, train, info, Accelerator())
        return model, validation

    slimmable, validation = trained("base.slimmable=true")
    plain, _ = trained()
    # Negative log-likelihood in nats (lower is better): the slimmable VAE's first 8 channels are a working VAE
    # (a fair coin per pixel scores 44.4 on these 64 pixels); the plain VAE's are not, and its full width is no better.
    narrow = evaluate_score(first_channels(slimmable, 8), validation)
    assert narrow < 40 and narrow < evaluate_score(first_channels(plain, 8), validation) - 5
    assert evaluate_score(slimmable, validation) < 40
