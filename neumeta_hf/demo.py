"""A two-minute tour on the embedded default (scikit-learn digits, MLP 64-w-w-10).

Trains the full-width base network, builds a NeuMeta hypernetwork around it (channel permutation included),
samples networks of several widths -- seen and unseen -- and saves the hypernetwork and one sampled network.
The INR here is untrained (it starts as the base network resampled to each width); `training/train.py`
trains it.

    python -m neumeta_hf.demo [--output-dir outputs/demo]
"""

import argparse
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import NeuMetaMLPConfig, NeuMetaMLPForImageClassification, NeuMetaModel
from .data import digits_splits


@torch.no_grad()
def accuracy(model, dataset, batch_size: int = 512) -> float:
    correct = 0
    for batch in dataset.iter(batch_size):
        correct += int((model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(dataset)


def train_base(train, config: NeuMetaMLPConfig, epochs: int, seed: int = 0) -> NeuMetaMLPForImageClassification:
    torch.manual_seed(seed)
    model = NeuMetaMLPForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in tqdm(range(epochs), desc="base network", unit="epoch"):
        for batch in train.shuffle(seed=seed + _).iter(64):
            loss = model(batch["pixel_values"], labels=batch["labels"]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo", help="where the hypernetwork and samples go")
    parser.add_argument("--epochs", type=int, default=30, help="base network training epochs")
    parser.add_argument("--widths", default="16,20,24,32,40,48,56,64", help="comma-separated widths to sample")
    args = parser.parse_args(argv)
    start = time.time()
    output = Path(args.output_dir)

    train, test, normalisation = digits_splits()
    config = NeuMetaMLPConfig(num_classes=10, **normalisation)
    base = train_base(train, config, args.epochs)
    print(f"base network (width {config.width}): test accuracy {accuracy(base, test):.4f}")

    hyper = NeuMetaModel.from_base_model(base, width_range=(16, 64), train_widths=list(range(16, 65, 8)))
    smoothing = hyper.config.smoothing
    print(
        f"channel permutation: total variation {smoothing['total_variation_before']:.1f} -> "
        f"{smoothing['total_variation_after']:.1f}"
    )
    inr_parameters = sum(p.numel() for p in hyper.inr.parameters())
    print(f"INR parameters: {inr_parameters:,} (full network: {base.num_parameters():,})")

    print("\n| width | seen in training | parameters | test accuracy |\n|---|---|---|---|")
    for width in [int(w) for w in args.widths.split(",")]:
        network = hyper.sample_model(width)
        seen = width in hyper.config.train_widths
        print(f"| {width} | {'yes' if seen else 'no'} | {network.num_parameters():,} | {accuracy(network, test):.4f} |")

    hyper.save_pretrained(output / "hypernetwork")
    hyper.sample_model(32).save_pretrained(output / "mlp-width-32")
    print(f"\nSaved the hypernetwork to {output / 'hypernetwork'} and a width-32 network to {output / 'mlp-width-32'}")
    print(f"Done in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
