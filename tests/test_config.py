import pytest
from transformers import AutoConfig

import neumeta_hf as nm


def test_defaults_follow_the_paper():
    config = nm.NeuMetaConfig(family="neumeta-lenet")
    assert (config.hidden_size, config.num_layers, config.num_frequencies) == (256, 4, 16)
    assert config.residual_scale == 0.1 and config.coordinate_noise == 1.0 and config.ema_decay == 0.995
    assert config.full_width == 32 and config.width_range == [8, 32]
    assert config.train_widths == list(range(8, 33))


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="neumeta-mlp, neumeta-lenet, neumeta-resnet-cifar"):
        nm.NeuMetaConfig(family="vgg")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width_range": [40, 20]}, "width_range must be"),
        ({"width_range": [0, 20]}, "width_range must be"),
        ({"width_range": [16, 32], "train_widths": [8, 16]}, "train_widths \\[8\\] lie outside"),
        ({"width_range": [16, 32], "train_widths": [16, 20], "predicted_widths": [18, 20]},
         "predicted_widths \\[20\\] must lie between .* and not among train_widths"),
        ({"morph": "first"}, "morph must be one of"),
        ({"hidden_size": 100}, "multiple of 8"),
        ({"num_layers": 0}, "num_layers must be at least 1"),
        ({"coordinate_noise": -1.0}, "coordinate_noise must be non-negative"),
        ({"coordinate_noise": float("nan")}, "coordinate_noise must be a finite number, got nan"),
        ({"fan_in_power": float("inf")}, "fan_in_power must be a finite number, got inf"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"family_config": {"model_type": "neumeta-lenet"}}, "family_config is for 'neumeta-lenet'"),
    ],
)
def test_invalid_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nm.NeuMetaConfig(family="neumeta-mlp", **kwargs)


def test_morph_mode_is_written_into_the_family_config(tmp_path):
    config = nm.NeuMetaConfig(family="neumeta-resnet-cifar", morph="last", width_range=[32, 64])
    assert config.family_config["morph"] == "last"
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, nm.NeuMetaConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_empty_train_widths_is_refused_not_read_as_every_width():
    """Round 2: `train_widths: []` became the whole range without a word."""
    with pytest.raises(ValueError, match="train_widths is empty: name the widths to train, or leave it unset"):
        nm.NeuMetaConfig(family="neumeta-mlp", family_config={}, width_range=[16, 64], train_widths=[])
