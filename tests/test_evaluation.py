import json

import datasets
import torch

from neumeta_hf.evaluation import evaluate_score, sweep, write_sweep
from neumeta_hf.tasks import Task


def test_accuracy_counts_correct_predictions(mlp_hyper):
    network = mlp_hyper.sample_model(32)
    inputs = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = network(inputs).logits.argmax(-1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % 10  # three wrong
    dataset = datasets.Dataset.from_dict({"pixel_values": inputs.numpy(), "labels": labels.numpy()})
    assert evaluate_score(network, dataset.with_format("torch"), batch_size=4) == 0.7


def test_sweep_reports_every_width_and_writes_table_and_plot(mlp_hyper, tmp_path):
    inputs = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    dataset = datasets.Dataset.from_dict({"pixel_values": inputs.numpy(), "labels": [0, 1] * 4})
    result = sweep(mlp_hyper, dataset.with_format("torch"), widths=[16, 17, 64], base_score=0.5,
                   dataset_name="noise")
    assert [r["width"] for r in result["results"]] == [16, 17, 64]
    assert [r["seen_in_training"] for r in result["results"]] == [True, False, True]
    assert result["results"][0]["num_parameters"] == mlp_hyper.sample_model(16).num_parameters()
    assert result["base"] == {"width": 64, "accuracy": 0.5} and result["metric"] == "accuracy"
    paths = write_sweep(result, tmp_path)
    assert json.loads(paths[0].read_text()) == result
    table = paths[1].read_text()
    assert "| 17 | no |" in table and table.count("\n| ") == 4  # header + three widths
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundled_metric_modules_load_offline_and_compute():
    accuracy = Task.load_metric("accuracy")
    accuracy.add_batch(predictions=[1, 2, 3, 4], references=[1, 2, 0, 4])
    assert accuracy.compute() == {"accuracy": 0.75}
    top5 = Task.load_metric("top5_accuracy")
    top5.add_batch(predictions=[[9, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5]], references=[4, 3])
    assert top5.compute() == {"top5_accuracy": 0.5}


def test_unknown_metric_names_the_bundled_ones():
    import pytest

    with pytest.raises(ValueError, match="bundled metrics: accuracy, mean_iou, nll, perplexity, top5_accuracy"):
        Task.load_metric("miou")
