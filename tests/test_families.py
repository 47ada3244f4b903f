import pytest
import torch
from conftest import inputs_for, permute, random_base, tensors
from transformers import AutoConfig

import neumeta_hf as nm
from neumeta_hf.targets import task_for
from neumeta_hf.tasks import auto_class

# Per registered family: the full width with every layer morphing, and a narrower width with only the last
# layer morphing (at 16x16 inputs, which every family takes, to stay fast); plus layouts a family only has with
# other settings. A family registered later is covered without a line here.
REGISTRY_CONFIGS = [
    config
    for family in nm.FAMILIES.values()
    for config in (
        family.config_class(morph="all", image_size=16),
        family.config_class(morph="last", image_size=16).at_width(family.config_class.full_width * 3 // 4),
    )
]
EXTRA_CONFIGS = [
    nm.NeuMetaLeNetConfig(width=12),
    nm.NeuMetaResNetCifarConfig(morph="all", norm="none", depth=32),
]


@pytest.mark.parametrize("family", list(nm.FAMILIES))
def test_auto_classes_build_a_working_full_width_network(family):
    """Every family loads through its task's Auto class and returns class logits on axis 1: one per image for
    classification, one per pixel for segmentation."""
    config = AutoConfig.for_model(family, num_classes=7)
    model = auto_class(nm.FAMILIES[family].task).from_config(config)
    assert isinstance(model, nm.FAMILIES[family])
    assert config.width == type(config).full_width
    labels = torch.tensor([0, 1, 2, 6])
    if model.task == "image-segmentation":
        labels = labels.view(4, 1, 1).expand(4, config.image_size, config.image_size)
    output = model(inputs_for(config).sigmoid(), labels=labels)  # in [0, 1], as a VAE's Bernoulli pixels need
    if model.task == "unconditional-image-generation":  # a reconstruction, not class scores
        assert output.logits.shape == (4, config.num_channels, config.image_size, config.image_size)
    else:
        assert output.logits.shape == (4, 7, *labels.shape[1:])
    assert torch.isfinite(output.loss)
    output.loss.backward()


def test_full_widths_and_layer_sizes():
    assert (nm.NeuMetaMLPConfig().width, nm.NeuMetaLeNetConfig().width, nm.NeuMetaResNetCifarConfig().width) == (
        64,
        32,
        64,
    )
    mlp = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(width=20))
    assert mlp.fc1.weight.shape == (20, 64) and mlp.fc2.weight.shape == (20, 20)
    lenet = nm.NeuMetaLeNetForImageClassification(nm.NeuMetaLeNetConfig(width=8))
    assert [lenet.conv1.out_channels, lenet.conv2.out_channels, lenet.conv3.out_channels] == [8, 16, 32]
    last = nm.NeuMetaResNetCifarForImageClassification(nm.NeuMetaResNetCifarConfig(morph="last", width=40))
    assert last.stages[2][2].conv1.conv.out_channels == 40 and last.stages[2][1].conv1.conv.out_channels == 64
    whole = nm.NeuMetaResNetCifarForImageClassification(nm.NeuMetaResNetCifarConfig(morph="all", width=32))
    assert [whole.stages[s][0].conv2.conv.out_channels for s in range(3)] == [8, 16, 32]
    assert len(nm.NeuMetaResNetCifarForImageClassification(nm.NeuMetaResNetCifarConfig(depth=56)).stages[0]) == 9


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: nm.NeuMetaMLPConfig(width=0), "width must be a positive integer"),
        (lambda: nm.NeuMetaMLPConfig(width=2.5), "width must be a positive integer"),
        (lambda: nm.NeuMetaMLPConfig(morph="some"), "morph must be one of"),
        (lambda: nm.NeuMetaResNetCifarConfig(depth=21), "depth must be 6n\\+2"),
        (lambda: nm.NeuMetaResNetCifarConfig(norm="group"), "norm must be"),
        (lambda: nm.NeuMetaLeNetConfig(image_mean=[0.1, 0.2]), "one value per input channel"),
    ],
)
def test_bad_family_configs_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_labels_follow_id2label():
    config = nm.NeuMetaMLPConfig(id2label={0: "cat", 1: "dog"})
    assert config.num_classes == 2 and config.label2id == {"cat": 0, "dog": 1}
    assert nm.NeuMetaMLPForImageClassification(config).classifier.out_features == 2


@pytest.mark.parametrize(
    "config", REGISTRY_CONFIGS + EXTRA_CONFIGS, ids=lambda c: f"{c.model_type}-{c.morph}-{c.width}-{c.image_size}"
)
def test_random_permutation_of_every_channel_group_preserves_function(config):
    """The channel groups list every coupled tensor: permuting each group at random keeps the task's output
    (logits; a VAE's posterior and reconstruction)."""
    model = random_base(config)
    function = task_for(config).function_output
    x = inputs_for(config).double()
    expected = function(model.double()(x))
    generator = torch.Generator().manual_seed(1)
    groups = model.channel_groups()
    permute(model, groups, lambda size: torch.randperm(size, generator=generator))
    torch.testing.assert_close(function(model(x)), expected, rtol=1e-9, atol=1e-9)
    first = groups[-1].members[0].tensor
    assert not torch.equal(tensors(model)[first], random_base(config).double().state_dict()[first])


def test_fold_batch_norm_keeps_the_function_and_removes_norms():
    config = nm.NeuMetaResNetCifarConfig(morph="all", width=32)
    model = random_base(config)
    folded = nm.fold_batch_norm(model)
    assert folded.config.norm == "none"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = inputs_for(config)
    torch.testing.assert_close(folded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
