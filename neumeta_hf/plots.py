"""Figures of what sampled networks produce; matplotlib is imported inside the functions, so importing this is cheap."""

import textwrap
from pathlib import Path

import numpy as np

CELL_INCHES = 1.7  # side of one image panel; the figure grows by one per column and per row
GRID_CELL_INCHES = 0.9  # side of one panel of an image grid: rows of many small samples
IGNORED_COLOUR = (1.0, 1.0, 1.0)  # ids outside id2label, such as the ignore index 255


def class_palette(num_labels: int) -> np.ndarray:
    """One fixed RGB colour per class id: 0 (the background, in the datasets used here) black, the rest from a
    qualitative colormap, so a class keeps its colour across columns and figures."""
    from matplotlib import colormaps

    others = num_labels - 1
    if others <= 10:
        colours = colormaps["tab10"].colors[:others]
    elif others <= 20:
        colours = colormaps["tab20"].colors[:others]
    else:  # too many classes for a qualitative map: spread them over a perceptual one
        colours = colormaps["turbo"](np.linspace(0, 1, others))[:, :3]
    return np.vstack([np.zeros((1, 3)), np.asarray(colours, dtype=float).reshape(-1, 3)])


def colour_mask(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] RGB; ids without a colour (ignored pixels) drawn in IGNORED_COLOUR."""
    rgb = np.empty(mask.shape + (3,))
    rgb[:] = IGNORED_COLOUR
    known = (mask >= 0) & (mask < len(palette))
    rgb[known] = palette[mask[known]]
    return rgb


def displayable_image(image: np.ndarray, image_mean=None, image_std=None) -> np.ndarray:
    """[C, H, W] or [H, W] model input -> [H, W] or [H, W, 3] in [0, 1]: un-normalised with mean and std when given,
    else stretched to its own range (raw inputs come in any range)."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
    if image_mean is not None and image_std is not None:
        image = image * np.asarray(image_std, dtype=float) + np.asarray(image_mean, dtype=float)
        image = np.clip(image, 0.0, 1.0)
    else:
        low, high = image.min(), image.max()
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def plot_segmentations(
    images, truths, predictions: dict, id2label: dict, path, image_mean=None, image_std=None, title: str | None = None
) -> Path:
    """A grid comparing segmentations: a row per example; columns input, ground truth, then one per network.

    Args:
        images: [N, C, H, W] (C = 1 or 3) or [N, H, W] model inputs, as in `pixel_values`.
        truths: [N, H, W] reference class ids.
        predictions: column title -> [N', H, W] predicted class ids (N' >= N; the first N drawn), in column order.
        id2label: class id -> name (keys may be strings, as in a saved config).
        path: where the PNG goes.
        image_mean, image_std: per-channel normalisation of `images`, undone for display.
        title: figure title.
    Returns the path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    id2label = {int(key): name for key, name in id2label.items()}
    palette = class_palette(max(id2label) + 1)
    images, truths = np.asarray(images), np.asarray(truths)
    maps = {"ground truth": truths, **{label: np.asarray(masks) for label, masks in predictions.items()}}
    rows, columns = len(images), 1 + len(maps)

    shown = np.unique(np.concatenate([masks[:rows].ravel() for masks in maps.values()])).tolist()
    handles = [Patch(facecolor=palette[i], edgecolor="gray", label=id2label[i]) for i in shown if i in id2label]
    if any(i not in id2label for i in shown):
        handles.append(Patch(facecolor=IGNORED_COLOUR, edgecolor="gray", label="ignored"))
    width = CELL_INCHES * columns
    entry_inches = 0.6 + 0.08 * max(len(handle.get_label()) for handle in handles)  # swatch plus small-font name
    legend_columns = max(1, min(len(handles), int(width // entry_inches)))
    legend_rows = -(-len(handles) // legend_columns)
    height = CELL_INCHES * rows + 0.4 + 0.25 * legend_rows + (0.4 if title else 0.0)  # column titles, legend, title
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, layout="constrained")
    for row in range(rows):
        picture = displayable_image(images[row], image_mean, image_std)
        axes[row, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
        for column, masks in enumerate(maps.values(), start=1):
            axes[row, column].imshow(colour_mask(masks[row].astype(np.int64), palette), interpolation="nearest")
    for column, label in enumerate(["input", *maps]):
        axes[0, column].set_title(textwrap.fill(label, 20), fontsize="small")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.legend(handles=handles, loc="outside lower center", ncol=legend_columns, fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_text_rows(rows: dict[str, str], path, width: int = 88) -> Path:
    """Texts one under another, each with its label on the left, wrapped at `width` characters in a fixed-width
    font: the same prompt continued by networks of several widths, to read side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Whitespace runs read as one space; other control characters (a poor model's byte tokens) as a dot.
    def readable(text):
        return "".join(c if c.isprintable() else "·" for c in " ".join(text.split()))

    wrapped = {label: textwrap.fill(readable(text), width) or "(nothing)" for label, text in rows.items()}
    lines = [text.count("\n") + 1 for text in wrapped.values()]
    height = sum(lines) + 1.2 * len(lines)  # in text lines: each entry's lines and a gap
    figure = plt.figure(figsize=(width * 0.075 + 1.6, 0.2 * height + 0.2))
    top = 1.0
    for (label, text), count in zip(wrapped.items(), lines):
        share = (count + 1.2) / height
        figure.text(0.01, top - 0.1 * share, textwrap.fill(label, 16), va="top", fontsize="small", weight="bold")
        figure.text(0.18, top - 0.1 * share, text, va="top", family="monospace", fontsize="small")
        top -= share
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_image_grid(rows: dict, path, title: str | None = None) -> Path:
    """Images side by side, one figure row per entry, its label on the left: samples decoded from the same latents
    by networks of several widths (a row per width), or test images and their reconstructions (a row for the
    images, then one per width), so that columns line up example by example.

    Args:
        rows: row label -> images [N, C, H, W] (C = 1, drawn grey, or 3) in [0, 1], tensors or arrays, in row order.
        path: where the PNG goes.
        title: figure title.
    Returns the path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = {label: np.asarray(_numpy(images), dtype=float) for label, images in rows.items()}
    columns = max(len(images) for images in grids.values())
    width = GRID_CELL_INCHES * columns + 1.2  # the labels' margin
    height = GRID_CELL_INCHES * len(grids) + (0.4 if title else 0.0)
    figure, axes = plt.subplots(len(grids), columns, figsize=(width, height), squeeze=False, layout="constrained")
    for axes_row, (label, images) in zip(axes, grids.items()):
        for axis, image in zip(axes_row, images):
            picture = displayable_image(image, 0.0, 1.0)  # only clipped: the images are in [0, 1] already
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        for axis in axes_row[len(images) :]:  # a row with fewer images than the longest
            axis.set_axis_off()
        axes_row[0].set_ylabel(textwrap.fill(label, 14), rotation=0, ha="right", va="center", fontsize="small")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _numpy(images):
    """A tensor (on any device, in any graph, of any float type) or array-like as something numpy reads."""
    return images.detach().float().cpu().numpy() if hasattr(images, "detach") else images
