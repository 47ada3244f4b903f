"""Mix'n'match: a stock model's hypernetwork sampled with one feed-forward width per layer, against the uniform
width of the same parameter count (the mean of the layers' widths: a layer's parameters grow linearly with it).

    python benchmarks/mix_and_match.py outputs/shakespeare_llama/hypernetwork --recipe training/configs/shakespeare_llama.yaml

The mixed configurations are built from the trained range [low, high]: alternating low and high, high layers
first then low ones, low first then high, and a linear ramp from low to high (or `--mix 256,1024,...`, one
width per layer). Each is measured on the recipe's test split, with the uniform width beside it; a table goes to
stdout and, with `--output`, JSON.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the `training` package

from neumeta_hf import NeuMetaModel  # noqa: E402
from neumeta_hf.data import load_splits  # noqa: E402
from neumeta_hf.evaluation import evaluate_model  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.targets import task_for  # noqa: E402
from neumeta_hf.text_data import TextDataConfig, load_text_splits  # noqa: E402
from training.recipe import load_config  # noqa: E402


def default_mixes(low: int, high: int, layers: int) -> dict[str, list[int]]:
    """Four ways to spend a budget unevenly over `layers` layers, each width in [low, high]."""
    half = layers // 2
    ramp = [round(low + (high - low) * i / max(1, layers - 1)) for i in range(layers)]
    return {
        "alternating": [low if i % 2 == 0 else high for i in range(layers)],
        "wide first": [high] * half + [low] * (layers - half),
        "wide last": [low] * half + [high] * (layers - half),
        "ramp up": ramp,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hypernetwork", help="a trained hypernetwork directory (of a stock transformers model)")
    parser.add_argument("--recipe", required=True, help="the recipe it was trained with: its data's test split is read")
    parser.add_argument("--mix", nargs="*", default=None, metavar="W1,W2,...", help="per-layer widths to measure "
                        "instead of the default configurations")  # fmt: skip
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    hyper = NeuMetaModel.from_pretrained(args.hypernetwork).eval()
    config = load_config(args.recipe)
    if isinstance(config.data, TextDataConfig):  # cut by the tokenizer the networks carry
        test = load_text_splits(config.data, tokenizer=hyper.preprocessor)[0]["test"]
    else:
        test = load_splits(config.data)[2]
    low, high = hyper.config.width_range
    layers = len(hyper.spec.scaling_groups)  # one per layer of a stock model
    if args.mix:
        mixes = {spec: [int(w) for w in spec.split(",")] for spec in args.mix}
    else:
        mixes = default_mixes(low, high, layers)
    metric = task_for(hyper.base_network.config).main_metric
    rows = []
    for name, widths in progress_bar(mixes.items(), desc="mix'n'match", total=len(mixes)):
        uniform = round(sum(widths) / len(widths))
        mixed_network, uniform_network = hyper.sample_model(widths=widths), hyper.sample_model(uniform)
        mixed_score = evaluate_model(mixed_network, test)[metric]
        uniform_score = evaluate_model(uniform_network, test)[metric]
        rows.append({"configuration": name, "widths": widths, "uniform_width": uniform,
                     f"mixed_{metric}": mixed_score, f"uniform_{metric}": uniform_score})  # fmt: skip
    print(f"| configuration | widths per layer | {metric} | uniform width | its {metric} |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['configuration']} | {', '.join(map(str, row['widths']))} | {row[f'mixed_{metric}']:.2f} | "
              f"{row['uniform_width']} | {row[f'uniform_{metric}']:.2f} |")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps({"hypernetwork": args.hypernetwork, "metric": metric, "rows": rows},
                                                indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
