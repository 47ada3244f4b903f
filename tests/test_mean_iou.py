import math
from pathlib import Path

import evaluate
import numpy as np
import pytest
from PIL import Image

import neumeta_hf
from neumeta_hf.plots import class_palette, colour_mask, plot_segmentations

METRIC_DIR = Path(neumeta_hf.__file__).parent / "metrics" / "mean_iou"

# Two 2x3 maps; the last reference pixel is ignored (its prediction, 1, must not count).
REFERENCES = np.array([[[0, 0, 1], [1, 2, 2]], [[0, 1, 1], [2, 2, 255]]])
PREDICTIONS = np.array([[[0, 1, 1], [1, 2, 0]], [[0, 1, 2], [2, 2, 1]]])
# Counted (reference, prediction) pairs give the confusion matrix, rows references:
#   [[2, 1, 0],    class 0: IoU 2 / (3 + 3 - 2) = 0.5, recall 2/3
#    [0, 3, 1],    class 1: IoU 3 / (4 + 4 - 3) = 0.6, recall 3/4
#    [1, 0, 3]]    class 2: IoU 3 / (4 + 4 - 3) = 0.6, recall 3/4
# and 8 of 11 counted pixels right.


def compute(predictions, references, batch_size=1, **kwargs):
    metric = evaluate.load(str(METRIC_DIR))
    for start in range(0, len(predictions), batch_size):
        metric.add_batch(
            predictions=predictions[start : start + batch_size], references=references[start : start + batch_size]
        )
    return metric.compute(**kwargs)


def test_hand_computed_example():
    result = compute(PREDICTIONS, REFERENCES, num_labels=3, ignore_index=255)
    assert result["per_category_iou"] == pytest.approx([0.5, 0.6, 0.6])
    assert result["mean_iou"] == pytest.approx(1.7 / 3)
    assert result["pixel_accuracy"] == pytest.approx(8 / 11)
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 3 / 4 + 3 / 4) / 3)


def test_batching_and_compute_inputs_agree():
    whole = compute(PREDICTIONS, REFERENCES, batch_size=2, num_labels=3)
    direct = evaluate.load(str(METRIC_DIR)).compute(
        predictions=list(PREDICTIONS), references=list(REFERENCES), num_labels=3
    )
    assert whole == direct == compute(PREDICTIONS, REFERENCES, num_labels=3)


def test_ignored_pixels_count_for_nothing():
    predictions, references = PREDICTIONS.copy(), REFERENCES.copy()
    predictions[1, 1, 2] = 0  # a different prediction on the ignored pixel
    assert compute(predictions, references, num_labels=3) == compute(PREDICTIONS, REFERENCES, num_labels=3)
    references[references == 255] = -100  # any ignore index, not only the default
    assert compute(predictions, references, num_labels=3, ignore_index=-100)["pixel_accuracy"] == pytest.approx(8 / 11)


def test_class_absent_from_both_is_left_out_but_predicted_only_class_counts():
    absent = compute(PREDICTIONS, REFERENCES, num_labels=4)
    assert math.isnan(absent["per_category_iou"][3])
    assert absent["mean_iou"] == pytest.approx(1.7 / 3)
    predictions = PREDICTIONS.copy()
    predictions[0, 0, 0] = 3  # class 3 predicted, never true: IoU 0, in the IoU mean but not the recall mean
    result = compute(predictions, REFERENCES, num_labels=4)
    assert result["per_category_iou"] == pytest.approx([1 / 4, 0.6, 0.6, 0.0])
    assert result["mean_iou"] == pytest.approx((0.25 + 1.2) / 4)
    assert result["mean_accuracy"] == pytest.approx((1 / 3 + 3 / 4 + 3 / 4) / 3)


def test_perfect_prediction_scores_one():
    references = np.random.default_rng(0).integers(0, 5, (3, 8, 8))
    result = compute(references, references, num_labels=5)
    assert result["mean_iou"] == result["pixel_accuracy"] == result["mean_accuracy"] == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="outside"):
        compute(PREDICTIONS, REFERENCES, num_labels=2)
    with pytest.raises(ValueError, match="shape"):
        compute(PREDICTIONS[:, :, :2], REFERENCES, num_labels=3)


def test_masks_keep_one_colour_per_class():
    palette = class_palette(4)
    rgb = colour_mask(np.array([[0, 3], [255, 3]]), palette)
    assert rgb[0, 0].tolist() == [0.0, 0.0, 0.0] and rgb[1, 0].tolist() == [1.0, 1.0, 1.0]
    assert rgb[0, 1].tolist() == rgb[1, 1].tolist() == palette[3].tolist() != palette[1].tolist()


def test_plot_segmentations_has_a_column_per_network(tmp_path):
    rng = np.random.default_rng(0)
    images, truths = rng.normal(size=(2, 3, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    networks = {f"width {w}": rng.integers(0, 3, (2, 8, 8)) for w in (8, 16, 32)}
    id2label = {"0": "bg", "1": "a", "2": "b"}
    one = plot_segmentations(images, truths, {"width 8": networks["width 8"]}, id2label, tmp_path / "one.png")
    three = plot_segmentations(
        images[:, 0], truths, networks, id2label, tmp_path / "three.png", image_mean=[0.5], image_std=[0.2], title="t"
    )
    (narrow_width, narrow_height), (wide_width, wide_height) = Image.open(one).size, Image.open(three).size
    assert wide_width / narrow_width == pytest.approx(5 / 3, rel=0.01)  # input, truth and 1 or 3 networks
    assert narrow_height == pytest.approx(wide_height - 0.4 * 120, abs=2)  # the same rows, plus the title
