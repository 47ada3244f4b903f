"""Image grids: samples or reconstructions of networks of several widths, a row each."""

import numpy as np
import torch
from PIL import Image

from neumeta_hf.plots import plot_image_grid


def test_image_grid_has_a_row_per_entry(tmp_path):
    rng = np.random.default_rng(0)
    grey = {"test images": rng.random((5, 1, 8, 8)), "width 16": torch.rand(5, 1, 8, 8, requires_grad=True)}
    one = plot_image_grid({"test images": grey["test images"]}, tmp_path / "one.png")
    two = plot_image_grid(grey, tmp_path / "two.png")
    colour = plot_image_grid({f"width {w}": rng.random((4, 3, 8, 8)) for w in (16, 32, 64)}, tmp_path / "rgb.png")
    assert one == tmp_path / "one.png" and colour.exists()
    (width_one, height_one), (width_two, height_two) = Image.open(one).size, Image.open(two).size
    assert height_two > height_one and width_two == width_one
    assert Image.open(colour).size[1] > height_two
    titled = plot_image_grid(grey, tmp_path / "titled.png", title="reconstructions")
    assert Image.open(titled).size[1] > height_two


def test_rows_of_different_lengths_leave_cells_blank(tmp_path):
    path = plot_image_grid({"a": np.zeros((3, 1, 4, 4)), "b": np.ones((1, 1, 4, 4))}, tmp_path / "ragged.png")
    single = plot_image_grid({"b": np.ones((1, 1, 4, 4))}, tmp_path / "b.png")
    assert Image.open(path).size[0] > Image.open(single).size[0]
