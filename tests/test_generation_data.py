"""Binarised data for image generation: binary pixels, fresh draws for training, fixed draws for evaluation."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from neumeta_hf.data import GENERATION, DataConfig, load_splits


def binarized_digits(**overrides):
    return load_splits(DataConfig("digits", binarize=True, **overrides))


def grey_digits(**overrides):
    """The same splits un-binarised, as grey levels in [0, 1]."""
    return load_splits(DataConfig("digits", image_mean=[0.0], image_std=[1.0], augment=False, **overrides))


def test_binarised_splits_hold_binary_pixels_and_class_labels():
    train, validation, test, info = binarized_digits(validation_size=100)
    assert DataConfig("digits", binarize=True).task == info.task == GENERATION
    assert (info.num_channels, info.image_size, info.augment) == (1, 8, False)
    assert (info.image_mean, info.image_std) == ([0.0], [1.0])  # saved processors only rescale to [0, 1]
    grey_train, grey_validation, grey_test, _ = grey_digits(validation_size=100)
    for split, grey in ((train, grey_train), (validation, grey_validation), (test, grey_test)):
        batch, grey_batch = split[:], grey[:]
        pixels = batch["pixel_values"]
        assert pixels.shape == (len(grey), 1, 8, 8) and pixels.dtype == torch.float32
        assert set(pixels.unique().tolist()) == {0.0, 1.0}
        torch.testing.assert_close(batch["labels"], grey_batch["labels"])
        # Black pixels never turn on, white ones always do: the draws are of these very images.
        assert not pixels[grey_batch["pixel_values"] == 0].any() and pixels[grey_batch["pixel_values"] == 1].all()


def test_evaluation_pixels_are_drawn_once_the_same_every_load():
    _, validation, test, _ = binarized_digits(validation_size=100)
    torch.manual_seed(123)  # no effect on them: they come from fixed numpy seeds, not torch's RNG
    _, validation_again, test_again, _ = binarized_digits(validation_size=100)
    torch.testing.assert_close(test[:]["pixel_values"], test_again[:]["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(validation[:]["pixel_values"], validation_again[:]["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(test[:5]["pixel_values"], test[:5]["pixel_values"], rtol=0, atol=0)  # every access
    # Per-example seeds: keeping fewer examples (or batching differently) does not change any example's pixels.
    first = binarized_digits(max_test_samples=50)[2]
    torch.testing.assert_close(first[:]["pixel_values"], test[:50]["pixel_values"], rtol=0, atol=0)


def test_training_pixels_are_drawn_anew_at_every_access_around_the_grey_level():
    train = binarized_digits()[0]
    grey = grey_digits()[0][0]["pixel_values"]
    torch.manual_seed(0)
    first, second = train[0]["pixel_values"], train[0]["pixel_values"]
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(train[0]["pixel_values"], first)  # torch's global RNG, which the training scripts seed
    draws = train[[0] * 4000]["pixel_values"]
    torch.testing.assert_close(draws.mean(0), grey, rtol=0, atol=0.04)  # 5 standard errors at most


def test_binarize_needs_single_channel_classification_images(tmp_path):
    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": rng.integers(0, 3, n).tolist()})

    datasets.DatasetDict({"train": split(6), "test": split(2)}).save_to_disk(str(tmp_path / "rgb"))
    with pytest.raises(ValueError, match="needs single-channel images.*gives 3-channel images"):
        load_splits(DataConfig(str(tmp_path / "rgb"), binarize=True))
    with pytest.raises(ValueError, match="needs single-channel images.*gives 3-channel images"):
        binarized_digits(num_channels=3)
    with pytest.raises(ValueError, match="leave data.image_mean, data.image_std and data.augment unset"):
        binarized_digits(augment=True)
    with pytest.raises(ValueError, match="'digits_scenes' is segmentation data"):
        load_splits(DataConfig("digits_scenes", binarize=True))
