import pytest
import torch

import neumeta_hf as nm
from neumeta_hf.morph import resample_channels


def spec_for(config):
    return nm.MorphSpec(nm.fold_batch_norm(nm.FAMILIES[config.model_type](config)).config)


def test_last_block_morph_generates_only_tensors_whose_shape_follows_width():
    spec = spec_for(nm.NeuMetaResNetCifarConfig(morph="last"))
    assert spec.names == (
        "stages.2.2.conv1.conv.weight",
        "stages.2.2.conv1.conv.bias",
        "stages.2.2.conv2.conv.weight",
    )
    assert sum(spec.coordinates(64).row_counts) == 64 * 64 + 64 + 64 * 64
    assert spec.kernel_sizes == (9, 1, 9)
    # Permutation groups: the morphing hidden channels and the residual stream conv2 writes into.
    assert [g.name for g in spec.groups] == ["stages.2.2.hidden", "stream2"]


def test_whole_network_morph_covers_every_layer_but_the_class_biases():
    spec = spec_for(nm.NeuMetaLeNetConfig())
    assert "classifier.bias" not in spec.names and "classifier.weight" in spec.names
    assert len(spec.names) == 7


def test_batch_norm_must_be_folded_first():
    with pytest.raises(ValueError, match="fold BatchNorm"):
        nm.MorphSpec(nm.NeuMetaResNetCifarConfig(morph="all"))


@pytest.mark.parametrize("width", [16, 23, 64])
def test_coordinates_match_an_element_by_element_construction(width):
    spec = spec_for(nm.NeuMetaMLPConfig())
    coordinates = spec.coordinates(width)
    shapes = spec.shapes(width)
    positions, context = [], []
    for index, tensor in enumerate(spec.tensors):
        shape, full = shapes[tensor.name], spec.shapes(64)[tensor.name]
        c_out, c_in = shape[0], shape[1] if len(shape) > 1 else 1
        context.append([index / 5, c_out / full[0], c_in / (full[1] if len(full) > 1 else 1)])
        for o in range(c_out):
            for c in range(c_in):
                positions.append([(o + 0.5) / c_out, (c + 0.5) / c_in])
    torch.testing.assert_close(coordinates.positions(), torch.tensor(positions))
    torch.testing.assert_close(coordinates.context, torch.tensor(context))
    assert coordinates.shapes == tuple(shapes[name] for name in spec.names)
    assert spec.coordinates(width) is coordinates  # cached per width


def test_noise_moves_whole_channels_along_axes_that_follow_the_width():
    spec = spec_for(nm.NeuMetaMLPConfig())
    coordinates = spec.coordinates(32)
    jitter = coordinates.draw_jitter(1.0, torch.Generator().manual_seed(0))
    assert jitter.shape == (32 + 32,) and jitter.abs().max() <= 0.5  # one offset per hidden channel
    moved = (coordinates.positions(jitter) - coordinates.positions()).view(-1, 2)
    rows = dict(zip(spec.names, moved.split(coordinates.row_counts)))
    fc1_out = rows["fc1.weight"].view(32, 64, 2)[:, 0, 0]
    fc2_in = rows["fc2.weight"].view(32, 32, 2)[0, :, 1]
    torch.testing.assert_close(fc1_out, fc2_in)  # hidden channel i moves alike in both tensors
    torch.testing.assert_close(fc1_out * 32, coordinates.group_jitter(jitter, 0))
    assert rows["classifier.weight"][:, 0].abs().max() == 0  # class outputs never move
    assert rows["fc1.weight"][:, 1].abs().max() == 0  # nor do input pixels
    assert coordinates.draw_jitter(0.0) is None


def test_resample_channels_interpolates_between_channel_centres():
    tensor = torch.arange(4.0).view(4, 1)
    assert torch.equal(resample_channels(tensor, (4, 1)), tensor)
    shifted = resample_channels(tensor, (4, 1), (torch.tensor([0.5, 0.0, -0.5, 0.0]), None))
    torch.testing.assert_close(shifted.flatten(), torch.tensor([0.5, 1.0, 1.5, 3.0]))
    torch.testing.assert_close(resample_channels(tensor, (2, 1)), torch.tensor([[0.5], [2.5]]))
    torch.testing.assert_close(resample_channels(tensor, (8, 1)).flatten()[[0, 3, 7]], torch.tensor([0.0, 1.25, 3.0]))


def test_folded_fixed_axes_give_one_row_per_scaling_channel_in_place():
    # MLP: fc1 [w, 64] (inputs fixed), fc1 bias [w], fc2 [w, w] (both scale), classifier [10, w] (outputs fixed).
    config = nm.NeuMetaMLPConfig(width=64)
    folded, plain = nm.MorphSpec(config, fold_fixed_axes=True), nm.MorphSpec(config)
    shapes = folded.shapes(40)
    rows = dict(zip(folded.names, folded.coordinates(40).row_counts))
    along = {t.name: t.rows_along for t in folded.tensors}
    classifier = next(name for name, shape in shapes.items() if name in along and shape[0] == 10)
    assert along[classifier] == 1 and rows[classifier] == 40
    assert folded.kernel_sizes[folded.names.index(classifier)] == 10
    assert sum(folded.coordinates(40).row_counts) < sum(plain.coordinates(40).row_counts)
    assert all(t.rows_along is None for t in plain.tensors)
    # Row i of a tensor folded along its inputs is input channel i: its coordinate and its column.
    tensor = folded.tensors[folded.names.index(classifier)]
    values = torch.arange(40.0).view(40, 1).expand(40, 10)  # row i holds the value i everywhere
    weight = tensor.from_rows(values, shapes[classifier])
    assert weight.shape == (10, 40) and torch.equal(weight[3], torch.arange(40.0))
    start = sum(list(rows.values())[: folded.names.index(classifier)])
    centres = folded.coordinates(40).centres[start : start + 40]
    torch.testing.assert_close(centres[:, 1], (torch.arange(40) + 0.5) / 40)
    torch.testing.assert_close(centres[:, 0], torch.full((40,), 0.5))


def test_an_axis_that_concatenates_groups_gives_each_group_its_own_stretch_and_jitter():
    """A U-Net decoder convolution reads [upsampled; skip]: its input axis holds two channel groups, each placed
    in its own half of the coordinate range and moved by its own group's offsets."""
    spec = spec_for(nm.NeuMetaUNetConfig(image_size=16))
    name = "dec1.conv1.conv.weight"
    index = spec.names.index(name)
    tensor = spec.tensors[index]
    groups = [spec.scaling_groups[g].name for g in tensor.in_groups]
    assert groups == ["up1", "enc1"] and len(tensor.out_groups) == 1
    width = 12
    coordinates = spec.coordinates(width)
    assert coordinates.segments[index] == ((width,), (width, width))
    start = sum(coordinates.row_counts[:index])
    rows = slice(start, start + coordinates.row_counts[index])
    inputs = coordinates.centres[rows].view(width, 2 * width, 2)[0, :, 1]
    expected = torch.cat([(torch.arange(width) + 0.5) / width / 2, 0.5 + (torch.arange(width) + 0.5) / width / 2])
    torch.testing.assert_close(inputs, expected)
    jitter = coordinates.draw_jitter(1.0, torch.Generator().manual_seed(0))
    moved = (coordinates.positions(jitter) - coordinates.positions())[rows].view(width, 2 * width, 2)[0, :, 1]
    up1, enc1 = (coordinates.group_jitter(jitter, g) for g in tensor.in_groups)
    torch.testing.assert_close(moved, torch.cat([up1, enc1]) / (2 * width))
    torch.testing.assert_close(coordinates.axis_jitter(jitter, index)[1], torch.cat([up1, enc1]))


def test_resample_channels_resamples_each_concatenated_group_on_its_own():
    tensor = torch.cat([torch.arange(4.0), 10 + torch.arange(4.0)]).view(8, 1)
    halves = resample_channels(tensor, (4, 1), segments=(((4, 4), (2, 2)), None))
    torch.testing.assert_close(halves.flatten(), torch.tensor([0.5, 2.5, 10.5, 12.5]))  # no group blends into another
    uneven = resample_channels(tensor, (5, 1), segments=(((4, 4), (4, 1)), None))
    torch.testing.assert_close(uneven.flatten(), torch.tensor([0.0, 1.0, 2.0, 3.0, 11.5]))


def test_an_untrained_hypernetwork_starts_from_each_groups_first_channels_with_anchor_first():
    """anchor_channels="first" starts every width at the base's first channels -- on a concatenated axis, the
    first channels of each group -- which is the slimmable sub-network (`pruning.first_channels`)."""
    from conftest import SMALL_INR, inputs_for, random_base

    from neumeta_hf.pruning import first_channels

    base = nm.fold_batch_norm(random_base(nm.NeuMetaUNetConfig(image_size=16)))
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(8, 32), smooth=False, anchor_channels="first",
                                            **SMALL_INR)  # fmt: skip
    with torch.no_grad():
        for parameter in hyper.inr.parameters():  # an INR that outputs zero: only the anchor remains
            parameter.zero_()
    x = inputs_for(base.config)
    sampled, nested = hyper.sample_model(12, num_samples=1), first_channels(base, 12)
    torch.testing.assert_close(sampled(x).logits, nested(x).logits, rtol=1e-5, atol=1e-5)
