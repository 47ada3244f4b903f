import pytest
import torch
from conftest import inputs_for, random_base

import neumeta_hf as nm
from neumeta_hf.objective import Objective
from training.train_base import load_trained_network

FULL, SMALLEST = 64, 16


def step(hyper, objective, teacher, width, seed=0):
    config = hyper.spec.family_config
    pixel_values = inputs_for(config, n=8, seed=seed)
    labels = torch.randint(0, config.num_labels, (8,), generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed)
    return objective.step_loss(hyper, hyper, teacher, pixel_values, labels, width, SMALLEST, generator)


def test_full_width_is_distilled_from_the_teacher_only_without_reconstruction(mlp_hyper):
    base = random_base(nm.NeuMetaMLPConfig())  # the network mlp_hyper was built around
    other = random_base(nm.NeuMetaMLPConfig(), seed=1)
    reconstructed = Objective(distillation_weight=1.0, reconstruction_weight=1.0)
    free = Objective(distillation_weight=1.0, reconstruction_weight=0.0)

    loss, terms = step(mlp_hyper, reconstructed, other, FULL)
    assert "distillation_loss" not in terms and "reconstruction_loss" in terms
    assert torch.equal(loss, step(mlp_hyper, reconstructed, base, FULL)[0])  # the teacher plays no part

    _, from_base = step(mlp_hyper, free, base, FULL)
    _, from_other = step(mlp_hyper, free, other, FULL)
    assert "reconstruction_loss" not in from_base
    # The untrained hypernetwork generates the base itself at full width: nothing to distil from the base,
    # much from another network.
    assert from_base["distillation_loss"] < 1e-5 and from_other["distillation_loss"] > 1e-2


def test_sandwich_trains_the_full_width_by_a_forward_pass_when_it_is_not_reconstructed(mlp_hyper):
    base = random_base(nm.NeuMetaMLPConfig())
    _, reconstructed = step(mlp_hyper, Objective(distillation_weight=1.0, sandwich=True), base, 32)
    assert {"smallest_width_loss", "reconstruction_loss"} <= set(reconstructed)
    assert "full_width_loss" not in reconstructed
    free = Objective(distillation_weight=1.0, reconstruction_weight=0.0, sandwich=True)
    _, distilled = step(mlp_hyper, free, base, 32)
    assert {"smallest_width_loss", "full_width_loss", "distillation_loss"} <= set(distilled)
    assert "reconstruction_loss" not in distilled
    # The full-width term is the task loss of the base's own function (plus its L2), so it is finite and positive.
    assert 0 < distilled["full_width_loss"] < 100


def test_teacher_is_loaded_at_any_width_and_refused_when_damaged(tmp_path):
    teacher = random_base(nm.NeuMetaMLPConfig(width=48), seed=2)  # any width will do
    teacher.save_pretrained(tmp_path / "teacher")
    loaded = load_trained_network("training.teacher", str(tmp_path / "teacher"), "neumeta-mlp")
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in teacher.state_dict().items())

    with torch.no_grad():
        teacher.fc1.weight[0, 0] = float("nan")
    teacher.save_pretrained(tmp_path / "damaged")
    with pytest.raises(ValueError, match=r"training.teacher .*damaged.* holds non-finite values in fc1.weight"):
        load_trained_network("training.teacher", str(tmp_path / "damaged"), "neumeta-mlp")
