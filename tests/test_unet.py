"""The U-Net segmentation family: per-pixel outputs, morph modes, channel groups over concatenated axes, and
loading through transformers' Auto class and image-segmentation pipeline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_groups_cover, inputs_for, permute, random_base, tensors
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, pipeline
from transformers.modeling_outputs import SemanticSegmenterOutput

import neumeta_hf as nm

SMALL = {"image_size": 16, "num_classes": 5}
CONFIGS = [
    nm.NeuMetaUNetConfig(width=4, **SMALL),
    nm.NeuMetaUNetConfig(width=6, norm="none", **SMALL),
    nm.NeuMetaUNetConfig(morph="last", width=8, **SMALL),
]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread runs them fastest, and two run them many times slower on a busy
    machine (threads waiting on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_id(config):
    return f"{config.morph}-{config.width}-{config.norm}"


def out_channels(model):
    return [
        module.out_channels
        for module in (
            model.enc1.conv2.conv,
            model.enc2.conv2.conv,
            model.bottleneck.conv1.conv,
            model.bottleneck.conv2.conv,
            model.up2.conv,
            model.dec2.conv2.conv,
            model.up1.conv,
            model.dec1.conv2.conv,
        )
    ]


def calibrated_base(config, x):
    """A float64 random network whose BatchNorm statistics are those of `x` (non-trivial, and keeping every
    path's signal at unit scale so that a misplaced channel anywhere shows in the logits), in eval mode."""
    model = random_base(config).double()
    with torch.no_grad():
        for norm in [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]:
            norm.momentum = None  # a cumulative average: after one batch, exactly its statistics
            norm.reset_running_stats()
            norm.weight.uniform_(0.5, 1.5)
        model.train()(x)
    return model.eval()


def test_per_pixel_logits_and_loss_ignoring_unlabelled_pixels():
    config = nm.NeuMetaUNetConfig(width=4, **SMALL)
    model = nm.NeuMetaUNetForSemanticSegmentation(config)
    labels = torch.randint(0, 5, (3, 16, 16), generator=torch.Generator().manual_seed(0))
    labels[:, :6] = 255
    output = model(inputs_for(config, n=3), labels=labels)
    assert output.logits.shape == (3, 5, 16, 16)
    assert torch.isfinite(output.loss)
    labelled = labels != 255
    expected = F.cross_entropy(output.logits.permute(0, 2, 3, 1)[labelled], labels[labelled])
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    assert model(inputs_for(config, n=3)).loss is None


def test_defaults_and_meta_device_construction():
    config = nm.NeuMetaUNetConfig()
    assert (config.width, config.image_size, config.num_channels, config.num_classes) == (32, 64, 1, 11)
    with torch.device("meta"):
        model = nm.NeuMetaUNetForSemanticSegmentation(config)
    assert model.classifier.weight.is_meta and out_channels(model) == [32, 64, 128, 128, 64, 64, 32, 32]
    assert len(model.channel_groups()) == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 30}, "multiple of 4"), ({"image_size": 0}, "multiple of 4"), ({"norm": "group"}, "norm must")],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nm.NeuMetaUNetConfig(**kwargs)


def test_morph_modes_size_exactly_the_right_layers():
    full = nm.NeuMetaUNetForSemanticSegmentation(nm.NeuMetaUNetConfig(**SMALL))
    every = nm.NeuMetaUNetForSemanticSegmentation(nm.NeuMetaUNetConfig(width=16, **SMALL))
    last = nm.NeuMetaUNetForSemanticSegmentation(nm.NeuMetaUNetConfig(width=16, morph="last", **SMALL))
    assert out_channels(full) == [32, 64, 128, 128, 64, 64, 32, 32]
    assert out_channels(every) == [16, 32, 64, 64, 32, 32, 16, 16]
    assert out_channels(last) == [32, 64, 64, 64, 64, 64, 32, 32]
    # Decoder convs read [upsampled; skip]: both parts follow the levels they come from.
    assert every.dec2.conv1.conv.in_channels == 64 and every.dec1.conv1.conv.in_channels == 32
    full_shapes = {name: tensor.shape for name, tensor in tensors(full).items()}
    changed = {name for name, tensor in tensors(last).items() if tensor.shape != full_shapes[name]}
    assert changed == {name for name in full_shapes if name.startswith("bottleneck.") and "num_batches" not in name} | {
        "up2.conv.weight"
    }
    # With "all", every tensor shrinks except the classes' bias and the count of batches BatchNorm has seen.
    unchanged = {name for name, tensor in tensors(every).items() if tensor.shape == full_shapes[name]}
    assert unchanged == {"classifier.bias"} | {name for name in full_shapes if name.endswith("num_batches_tracked")}


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_hidden_channel_is_in_exactly_one_group(config):
    model = nm.NeuMetaUNetForSemanticSegmentation(config)
    for group in model.channel_groups():
        assert group.scales == (config.morph == "all" or group.name.startswith("bottleneck")), group.name
    # Hidden axes: every output axis but the classes', every conv input axis but the image's.
    state = tensors(model)
    hidden = {(name, 0) for name, tensor in state.items() if tensor.dim() and not name.startswith("classifier.")}
    hidden |= {(name, 1) for name, tensor in state.items() if tensor.dim() == 4 and name != "enc1.conv1.conv.weight"}
    assert_groups_cover(model, hidden)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_random_permutation_of_every_group_preserves_the_logits(config):
    model = random_base(config).double()  # eval mode, BatchNorm statistics random
    x = inputs_for(config).double()
    with torch.no_grad():
        expected = model(x).logits
        generator = torch.Generator().manual_seed(1)
        permute(model, model.channel_groups(), lambda size: torch.randperm(size, generator=generator))
        assert not torch.equal(model.dec1.conv1.conv.weight, random_base(config).double().dec1.conv1.conv.weight)
        torch.testing.assert_close(model(x).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_leaving_out_any_member_changes_the_logits(config):
    """Every member is needed: shifting a group's channels everywhere but in one member changes the function."""
    x = inputs_for(config, n=1).double()
    model = calibrated_base(config, x)
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x).logits
        for group in model.channel_groups():
            for member in group.members:
                model.load_state_dict(original)
                permute(model, [group], lambda size: torch.roll(torch.arange(size), 1), skip=member)
                change = (model(x).logits - expected).abs().max().item()
                assert change > 1e-3, (group.name, member)


def test_folding_batch_norm_keeps_the_function_and_the_groups():
    config = nm.NeuMetaUNetConfig(width=4, **SMALL)
    model = random_base(config)
    folded = nm.fold_batch_norm(model)
    assert folded.config.norm == "none" and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = inputs_for(config)
    with torch.no_grad():
        torch.testing.assert_close(folded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    assert [group.name for group in folded.channel_groups()] == [group.name for group in model.channel_groups()]


def test_post_processing_gives_class_maps_at_the_requested_sizes():
    processor = nm.NeuMetaImageProcessor.for_config(nm.NeuMetaUNetConfig(**SMALL))
    logits = torch.randn(2, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    outputs = SemanticSegmenterOutput(logits=logits)
    maps = processor.post_process_semantic_segmentation(outputs)
    assert len(maps) == 2 and torch.equal(maps[1], logits[1].argmax(0)) and maps[1].dtype == torch.long
    resized = processor.post_process_semantic_segmentation(outputs, target_sizes=[(16, 16), (7, 30)])
    assert torch.equal(resized[0], maps[0]) and resized[1].shape == (7, 30) and resized[1].dtype == torch.long


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory):
    """A saved random network whose classes compete on its test image (the class scores' means over the image
    taken out of the classifier's bias), so that the image's class map holds several classes."""
    labels = {0: "background", 1: "disc", 2: "square", 3: "ring", 4: "cross"}
    config = nm.NeuMetaUNetConfig(width=4, image_size=16, id2label=labels)
    model = random_base(config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28), dtype=np.uint8), "L")
    with torch.no_grad():
        pixel_values = nm.NeuMetaImageProcessor.for_config(config)(image, return_tensors="pt")["pixel_values"]
        model.classifier.bias -= model(pixel_values).logits.mean(dim=(0, 2, 3))
    directory = tmp_path_factory.mktemp("unet")
    model.save_pretrained(directory)
    return model, directory, image


def test_auto_class_round_trip_with_remote_code(saved_unet):
    model, directory, _ = saved_unet
    assert (directory / "modeling_unet.py").is_file() and (directory / "configuration_unet.py").is_file()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(directory, trust_remote_code=True)
    assert type(loaded).__name__ == "NeuMetaUNetForSemanticSegmentation" and loaded.config.id2label[1] == "disc"
    x = inputs_for(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("subtask", [None, "semantic"])
def test_pipeline_returns_one_mask_per_predicted_class(saved_unet, subtask):
    model, directory, image = saved_unet
    segment = pipeline("image-segmentation", model=str(directory), trust_remote_code=True)
    segments = segment(image) if subtask is None else segment(image, subtask=subtask)
    processor = nm.NeuMetaImageProcessor.for_config(model.config)
    with torch.no_grad():
        outputs = model(processor(image, return_tensors="pt")["pixel_values"])
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(20, 28)])[0]
    assert len(expected.unique()) >= 2
    assert [entry["label"] for entry in segments] == [model.config.id2label[int(c)] for c in expected.unique()]
    total = np.zeros((20, 28), dtype=int)
    for entry in segments:
        mask = np.asarray(entry["mask"])
        assert entry["mask"].mode == "L" and entry["mask"].size == (28, 20) and set(np.unique(mask)) <= {0, 255}
        label_id = model.config.label2id[entry["label"]]
        assert np.array_equal(mask == 255, expected.numpy() == label_id)
        total += mask == 255
    assert (total == 1).all()
