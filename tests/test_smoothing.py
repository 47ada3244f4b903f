import copy
import os
import subprocess
import sys

import fast_tsp
import pytest
import torch
from conftest import inputs_for, random_base

import neumeta_hf as nm
from neumeta_hf.families import ChannelGroup
from neumeta_hf.smoothing import group_cities, shortest_path, total_variation


def test_shortest_path_untangles_a_shuffled_smooth_sequence():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 60).unsqueeze(1) * torch.randn(1, 8, generator=generator)
    shuffled = smooth[torch.randperm(60, generator=generator)]
    order = shortest_path(shuffled)
    assert sorted(order.tolist()) == list(range(60))
    # The best open path through points on a line is the line itself.
    assert total_variation(shuffled, order) <= total_variation(smooth) * 1.01
    assert total_variation(shuffled, order) < total_variation(shuffled) / 5


def test_shortest_path_is_never_worse_than_the_given_order():
    cities = torch.arange(10.0).unsqueeze(1)  # already optimal
    assert torch.equal(shortest_path(cities), torch.arange(10))
    assert torch.equal(shortest_path(torch.zeros(5, 3)), torch.arange(5))


@pytest.mark.parametrize(
    "config",
    [nm.NeuMetaMLPConfig(), nm.NeuMetaLeNetConfig(), nm.NeuMetaResNetCifarConfig(morph="all")],
    ids=lambda c: c.model_type,
)
def test_smoothing_keeps_the_function_and_lowers_total_variation(config):
    model = nm.fold_batch_norm(random_base(config))
    reference = nm.fold_batch_norm(random_base(config))
    spec = nm.MorphSpec(model.config)
    before = {g.name: total_variation(group_cities(model.state_dict(), g)) for g in spec.groups}
    report = nm.smooth_channels(model, spec.groups)
    after = {g.name: total_variation(group_cities(model.state_dict(), g)) for g in spec.groups}
    assert report["total_variation_after"] < report["total_variation_before"]
    assert all(after[name] <= before[name] for name in before)
    for name in before:
        assert report["groups"][name] == pytest.approx([before[name], after[name]])
    x = inputs_for(config)
    torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=1e-4, atol=1e-4)


def test_a_group_missing_a_coupled_tensor_is_caught():
    model = random_base(nm.NeuMetaMLPConfig())
    broken = ChannelGroup.of("fc1", (("fc1.weight", 0), ("fc1.bias", 0)), True)  # forgot fc2's input columns
    with pytest.raises(RuntimeError, match="changed the network's outputs"):
        nm.smooth_channels(model, (broken,))


def test_nearest_neighbour_tour_with_dummy_city_is_a_valid_tsp_tour():
    """The solver contract relied on: integer symmetric matrix in, permutation of all nodes out."""
    tour = fast_tsp.greedy_nearest_neighbor([[0, 3, 4], [3, 0, 5], [4, 5, 0]])
    assert sorted(tour) == [0, 1, 2]


def test_permutation_is_a_function_of_the_weights_not_of_the_machine_load():
    """Round 2: the same base gave another permutation on a loaded CPU (the solver ran on a wall-clock budget),
    so `make demo` did not reproduce its own figures."""
    base = nm.fold_batch_norm(random_base(nm.NeuMetaMLPConfig(width=256)))
    groups = nm.MorphSpec(base.config).groups

    def permuted():
        model = copy.deepcopy(base)
        nm.smooth_channels(model, groups)
        return model.state_dict()

    idle = permuted()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        loaded = permuted()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert not torch.equal(idle["fc1.weight"], base.state_dict()["fc1.weight"])  # it did permute
    assert all(torch.equal(idle[name], loaded[name]) for name in idle)


def test_input_pixels_and_class_outputs_keep_their_order():
    model = nm.fold_batch_norm(random_base(nm.NeuMetaMLPConfig()))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nm.smooth_channels(model, nm.MorphSpec(model.config).groups)
    after = model.state_dict()
    assert not torch.equal(after["fc1.weight"], before["fc1.weight"])  # hidden units did move...
    # ...as whole rows: each is an original row with its input pixels in their original order.
    matches = (after["fc1.weight"][:, None, :] == before["fc1.weight"][None, :, :]).all(-1)
    assert matches.sum(1).tolist() == [1] * 64
    assert torch.equal(after["classifier.bias"], before["classifier.bias"])  # class k is still output k
    assert torch.equal(after["classifier.weight"].sort(1).values, before["classifier.weight"].sort(1).values)
