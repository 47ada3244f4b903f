import importlib.util
import json

import pytest

from conftest import REPO


def load_quality_benchmark():
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quality_benchmark_runs_every_method_and_writes_the_report(tmp_path):
    """The whole benchmark on digits with a few real steps per run: every method and ablation measured on the
    same test split, the targets checked, the JSON, table and plot written."""
    quality = load_quality_benchmark()
    short = ["base.epochs=3", "training.max_steps=40", "training.checkpoint_every=40", "training.eval_every=40"]
    quality.main(["--recipe", "digits_mlp", "--output-dir", str(tmp_path), "--set", *short])

    report = json.loads((tmp_path / "digits_mlp.json").read_text())
    methods = report["methods"]
    widths = [str(w) for w in range(32, 65)]
    assert list(methods["individual"]) == ["32", "40", "48", "56", "64"]
    assert list(methods["neumeta"]) == widths and list(methods["pruned_l1"]) == widths
    assert set(report["ablations"]) == {
        "no_permutation", "no_coordinate_noise", "shared_trunk", "num_samples_1", "num_samples_100"
    }
    assert all(list(values) == widths for values in report["ablations"].values())
    # Three epochs on digits already learn; the full-width individual network is the base itself, and
    # pruning to full width removes nothing.
    assert methods["base"] > 0.8
    assert methods["individual"]["64"] == methods["base"] == methods["pruned_l1"]["64"]
    assert min(methods["neumeta"].values()) > 0.2  # 10 classes: above chance at every width
    assert report["seen_widths"] == list(range(32, 65, 2))
    assert report["targets"][-1]["met"] == (report["inr_parameters"] <= report["base_parameters"])
    assert {"base", "individual_40", "neumeta", "shared_trunk", "total"} <= set(report["wall_seconds"])
    table = (tmp_path / "digits_mlp.md").read_text()
    assert "| 33* |" in table and "| 34 |" in table and "ablation: shared_trunk" in table
    assert (tmp_path / "digits_mlp.png").stat().st_size > 10_000
