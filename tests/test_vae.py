"""The VAE family: the negative ELBO and its parts, deterministic eval-mode decoding, sampling images, morph modes,
channel groups along transposed convolutions' axis 1, loading through AutoModel, and NeuMeta around it."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_groups_cover, permute, random_base, tensors
from transformers import AutoModel

import neumeta_hf as nm

CONFIGS = [
    nm.NeuMetaVAEConfig(width=8),
    nm.NeuMetaVAEConfig(width=12, latent_size=5, image_size=16),
    nm.NeuMetaVAEConfig(morph="last", width=8, latent_size=4, image_size=12),
]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread runs them fastest on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_id(config):
    return f"{config.morph}-{config.width}-{config.image_size}"


def binary_images(config, n=4, seed=0):
    """Binarised images in {0, 1}, as the data pipeline gives them."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, config.num_channels, config.image_size, config.image_size)
    return (torch.rand(shape, generator=generator) < 0.3).float()


def latents_for(config, n=4, seed=1):
    return torch.randn(n, config.latent_size, generator=torch.Generator().manual_seed(seed))


def hidden_sizes(model):
    """Channels of every hidden layer in network order: encoder conv1, conv2, decoder conv1, conv2."""
    encoder, decoder = model.encoder, model.decoder
    return [
        encoder.conv1.out_channels,
        encoder.conv2.out_channels,
        decoder.conv1.out_channels,
        decoder.conv2.out_channels,
    ]


@torch.no_grad()
def function_of(model, x, z):
    """Everything that must not change when hidden channels are permuted: the posterior, the reconstruction
    (eval mode: decoded at the posterior mean) and the decoding of fixed latents."""
    output = model(x)
    return [output.posterior_mean, output.posterior_logvar, output.logits, model.decode(z)]


def test_output_shapes_and_the_negative_elbo():
    config = nm.NeuMetaVAEConfig(width=8)
    model = nm.NeuMetaVAEModel(config).train()
    x, noise = binary_images(config), latents_for(config)
    output = model(x, latent_noise=noise)
    assert isinstance(output, nm.NeuMetaVAEOutput)
    assert output.logits.shape == (4, 1, 28, 28)
    assert output.posterior_mean.shape == output.posterior_logvar.shape == (4, 16)
    assert output.loss.shape == output.reconstruction_loss.shape == output.kl.shape == ()
    assert torch.isfinite(output.loss) and output.kl > 0
    torch.testing.assert_close(output.loss, output.reconstruction_loss + output.kl)
    # Per image: Bernoulli negative log-likelihood summed over pixels plus the analytic Gaussian KL.
    mean, logvar = output.posterior_mean, output.posterior_logvar
    logits = model.decode(mean + (logvar / 2).exp() * noise)
    torch.testing.assert_close(output.logits, logits)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 4
    prior, posterior = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(mean, (logvar / 2).exp())
    kl = torch.distributions.kl_divergence(posterior, prior).sum() / 4
    torch.testing.assert_close(output.reconstruction_loss, bce)
    torch.testing.assert_close(output.kl, kl)
    output.loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    torch.testing.assert_close(model(x, labels=torch.arange(4), latent_noise=noise).loss, output.loss)  # labels unused


def test_eval_mode_decodes_the_posterior_mean_and_training_mode_samples():
    config = nm.NeuMetaVAEConfig(width=8)
    model = nm.NeuMetaVAEModel(config)
    x = binary_images(config)
    with torch.no_grad():
        first, second = model.eval()(x), model(x)
        assert torch.equal(first.logits, second.logits) and torch.equal(first.loss, second.loss)
        torch.testing.assert_close(first.logits, model.decode(first.posterior_mean), rtol=0, atol=0)
        mean, logvar = model.posterior(x)
        assert torch.equal(mean, first.posterior_mean) and torch.equal(logvar, first.posterior_logvar)
        torch.manual_seed(0)
        sampled = model.train()(x)
        assert not torch.allclose(sampled.logits, first.logits)
        assert torch.equal(sampled.posterior_mean, first.posterior_mean)  # only the latent sample is random


def test_decoding_and_generating_images():
    config = nm.NeuMetaVAEConfig(width=8, image_size=12, latent_size=3)
    model = nm.NeuMetaVAEModel(config).eval()
    assert model.decode(latents_for(config, n=5)).shape == (5, 1, 12, 12)
    images = model.generate_images(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 12, 12) and images.dtype == torch.float32 and not images.requires_grad
    assert ((images > 0) & (images < 1)).all() and images.std() > 0
    expected = torch.sigmoid(model.decode(torch.randn(6, 3, generator=torch.Generator().manual_seed(0))))
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert model.double().generate_images(2).dtype == torch.float64
    pictures = model.float().generate_images(6, generator=torch.Generator().manual_seed(0), return_pil=True)
    assert len(pictures) == 6 and all(p.mode == "L" and p.size == (12, 12) for p in pictures)
    assert list(pictures[5].getdata()) == (images[5, 0] * 255).round().to(torch.uint8).flatten().tolist()


def test_defaults_and_meta_device_construction():
    config = nm.NeuMetaVAEConfig()
    assert (config.width, config.image_size, config.num_channels, config.latent_size) == (32, 28, 1, 16)
    assert config.image_mean == [0.0] and config.image_std == [1.0]  # pixels enter in [0, 1]
    with torch.device("meta"):
        model = nm.NeuMetaVAEModel(config)
    assert model.decoder.conv3.weight.is_meta and hidden_sizes(model) == [32, 64, 64, 32]
    assert model.encoder.posterior.weight.shape == (32, 64, 7, 7) and model.decoder.conv1.weight.shape == (16, 64, 7, 7)
    assert [group.name for group in model.channel_groups()] == ["enc1", "enc2", "dec1", "dec2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 30}, "multiple of 4"),
        ({"image_size": 0}, "multiple of 4"),
        ({"latent_size": 0}, "latent_size must be"),
        ({"latent_size": 2.5}, "latent_size must be"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nm.NeuMetaVAEConfig(**kwargs)


def test_transposed_convolutions_get_he_initialisation_over_their_inputs():
    model = nm.NeuMetaVAEModel(nm.NeuMetaVAEConfig())
    for conv, fan_in in ((model.decoder.conv1, 16), (model.decoder.conv2, 64 * 4), (model.decoder.conv3, 32 * 4)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert not conv.bias.any()
    x = binary_images(model.config)
    with torch.no_grad():
        logits = model.eval()(x).logits
    assert 0.1 < logits.std() < 10  # neither vanishing nor exploding through the decoder


def test_morph_modes_size_exactly_the_right_layers():
    full = nm.NeuMetaVAEModel(nm.NeuMetaVAEConfig())
    every = nm.NeuMetaVAEModel(nm.NeuMetaVAEConfig(width=16))
    last = nm.NeuMetaVAEModel(nm.NeuMetaVAEConfig(width=16, morph="last"))
    assert hidden_sizes(every) == [16, 32, 32, 16]
    assert hidden_sizes(last) == [32, 64, 64, 16]
    full_shapes = {name: tensor.shape for name, tensor in tensors(full).items()}
    changed = {name for name, tensor in tensors(last).items() if tensor.shape != full_shapes[name]}
    assert changed == {"decoder.conv2.weight", "decoder.conv2.bias", "decoder.conv3.weight"}
    # With "all", every tensor shrinks but the posterior's bias and the image's bias.
    unchanged = {name for name, tensor in tensors(every).items() if tensor.shape == full_shapes[name]}
    assert unchanged == {"encoder.posterior.bias", "decoder.conv3.bias"}


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_hidden_channel_is_in_exactly_one_group(config):
    model = nm.NeuMetaVAEModel(config)
    for group in model.channel_groups():
        assert group.scales == (config.morph == "all" or group.name == "dec2"), group.name
    # Hidden axes: conv outputs (axis 0) but the posterior's, conv inputs (axis 1) but the image's; transposed
    # convs the other way round, but the latent (decoder.conv1's inputs) and the image (decoder.conv3's outputs).
    hidden = {
        ("encoder.conv1.weight", 0),
        ("encoder.conv1.bias", 0),
        ("encoder.conv2.weight", 0),
        ("encoder.conv2.bias", 0),
        ("encoder.conv2.weight", 1),
        ("encoder.posterior.weight", 1),
        ("decoder.conv1.weight", 1),
        ("decoder.conv1.bias", 0),
        ("decoder.conv2.weight", 0),
        ("decoder.conv2.weight", 1),
        ("decoder.conv2.bias", 0),
        ("decoder.conv3.weight", 0),
    }
    assert_groups_cover(model, hidden)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_random_permutation_of_every_group_preserves_the_function(config):
    model = random_base(config).double()  # eval mode: decodes the posterior mean
    x, z = binary_images(config).double(), latents_for(config).double()
    expected = function_of(model, x, z)
    generator = torch.Generator().manual_seed(1)
    permute(model, model.channel_groups(), lambda size: torch.randperm(size, generator=generator))
    assert not torch.equal(model.decoder.conv2.weight, random_base(config).double().decoder.conv2.weight)
    for actual, wanted in zip(function_of(model, x, z), expected):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-9)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_leaving_out_any_member_changes_the_function(config):
    """Every member is needed: shifting a group's channels everywhere but in one member changes the function."""
    model = random_base(config).double()
    x, z = binary_images(config, n=2).double(), latents_for(config, n=2).double()
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = function_of(model, x, z)
    for group in model.channel_groups():
        for member in group.members:
            model.load_state_dict(original)
            permute(model, [group], lambda size: torch.roll(torch.arange(size), 1), skip=member)
            change = max(
                (actual - wanted).abs().max().item() for actual, wanted in zip(function_of(model, x, z), expected)
            )
            assert change > 1e-3, (group.name, member)


def test_auto_model_round_trip_with_remote_code(tmp_path):
    config = nm.NeuMetaVAEConfig(width=8, latent_size=6)
    model = random_base(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_vae.py").is_file() and (tmp_path / "configuration_vae.py").is_file()
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "NeuMetaVAEModel" and loaded.config.latent_size == 6
    x, z = binary_images(config), latents_for(config)
    for actual, wanted in zip(function_of(loaded.eval(), x, z), function_of(model, x, z)):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).loss, model(x).loss, rtol=0, atol=0)


@pytest.mark.parametrize("morph", ["all", "last"])
def test_neumeta_builds_around_a_vae_and_samples_working_networks(morph):
    """`from_base_model` permutes the channels for smoothness and checks, through the task's function output, that
    the VAE's function is unchanged; a sampled width runs."""
    base = random_base(nm.NeuMetaVAEConfig(morph=morph, latent_size=4))
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(8, 32), morph=morph, hidden_size=32, num_layers=2)
    network = hyper.sample_model(20)
    assert isinstance(network, nm.NeuMetaVAEModel) and network.config.width == 20 and not network.training
    assert hidden_sizes(network) == ([20, 40, 40, 20] if morph == "all" else [32, 64, 64, 20])
    config = network.config
    with torch.no_grad():
        output = network(binary_images(config))
    assert output.logits.shape == (4, 1, 28, 28) and torch.isfinite(output.loss)
    assert network.generate_images(2).shape == (2, 1, 28, 28)
