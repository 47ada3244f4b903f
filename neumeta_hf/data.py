"""Datasets as `datasets.Dataset`s with `pixel_values` (float, normalised) and `labels` columns."""

import datasets
import numpy as np


def digits_splits(test_fraction: float = 0.2, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset, dict]:
    """scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn), split deterministically.

    Returns (train, test, normalisation) where normalisation is `{"image_mean": [m], "image_std": [s]}` for
    pixels scaled to [0, 1] (the digits' 0..16 levels / 16), computed on the training split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # [n, 1, 8, 8] in [0, 1]
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    test_index, train_index = order[:n_test], order[n_test:]
    mean, std = float(images[train_index].mean()), float(images[train_index].std())
    normalised = (images - mean) / std

    def split(index):
        data = {"pixel_values": normalised[index], "labels": digits.target[index].astype(np.int64)}
        return datasets.Dataset.from_dict(data).with_format("torch")

    return split(train_index), split(test_index), {"image_mean": [mean], "image_std": [std]}
