import pytest
import torch
from conftest import inputs_for, random_base

import neumeta_hf as nm
from neumeta_hf.pruning import prune_l1

PRUNABLE = [
    (nm.NeuMetaMLPConfig(), 40),
    (nm.NeuMetaLeNetConfig(), 12),
    (nm.NeuMetaResNetCifarConfig(morph="all", norm="none", width=32), 16),
    (nm.NeuMetaUNetConfig(image_size=16), 12),  # decoder convolutions read concatenated channel groups
    (nm.NeuMetaUNetConfig(image_size=16, morph="last"), 20),
]


@pytest.mark.parametrize("config,width", PRUNABLE, ids=lambda p: getattr(p, "model_type", p))
def test_pruning_removes_dead_channels_and_keeps_the_function(config, width):
    """Channels whose weights are all zero are the smallest in L1 and contribute nothing: pruning a network
    down to exactly its live channels must keep its logits."""
    model = random_base(config).double()
    target = nm.FAMILIES[config.model_type](config.at_width(width))
    target_shapes = {name: tensor.shape for name, tensor in target.state_dict().items()}
    state = model.state_dict()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for group in model.channel_groups():
            first = group.members[0]
            size, live = first.length(state[first.tensor].shape), first.length(target_shapes[first.tensor])
            dead = torch.randperm(size, generator=generator)[live:]
            for member in group.members:
                member.of(state[member.tensor]).index_fill_(member.axis, dead, 0.0)
    x = inputs_for(config).double()
    pruned = prune_l1(model, width)
    assert {name: t.shape for name, t in pruned.state_dict().items()} == target_shapes
    torch.testing.assert_close(pruned(x).logits, model(x).logits, rtol=1e-9, atol=1e-9)


def test_pruning_keeps_the_largest_filters_in_their_order():
    model = random_base(nm.NeuMetaMLPConfig(width=64)).double()
    with torch.no_grad():  # fc1's filter i has L1 norm proportional to i, with mixed signs
        signs = torch.tensor([1.0, -1.0]).repeat(32)
        model.fc1.weight.copy_(torch.arange(64.0).view(64, 1) * signs)
    pruned = prune_l1(model, 16)
    second = model.fc2.weight.abs().sum(1).topk(16).indices.sort().values
    torch.testing.assert_close(pruned.fc1.weight, model.fc1.weight[48:])
    torch.testing.assert_close(pruned.fc1.bias, model.fc1.bias[48:])
    torch.testing.assert_close(pruned.fc2.weight, model.fc2.weight[second][:, 48:])
    torch.testing.assert_close(pruned.classifier.weight, model.classifier.weight[:, second])


def test_pruning_to_full_width_is_the_identity_and_growing_is_refused():
    model = random_base(nm.NeuMetaLeNetConfig())
    same = prune_l1(model, 32)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(same.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="only shrink"):
        prune_l1(model, 40)


def test_transposed_convolutions_are_pruned_by_their_output_filters():
    """A transposed convolution's weight is [in, out, k, k]: its filters (what L1 pruning ranks) are along axis 1,
    and the morph spec scales its fan-in along axis 0."""
    model = random_base(nm.NeuMetaVAEConfig()).double()
    with torch.no_grad():  # decoder.conv2 output channel i (axis 1) gets L1 norm growing with i
        model.decoder.conv2.weight.mul_(0).add_(torch.arange(32.0).view(1, 32, 1, 1) + 1)
    pruned = prune_l1(model, 8)
    torch.testing.assert_close(pruned.decoder.conv2.weight[0, :, 0, 0], torch.arange(24.0, 32.0) + 1, check_dtype=False)
    spec = nm.MorphSpec(model.config)
    ratios = dict(zip(spec.names, spec.coordinates(8).fan_in_ratio.tolist()))
    assert ratios["decoder.conv3.weight"] == 4.0 and ratios["decoder.conv1.weight"] == 1.0  # latent inputs: fixed
