import json

import pytest
import torch
from conftest import SMALL_INR, inputs_for, random_base, trained_like
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import neumeta_hf as nm
from neumeta_hf.targets import multiply_accumulates


def test_generated_tensors_have_the_shapes_of_the_width(mlp_hyper):
    for width in (16, 27, 64):  # seen, unseen, full
        weights = mlp_hyper.generate_weights(width)
        network = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(width=width))
        expected = {name: tuple(t.shape) for name, t in network.state_dict().items() if name in weights}
        assert {name: tuple(t.shape) for name, t in weights.items()} == expected


def test_sampled_network_is_a_complete_eval_mode_family_model(mlp_hyper):
    network = mlp_hyper.sample_model(27)
    assert type(network) is nm.NeuMetaMLPForImageClassification and not network.training
    assert network.config.width == 27 and network.fc2.weight.shape == (27, 27)
    assert network.config.id2label == mlp_hyper.base_network.config.id2label
    assert network(inputs_for(network.config)).logits.shape == (4, 10)
    # Frozen tensors are copies: changing the sample leaves the hypernetwork alone.
    network.classifier.bias.data.add_(1.0)
    assert not torch.equal(network.classifier.bias, mlp_hyper.base_network.classifier.bias)


def test_untrained_hypernetwork_starts_as_the_base_network_at_full_width():
    config = nm.NeuMetaLeNetConfig()
    base = random_base(config)
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(8, 32), **SMALL_INR)
    x = inputs_for(config)
    torch.testing.assert_close(hyper.sample_model(32)(x).logits, base(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("base_anchor", [True, False])
def test_untrained_generations_have_standard_scale_and_distinct_channels(base_anchor):
    """Each width's tensors have roughly the base's magnitude and channels that are not alike."""
    base = random_base(nm.NeuMetaResNetCifarConfig(morph="all"))
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(16, 64), base_anchor=base_anchor, **SMALL_INR)
    targets = hyper.reconstruction_targets()
    for width in (16, 40, 64):
        for name, tensor in hyper.generate_weights(width).items():
            ratio = float(tensor.pow(2).mean().sqrt() / targets[name].pow(2).mean().sqrt())
            if tensor.numel() >= 64:  # fewer values make too noisy an RMS
                assert 0.2 < ratio < 5, (width, name, ratio)
            if tensor.dim() > 1 and tensor.shape[0] > 2 and tensor[0].numel() >= 16:  # else correlations are noise
                rows = tensor.flatten(1)
                correlation = torch.corrcoef(rows) - torch.eye(len(rows))
                if base_anchor:
                    assert correlation.abs().mean() < 0.5, (width, name)
                assert (rows - rows.mean(0)).abs().max() > 1e-3 * rows.abs().max(), (width, name)


def test_width_errors_state_the_trained_range(mlp_hyper):
    with pytest.raises(TypeError, match="trained range 16-64"):
        mlp_hyper.sample_model(20.5)
    with pytest.raises(TypeError, match="trained range 16-64"):
        mlp_hyper.generate_weights("32")
    with pytest.raises(ValueError, match="trained range 16-64"):
        mlp_hyper.sample_model(0)
    with pytest.warns(UserWarning, match="outside the trained range 16-64"):
        assert mlp_hyper.sample_model(80).config.width == 80


def test_same_arguments_give_bit_identical_networks(mlp_hyper):
    hyper = trained_like(mlp_hyper)
    first = hyper.sample_model(30, num_samples=5, seed=3).state_dict()
    again = hyper.sample_model(30, num_samples=5, seed=3).state_dict()
    other_seed = hyper.sample_model(30, num_samples=5, seed=4).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["fc2.weight"], other_seed["fc2.weight"])


def test_averaging_starts_from_the_noise_free_generation(mlp_hyper):
    hyper = trained_like(mlp_hyper)
    noise_free = hyper.generate_weights(30, noise=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise_free["fc2.weight"], hyper.generate_weights(30)["fc2.weight"])
    averaged = hyper.generate_weights(30, num_samples=4, generator=torch.Generator().manual_seed(0))
    difference = (averaged["fc2.weight"] - noise_free["fc2.weight"]).abs().max()
    assert 0 < difference < noise_free["fc2.weight"].abs().max()
    # The full width is fitted without noise, so it is never averaged with jittered copies.
    full = hyper.generate_weights(64, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(full[name], tensor) for name, tensor in hyper.generate_weights(64).items())


def test_forward_trains_the_inr_with_one_backward_and_no_gradient_for_frozen_tensors(mlp_hyper):
    hyper = nm.NeuMetaModel(mlp_hyper.config)
    hyper.load_state_dict(mlp_hyper.state_dict())
    hyper.train()
    x, labels = inputs_for(hyper.base_network.config, n=8), torch.arange(8)
    output = hyper(x, width=24, labels=labels)
    assert output.logits.shape == (8, 10) and output.weights["fc2.weight"].shape == (24, 24)
    output.loss.backward()
    assert hyper.inr.output_weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in hyper.base_network.parameters())
    # Eval mode, no noise: the functional forward is the sampled network's forward.
    hyper.eval()
    with torch.no_grad():
        torch.testing.assert_close(hyper(x, width=24).logits, hyper.sample_model(24)(x).logits)
        # The inputs by the network's own name, as transformers models are called.
        torch.testing.assert_close(hyper(pixel_values=x, width=24).logits, hyper(x, width=24).logits)
    with pytest.raises(TypeError, match="forward needs the inputs \\(first, or as pixel_values=\\) and width="):
        hyper(pixel_values=x)


def test_save_and_load_reproduce_generation_exactly(mlp_hyper, tmp_path):
    mlp_hyper = trained_like(mlp_hyper)
    mlp_hyper.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, nm.NeuMetaModel)
    for width in (16, 27, 64):
        expected, actual = mlp_hyper.generate_weights(width), loaded.generate_weights(width)
        assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert all(not p.requires_grad for p in loaded.base_network.parameters())
    assert loaded.config.smoothing == mlp_hyper.config.smoothing


@pytest.fixture
def saved(mlp_hyper, tmp_path):
    mlp_hyper.save_pretrained(tmp_path)
    return tmp_path


def test_checkpoint_missing_a_tensor_fails_naming_it(saved):
    state = load_file(saved / "model.safetensors")
    del state["inr.output_bias"]
    save_file(state, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys: inr.output_bias"):
        nm.NeuMetaModel.from_pretrained(saved)


def test_checkpoint_with_a_wrong_shape_fails_naming_it(saved):
    state = load_file(saved / "model.safetensors")
    state["base_network.fc1.weight"] = torch.zeros(3, 3)
    save_file(state, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="mismatched_keys: base_network.fc1.weight"):
        nm.NeuMetaModel.from_pretrained(saved)


def test_checkpoint_for_another_config_fails(saved):
    config = json.loads((saved / "config.json").read_text())
    config["hidden_size"] = 64
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mismatched_keys: .*inr.position_weight"):
        nm.NeuMetaModel.from_pretrained(saved)


def test_corrupt_checkpoint_file_fails(saved):
    (saved / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        nm.NeuMetaModel.from_pretrained(saved)


def test_config_for_an_unknown_family_fails_listing_known_ones(saved):
    config = json.loads((saved / "config.json").read_text())
    config["family"] = "neumeta-vgg"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="known families: neumeta-mlp"):
        nm.NeuMetaModel.from_pretrained(saved)


def test_resnet_last_block_hypernetwork_round_trip(tmp_path):
    base = random_base(nm.NeuMetaResNetCifarConfig(morph="last"))
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(32, 64), morph="last", **SMALL_INR)
    network = hyper.sample_model(40)
    assert network.config.morph == "last" and network.config.norm == "none"
    assert network.stages[2][2].conv1.conv.weight.shape == (40, 64, 3, 3)
    hyper.save_pretrained(tmp_path)
    reloaded = nm.NeuMetaModel.from_pretrained(tmp_path).sample_model(40).state_dict()
    assert all(torch.equal(t, reloaded[name]) for name, t in network.state_dict().items())


def test_width_for_budget_is_the_widest_network_that_fits(mlp_hyper):
    sizes = {w: mlp_hyper.spec.skeleton(w).num_parameters() for w in (16, 39, 40, 64)}
    assert mlp_hyper.width_for_budget(sizes[40]) == 40
    assert mlp_hyper.width_for_budget(sizes[40] - 1) == 39
    assert mlp_hyper.width_for_budget(10**9) == 64
    assert mlp_hyper.sample_model(mlp_hyper.width_for_budget(sizes[39])).num_parameters() == sizes[39]
    with pytest.raises(ValueError, match=f"the smallest network of the trained range \\(width 16\\) has {sizes[16]:,}"):
        mlp_hyper.width_for_budget(sizes[16] - 1)


def test_width_for_budget_in_multiply_accumulates(mlp_hyper):
    """Issue 25: a budget in multiply-accumulates per example (the MLP: its linear layers' weights), alone or with
    one in parameters, where the tighter one decides."""
    macs = {w: multiply_accumulates(mlp_hyper.spec.skeleton(w)) for w in (16, 39, 40)}
    assert macs[40] == sum(m.weight.numel() for m in mlp_hyper.sample_model(40).modules() if isinstance(m, torch.nn.Linear))
    assert mlp_hyper.width_for_budget(max_macs=macs[40]) == 40
    assert mlp_hyper.width_for_budget(max_macs=macs[40] - 1) == 39
    assert mlp_hyper.width_for_budget(max_parameters=10**9, max_macs=macs[39]) == 39
    assert mlp_hyper.width_for_budget(max_parameters=mlp_hyper.spec.skeleton(39).num_parameters(), max_macs=10**9) == 39
    with pytest.raises(ValueError, match=f"max_macs=15: the smallest network .* has {macs[16]:,} macs"):
        mlp_hyper.width_for_budget(max_macs=15)
    with pytest.raises(TypeError, match="needs max_parameters, max_macs or both"):
        mlp_hyper.width_for_budget()
