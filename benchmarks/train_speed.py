"""Training throughput of a NeuMeta hypernetwork against plain training of the full-width network.

Prints one JSON object: for each setting, seconds per step of (a) a hypernetwork training step (generate the
width-w tensors, run the batch through the generated network, the library's `Objective` (task loss + L2, plus
reconstruction at full width), one backward, AdamW step) and
(b) a plain training step of the full-width family network on the same batch, their ratio (measured in the
same run, interleaved), the share of the hypernetwork step spent generating weights (forward only), and peak
RSS (and peak GPU memory per setting on CUDA). Random inputs of the dataset's shape: the data pipeline is not
what is measured.

    python benchmarks/train_speed.py [--steps 100] [--device cuda] [--mixed-precision bf16] [--output result.json]

Settings: `fashion_mnist_lenet` (LeNet, morph "all", the recipe's INR, widths 8-32) and `cifar10_resnet20`
(ResNet-20, morph "last", default 256 x 4 INR, widths 32-64, batch 64).
"""

import argparse
import functools
import json
import random
import resource
import statistics
import time

import torch

import neumeta_hf as nm
from neumeta_hf.objective import Objective

SETTINGS = {
    "fashion_mnist_lenet": {
        "config": nm.NeuMetaLeNetConfig(),
        "width_range": (8, 32),
        "morph": "all",
        "inr": {"hidden_size": 64, "num_layers": 2, "num_frequencies": 6, "size_frequencies": 2},
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


def measure(name: str, steps: int, device: torch.device, mixed_precision: str) -> dict:
    setting = SETTINGS[name]
    config = setting["config"]
    torch.manual_seed(0)
    base = nm.FAMILIES[config.model_type](config)
    hyper = nm.NeuMetaModel.from_base_model(
        base.eval(), width_range=setting["width_range"], morph=setting["morph"], smooth=False, **setting["inr"]
    ).to(device).train()
    plain = base.to(device).train()  # the full-width network as one would train it (BatchNorm included)
    hyper_optimizer = torch.optim.AdamW(hyper.inr.parameters(), lr=1e-4)
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    batch = torch.randn(setting["batch_size"], config.num_channels, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, config.num_classes, (setting["batch_size"],), device=device)
    widths = list(hyper.config.train_widths)
    rng = random.Random(0)
    # Autocast as Accelerate applies it for `--mixed_precision bf16`; "no" runs in float32.
    autocast = functools.partial(
        torch.autocast, device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"
    )

    objective = Objective()  # task loss + L2 of the generated tensors (+ reconstruction at full width)

    def hyper_step():
        with autocast():
            loss, _ = objective.width_loss(hyper, hyper, batch, labels, None, {}, rng.choice(widths), None)
        hyper_optimizer.zero_grad()
        loss.backward()
        hyper_optimizer.step()

    def plain_step():
        with autocast():
            loss = plain(batch, labels=labels).loss
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()

    def generate_only():
        with torch.no_grad(), autocast():
            hyper.generate(rng.choice(widths), hyper.config.coordinate_noise)

    def synchronize():  # CUDA runs asynchronously: a step is over when its kernels are
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    cases = {"hypernetwork_step": hyper_step, "plain_step": plain_step, "generate_forward": generate_only}
    for fn in cases.values():  # warm-up: every width once for the hypernetwork (coordinate caches)
        for _ in range(3):
            fn()
    for width in widths:
        hyper.generate(width)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {key: [] for key in cases}
    for _ in range(steps):  # interleaved, so that load changes hit all cases alike
        for key, fn in cases.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    memory = {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20} if device.type == "cuda" else {}
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
        **memory,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case (after a warm-up)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--mixed-precision", choices=["no", "bf16"], default="no", help="autocast both steps to bf16 (default: no)"
    )
    parser.add_argument("--output", help="also write the JSON object to this path")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "mixed_precision": args.mixed_precision,
        "steps": args.steps,
    }
    for name in args.settings:
        result[name] = measure(name, args.steps, device, args.mixed_precision)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
