"""Image classification data as `datasets.Dataset`s with `pixel_values` (normalised float [C, H, W]) and `labels`.

Sources, one interface (`load_splits`):
  * `digits`: scikit-learn's 8x8 digits (ships with scikit-learn), split deterministically;
  * a directory of IDX files (MNIST / Fashion-MNIST format; Debian's `dataset-fashion-mnist` installs them in
    /usr/share/datasets/fashion-mnist), converted once and cached as Arrow;
  * a Hub dataset by name (`uoft-cs/cifar10`, `ylecun/mnist`, ...), or any dataset saved with `save_to_disk`,
    with its image and label columns named in `KNOWN_DATASETS` or by the caller.
Normalisation statistics come from the training split unless given, and travel into every saved network's
image processor. Images are stored as uint8 and converted on access, so the Arrow cache stays small.
"""

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Hub datasets we know the column names of: name -> (image column, label column).
KNOWN_DATASETS = {
    "uoft-cs/cifar10": ("img", "label"),
    "uoft-cs/cifar100": ("img", "fine_label"),
    "ylecun/mnist": ("image", "label"),
    "zalando-datasets/fashion_mnist": ("image", "label"),
}
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared.

    Args:
        name: "digits", "fashion_mnist" (the Debian IDX files), a directory of IDX files or of a dataset saved
            with `save_to_disk`, or a Hub dataset id.
        image_column, label_column: column names for Hub / saved datasets (default: `KNOWN_DATASETS`).
        train_split, test_split: split names for Hub / saved datasets.
        image_mean, image_std: per-channel normalisation; computed on the training split when not given.
        augment: random crop (4-pixel padding) and horizontal flip on training images; "auto" turns it on for
            32x32 colour images only (flipping digits or clothes icons does not help).
        cache_dir: where converted IDX data is cached as Arrow (default: beside nothing, under ~/.cache).
        max_train_samples, max_test_samples: keep only the first N examples (quick runs and tests).
        validation_size: examples held out of the training split as a validation split (stratified by label,
            always the same ones): what every decision during training (evaluation, checkpoint choice,
            hyper-parameters) is measured on, so that the test split is read only for final figures. 0: none.
        num_channels: repeat single-channel images to 3 channels (3), for a stock vision model served by
            `pipeline("image-classification")`, which hands every image to the image processor as RGB. None:
            the images' own channels.
    """

    name: str = "digits"
    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    augment: bool | str = "auto"
    cache_dir: str | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    validation_size: int = 0
    num_channels: int | None = None


@dataclass
class DataInfo:
    """What a network needs to know about the data: input shape, labels and normalisation."""

    num_channels: int
    image_size: int
    id2label: dict[int, str]
    image_mean: list[float]
    image_std: list[float]
    name: str = ""
    augment: bool = False

    def family_kwargs(self) -> dict:
        """Fields of a family config that follow from the data."""
        return {
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "id2label": dict(self.id2label),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }


def load_splits(config: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None, datasets.Dataset, DataInfo]:
    """(train, validation, test, info): every split yields `pixel_values` float32 [C, H, W] normalised, and
    `labels`; validation is None when `config.validation_size` is 0."""
    train, test, labels = _raw_splits(config)
    if config.max_train_samples:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if config.max_test_samples:
        test = test.select(range(min(config.max_test_samples, len(test))))
    validation = None
    if config.validation_size:
        train, validation = _hold_out(train, config.validation_size)
    pixels = np.asarray(train.with_format("numpy")["image"][: min(len(train), 10_000)], dtype=np.float32) / 255
    num_channels, image_size = pixels.shape[1], pixels.shape[-1]
    if config.num_channels not in (None, num_channels):
        if (num_channels, config.num_channels) != (1, 3):
            raise ValueError(
                f"data.num_channels={config.num_channels}: {config.name!r} has {num_channels}-channel images, and "
                "only single-channel images can be repeated (to 3 channels); leave data.num_channels unset"
            )
        pixels, num_channels = pixels.repeat(3, axis=1), 3
    mean = config.image_mean or pixels.mean(axis=(0, 2, 3)).tolist()
    std = config.image_std or pixels.std(axis=(0, 2, 3)).tolist()
    augment = (num_channels == 3 and image_size == 32) if config.augment == "auto" else bool(config.augment)
    info = DataInfo(num_channels, image_size, dict(enumerate(labels)), mean, std, config.name, augment)
    train.set_transform(_Transform(mean, std, augment))
    for split in (validation, test):
        if split is not None:
            split.set_transform(_Transform(mean, std, augment=False))
    return train, validation, test, info


def _hold_out(train: datasets.Dataset, size: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, held out): `size` examples, stratified by label, chosen with a fixed seed (the same split for every
    run and method, whatever the recipe's seed)."""
    from sklearn.model_selection import train_test_split

    if not 0 < size < len(train):
        raise ValueError(f"data.validation_size must be between 1 and {len(train) - 1} (the training split's size "
                         f"minus one), got {size}")
    labels = np.asarray(train.with_format("numpy")["label"])
    kept, held = train_test_split(np.arange(len(train)), test_size=size, stratify=labels, random_state=0)
    return train.select(np.sort(kept)), train.select(np.sort(held))


class _Transform:
    """uint8 [C, H, W] images -> normalised float tensors with one channel per `mean` entry (a single channel is
    repeated to fill them), plus pure-torch augmentation for training."""

    def __init__(self, mean, std, augment):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment

    def __call__(self, batch):
        images = torch.as_tensor(np.asarray(batch["image"], dtype=np.uint8)).float() / 255
        images = images.expand(-1, len(self.mean), -1, -1)
        if self.augment:
            images = random_crop_and_flip(images)
        return {"pixel_values": (images - self.mean) / self.std, "labels": torch.as_tensor(batch["label"])}


def random_crop_and_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch [N, C, H, W]: random crop after zero padding, random h-flip."""
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    rows = (top.view(n, 1) + torch.arange(height)).view(n, 1, height, 1)
    cols = (left.view(n, 1) + torch.arange(width)).view(n, 1, 1, width)
    cropped = padded.gather(2, rows.expand(-1, padded.shape[1], -1, padded.shape[3]))
    cropped = cropped.gather(3, cols.expand(-1, padded.shape[1], height, -1))
    flip = torch.rand(n) < 0.5
    cropped[flip] = cropped[flip].flip(-1)
    return cropped


def _raw_splits(config: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """(train, test, label names) with columns `image` (uint8 [C, H, W]) and `label` (int)."""
    if config.name == "digits":
        return _digits()
    directory = Path(FASHION_MNIST_DIR if config.name == "fashion_mnist" else config.name)
    if directory.is_dir() and _idx_files(directory):
        return _idx_dataset(directory, config.cache_dir)
    if directory.is_dir():
        source = datasets.load_from_disk(str(directory))
    elif config.name == "fashion_mnist":
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: install it with `apt-get install "
            "dataset-fashion-mnist`, or use the Hub dataset `zalando-datasets/fashion_mnist`"
        )
    else:
        source = datasets.load_dataset(config.name)
    return _from_image_dataset(source, config)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 levels -> 0..255
    order = np.random.default_rng(0).permutation(len(images))
    n_test = round(len(images) * 0.2)

    def split(index):
        return datasets.Dataset.from_dict({"image": images[index], "label": digits.target[index]})

    return split(order[n_test:]), split(order[:n_test]), [str(d) for d in range(10)]


def _from_image_dataset(source: datasets.DatasetDict, config: DataConfig):
    image_column, label_column = KNOWN_DATASETS.get(config.name, ("image", "label"))
    image_column = config.image_column or image_column
    label_column = config.label_column or label_column
    for split in (config.train_split, config.test_split):
        if split not in source:
            raise ValueError(f"Dataset {config.name!r} has no split {split!r}; it has {list(source)}")
        missing = [c for c in (image_column, label_column) if c not in source[split].column_names]
        if missing:
            raise ValueError(
                f"Dataset {config.name!r} split {split!r} has no column(s) {missing}; its columns are "
                f"{source[split].column_names}. Set data.image_column / data.label_column."
            )
    label_feature = source[config.train_split].features[label_column]
    names = getattr(label_feature, "names", None)

    def to_arrays(batch):
        images = [np.asarray(image) for image in batch[image_column]]
        images = [image[None] if image.ndim == 2 else image.transpose(2, 0, 1) for image in images]
        return {"image": np.stack(images).astype(np.uint8), "label": batch[label_column]}

    def convert(split):
        dataset = source[split]
        return dataset.map(to_arrays, batched=True, remove_columns=dataset.column_names, desc=f"decoding {split}")

    train, test = convert(config.train_split), convert(config.test_split)
    if names is None:
        names = [str(i) for i in range(int(max(train["label"])) + 1)]
    return train, test, list(names)


def _idx_files(directory: Path) -> dict[str, Path]:
    found = {}
    for key, stem in (
        ("train_images", "train-images-idx3-ubyte"),
        ("train_labels", "train-labels-idx1-ubyte"),
        ("test_images", "t10k-images-idx3-ubyte"),
        ("test_labels", "t10k-labels-idx1-ubyte"),
    ):
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.exists():
                found[key] = candidate
    return found if len(found) == 4 else {}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_dataset(directory: Path, cache_dir: str | None):
    files = _idx_files(directory)
    source = directory.resolve()
    key = hashlib.sha1(str(source).encode()).hexdigest()[:10]  # one cache per source directory
    cache = Path(cache_dir or Path.home() / ".cache" / "neumeta_hf") / f"idx-{source.name}-{key}"
    labels = FASHION_MNIST_LABELS if "fashion" in directory.name.lower() else [str(d) for d in range(10)]
    if not cache.exists():
        splits = {}
        for split in ("train", "test"):
            images = read_idx(files[f"{split}_images"])[:, None]
            splits[split] = datasets.Dataset.from_dict({"image": images, "label": read_idx(files[f"{split}_labels"])})
        datasets.DatasetDict(splits).save_to_disk(str(cache))
    cached = datasets.load_from_disk(str(cache))
    return cached["train"], cached["test"], labels
