"""Training throughput of a NeuMeta hypernetwork against plain training of the full-width network.

Prints one JSON object: for each setting, seconds per step of (a) a hypernetwork training step (generate the
width-w tensors, run the batch through the generated network, task + L2 loss, one backward, AdamW step) and
(b) a plain training step of the full-width family network on the same batch, their ratio (measured in the
same run, interleaved), the share of the hypernetwork step spent generating weights (forward only), and peak
RSS. Random inputs of the dataset's shape: the data pipeline is not what is measured.

    python benchmarks/train_speed.py [--steps 100] [--output result.json]

Settings: `fashion_mnist_lenet` (LeNet, morph "all", the recipe's INR, widths 8-32) and `cifar10_resnet20`
(ResNet-20, morph "last", default 256 x 4 INR, widths 32-64, batch 64).
"""

import argparse
import json
import random
import resource
import statistics
import time

import torch

import neumeta_hf as nm

SETTINGS = {
    "fashion_mnist_lenet": {
        "config": nm.NeuMetaLeNetConfig(),
        "width_range": (8, 32),
        "morph": "all",
        "inr": {"hidden_size": 64, "num_layers": 2, "num_frequencies": 4, "size_frequencies": 2},
        "batch_size": 128,
    },
    "cifar10_resnet20": {
        "config": nm.NeuMetaResNetCifarConfig(morph="last"),
        "width_range": (32, 64),
        "morph": "last",
        "inr": {},
        "batch_size": 64,
    },
}


def measure(name: str, steps: int) -> dict:
    setting = SETTINGS[name]
    config = setting["config"]
    torch.manual_seed(0)
    base = nm.FAMILIES[config.model_type](config)
    hyper = nm.NeuMetaModel.from_base_model(
        base.eval(), width_range=setting["width_range"], morph=setting["morph"], smooth=False, **setting["inr"]
    ).train()
    plain = base.train()  # the full-width network as one would train it (BatchNorm included)
    hyper_optimizer = torch.optim.AdamW(hyper.inr.parameters(), lr=1e-4)
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    batch = torch.randn(setting["batch_size"], config.num_channels, config.image_size, config.image_size)
    labels = torch.randint(0, config.num_classes, (setting["batch_size"],))
    widths = list(hyper.config.train_widths)
    rng = random.Random(0)

    def hyper_step():
        output = hyper(batch, width=rng.choice(widths), labels=labels)
        loss = output.loss + 1e-4 * sum(t.norm() for t in output.weights.values())
        hyper_optimizer.zero_grad()
        loss.backward()
        hyper_optimizer.step()

    def plain_step():
        loss = plain(batch, labels=labels).loss
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()

    def generate_only():
        with torch.no_grad():
            hyper._generate(rng.choice(widths), 1, hyper.config.coordinate_noise)

    cases = {"hypernetwork_step": hyper_step, "plain_step": plain_step, "generate_forward": generate_only}
    for fn in cases.values():  # warm-up: every width once for the hypernetwork (coordinate caches)
        for _ in range(3):
            fn()
    for width in widths:
        hyper._generate(width, 1, 0.0)
    times = {key: [] for key in cases}
    for _ in range(steps):  # interleaved, so that load changes hit all cases alike
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    return {
        "batch_size": setting["batch_size"],
        "morph": setting["morph"],
        "inr_parameters": sum(p.numel() for p in hyper.inr.parameters()),
        "network_parameters": plain.num_parameters(),
        "hypernetwork_step_s": median["hypernetwork_step"],
        "plain_step_s": median["plain_step"],
        "hypernetwork_steps_per_s": 1 / median["hypernetwork_step"],
        "plain_steps_per_s": 1 / median["plain_step"],
        "step_time_ratio": median["hypernetwork_step"] / median["plain_step"],
        "generate_share_of_step": median["generate_forward"] / median["hypernetwork_step"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case (after a warm-up)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--output", help="also write the JSON object to this path")
    args = parser.parse_args()
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps}
    for name in args.settings:
        result[name] = measure(name, args.steps)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
