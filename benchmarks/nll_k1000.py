"""Test negative log-likelihood with K = 1000 importance samples per image (the final-table K) for the individual
VAEs and NeuMeta's sampled VAEs at the reference widths of a finished `quality.py --recipe fashion_mnist_vae` run.
The benchmark itself uses K = 100 at every width; K = 1000 costs about 3 minutes per network for 500 images on one
CPU core.

    python benchmarks/nll_k1000.py [--work-dir outputs/quality/fashion_mnist_vae] [--output results.json]
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the `training` package

import neumeta_hf as nm  # noqa: E402
from neumeta_hf.data import load_splits  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.tasks import get_task  # noqa: E402
from training.recipe import load_config  # noqa: E402

WIDTHS = (8, 16, 24, 32)
SAMPLES = 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "quality" / "fashion_mnist_vae"))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "fashion_mnist_vae_k1000.json"))
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    config = load_config(REPO / "training" / "configs" / "fashion_mnist_vae.yaml")
    _, _, test, _ = load_splits(config.data)
    task = get_task("unconditional-image-generation")
    hyper = nm.NeuMetaModel.from_pretrained(work / "neumeta" / "hypernetwork")
    individual = {32: work / "base" / "base"} | {w: work / f"individual_{w}" / "base" for w in WIDTHS if w != 32}
    results = {"num_importance_samples": SAMPLES, "test_images": len(test), "individual": {}, "neumeta": {}}
    for width in progress_bar(WIDTHS, desc="K=1000", unit="width"):
        individual_network = nm.NeuMetaVAEModel.from_pretrained(individual[width])
        for method, network in (("individual", individual_network), ("neumeta", hyper.sample_model(width))):
            results[method][width] = task.evaluate(network.eval(), test, num_importance_samples=SAMPLES)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
