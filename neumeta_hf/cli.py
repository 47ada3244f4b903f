"""The `neumeta-hf` command line: sample networks of any width, sweep widths, describe a hypernetwork.

    neumeta-hf sample outputs/digits_mlp/hypernetwork --width 40 --output nets/
    neumeta-hf sample outputs/digits_mlp/hypernetwork --width 32:64:8 --num-samples 10
    neumeta-hf sweep outputs/digits_mlp/hypernetwork --dataset digits --widths 32,48,64
    neumeta-hf info outputs/digits_mlp/hypernetwork
    neumeta-hf push outputs/digits_mlp/hypernetwork me/neumeta-digits

SOURCE is a local directory or a Hub id of a trained hypernetwork (`NeuMetaModel.save_pretrained`).
Bad arguments exit with status 2 and a message naming the problem; a failed upload exits with status 1 and a
one-line message.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from . import NeuMetaModel
from .configuration_neumeta import MAX_WIDTH
from .progress import progress_bar
from .publishing import training_status
from .tasks import PICTURES
from .version import __version__


MAX_WIDTHS = 1000  # widths in one command: a larger range is a typo far more often than a plan


def parse_widths(text: str) -> list[int]:
    """`16,24,32` or `16:64:8` (start:stop:step, stop included) or `40` -> a list of widths."""
    try:
        if ":" in text:
            start, stop, *rest = (int(part) for part in text.split(":"))
            if len(rest) > 1:
                raise ValueError
            step = rest[0] if rest else 1
            widths = range(start, stop + 1, step) if step > 0 else []  # lazy: its size is checked before use
        else:
            widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid widths {text!r}: use one width (40), a list (16,24,32) or a range (16:64:8)"
        ) from None
    if not widths:
        raise argparse.ArgumentTypeError(
            f"invalid widths {text!r}: the range is empty; start:stop:step needs start <= stop and a step of at least 1"
        )
    if len(widths) > MAX_WIDTHS:
        raise argparse.ArgumentTypeError(
            f"invalid widths {text!r}: that is {len(widths):,} widths, more than {MAX_WIDTHS:,} in one command; "
            "use a step (16:64:8) or split the range"
        )
    if min(widths) < 1:
        raise argparse.ArgumentTypeError(f"invalid widths {text!r}: widths must be positive integers")
    if max(widths) > MAX_WIDTH:
        raise argparse.ArgumentTypeError(
            f"invalid widths {text!r}: {max(widths):,} is beyond any network that could exist (at most {MAX_WIDTH:,})"
        )
    return list(widths)


def positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}")
    return value


def output_directory(text: str) -> Path:
    """A directory to write into, created when missing: an existing file is an error."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return Path(text)


def hub_repo_id(text: str) -> str:
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise argparse.ArgumentTypeError(f"invalid Hub repository id {text!r}: use owner/name") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neumeta-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"neumeta-hf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser(
        "sample",
        help="materialise networks of given widths",
        description="Sample standalone networks from a hypernetwork and save each with save_pretrained "
        "(weights, config, card, and the image processor or tokenizer): one directory per width, loadable with "
        "its task's Auto class (a stock model, e.g. AutoModelForCausalLM, with transformers alone; a neumeta-hf "
        "family, e.g. AutoModelForImageClassification, with trust_remote_code=True: its code travels with it).",
    )
    sample.add_argument("source", metavar="SOURCE", help="hypernetwork directory or Hub id")
    chosen = sample.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--width", type=parse_widths, help="40, 16,24,32 or 16:64:8")
    chosen.add_argument(
        "--max-parameters", type=positive_integer, metavar="N",
        help="the widest network of the trained range with at most N parameters (prints the width chosen)",
    )
    chosen.add_argument(
        "--max-macs", type=positive_integer, metavar="N",
        help="the widest network of the trained range with at most N multiply-accumulates per example (one image, "
        "or one token of a text model; prints the width chosen)",
    )
    sample.add_argument(
        "--num-samples", type=positive_integer, default=None, help="generations averaged, at least 1 (default: config)"
    )
    sample.add_argument("--seed", type=int, default=0, help="seed of the coordinate noise (default: 0)")
    sample.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), default=None,
        help="what the networks are stored in (default: the base network's dtype)",
    )
    sample.add_argument(
        "--output", type=output_directory, default=Path("."),
        help="parent directory of the width-W directories (default: .)",
    )
    sample.add_argument(
        "--overwrite", action="store_true", help="write over width-W directories that already exist (default: refuse)"
    )
    sample.add_argument(
        "--push-to-hub", metavar="REPO", type=hub_repo_id, help="also upload each network (with its card) to REPO, "
        "or REPO-width-W when several widths are sampled",
    )

    sweep = commands.add_parser(
        "sweep",
        help="the task's metric (accuracy, mean IoU, NLL, perplexity) of sampled networks across widths",
        description="Evaluate sampled networks over widths on a dataset's test split with their task's metrics; "
        "writes sweep.json, sweep.md and sweep.png, and the task's pictures (segmentation: predictions.png; "
        "generation: samples.png, reconstructions.png).",
    )
    sweep.add_argument("source", metavar="SOURCE", help="hypernetwork directory or Hub id")
    sweep.add_argument("--dataset", required=True, help="digits, fashion_mnist, digits_scenes, an IDX or saved-dataset "
                       "dir, or a Hub id; for a language model: shakespeare, a directory of .txt files, a saved or Hub "
                       "text dataset (test split, tokenised by the hypernetwork's tokenizer)")
    sweep.add_argument("--block-size", type=positive_integer, default=256,
                       help="language models: tokens per evaluated block, at most the model's context (default: 256)")
    sweep.add_argument("--widths", type=parse_widths, default=None, help="default: every width in the trained range")
    sweep.add_argument(
        "--num-samples", type=positive_integer, default=None, help="generations averaged, at least 1 (default: config)"
    )
    sweep.add_argument(
        "--output", type=output_directory, default=Path("."), help="directory for sweep.json/.md/.png and pictures (default: .)"
    )

    info = commands.add_parser("info", help="describe a hypernetwork", description="Family, widths, morph mode, "
                               "INR size against the generated network's, smoothing and a stored sweep.")
    info.add_argument("source", metavar="SOURCE", help="hypernetwork directory or Hub id")

    push = commands.add_parser(
        "push",
        help="upload a trained hypernetwork with its card",
        description="Upload a hypernetwork directory to the Hub in one commit: config, weights, a model card and, "
        "when SOURCE or its parent holds them (as training/train.py writes), sweep.json, sweep.png and the task's "
        "pictures.",
    )
    push.add_argument("source", metavar="SOURCE", help="hypernetwork directory")
    push.add_argument("repo", metavar="REPO", type=hub_repo_id, help="Hub repository id, e.g. me/neumeta-digits")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--untrained", action="store_true", help="upload a hypernetwork that was never trained "
                      "(as from_base_model builds it; refused without this flag)")  # fmt: skip
    return parser


def load_hypernetwork(parser: argparse.ArgumentParser, source: str) -> NeuMetaModel:
    try:
        return NeuMetaModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load a hypernetwork from {source!r}: {error}")


def run_sample(args, parser):
    budget = {"max_parameters": args.max_parameters, "max_macs": args.max_macs}
    budget = {name: value for name, value in budget.items() if value is not None}
    if budget:  # the width comes from the hypernetwork: load it first
        hyper = load_hypernetwork(parser, args.source)
        try:
            args.width = [hyper.width_for_budget(**budget)]
        except ValueError as error:
            parser.error(str(error))
        (name, value), = budget.items()
        print(f"--{name.replace('_', '-')} {value:,}: width {args.width[0]} is the widest that fits")
    directories = {width: args.output / f"width-{width}" for width in args.width}
    existing = [str(directory) for directory in directories.values() if directory.exists()]
    if existing and not args.overwrite:
        parser.error(f"output directories already exist: {', '.join(existing)}; pass --overwrite to write over them")
    if not budget:
        hyper = load_hypernetwork(parser, args.source)
    for width, directory in progress_bar(
        directories.items(), desc="sampling", unit="network", disable=len(directories) == 1
    ):
        try:
            network = hyper.sample_model(width, num_samples=args.num_samples, seed=args.seed, dtype=args.dtype)
        except MemoryError as error:
            parser.error(str(error))
        network.save_pretrained(directory)
        print(f"width {width}: {network.num_parameters():,} parameters -> {directory}")
        if args.push_to_hub:
            repo = args.push_to_hub if len(args.width) == 1 else f"{args.push_to_hub}-width-{width}"
            network.push_to_hub(repo)
            print(f"width {width}: pushed to {repo}")


def run_sweep(args, parser):
    from .evaluation import evaluate_score, sweep, write_pictures, write_sweep
    from .targets import task_for

    hyper = load_hypernetwork(parser, args.source)
    family = hyper.base_network.config
    task = task_for(family, type(hyper.base_network))
    if not task.metrics:
        parser.error(f"sweep measures image models and causal language models; {type(hyper.base_network).__name__} "
                     "is neither")  # fmt: skip
    test_split = text_test_split if task.name == "text-generation" else image_test_split
    test = test_split(args, parser, hyper)
    try:
        # The network the hypernetwork was built from, as the plot's and the table's reference line.
        base_score = evaluate_score(hyper.base_network, test)
        result = sweep(hyper, test, args.widths, num_samples=args.num_samples, dataset_name=args.dataset,
                       base_score=base_score)  # fmt: skip
    except (ValueError, MemoryError) as error:  # labels of another task, or a width too large
        parser.error(f"cannot sweep {args.dataset!r}: {error}")
    paths = write_sweep(result, args.output)
    paths += [Path(args.output) / name for name in write_pictures(hyper, test, args.output)]
    for row in result["results"]:
        print(f"width {row['width']:>4}: {task.main_metric} {row[task.main_metric]:.4f}")
    print("wrote " + ", ".join(str(p) for p in paths))


def text_test_split(args, parser, hyper: NeuMetaModel):
    """The test blocks of a text dataset, tokenised by the tokenizer the hypernetwork carries from its base."""
    from .text_data import TextDataConfig, context_length, load_text_splits

    if hyper.preprocessor is None or not hasattr(hyper.preprocessor, "eos_token_id"):
        parser.error("this hypernetwork carries no tokenizer (its base had none); build it with from_base_model "
                     "on a directory or Hub id that holds the base's tokenizer")  # fmt: skip
    context = context_length(hyper.base_network.config) or args.block_size
    try:
        data = TextDataConfig(name=args.dataset, block_size=min(args.block_size, context))
        splits, _ = load_text_splits(data, tokenizer=hyper.preprocessor)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load text dataset {args.dataset!r}: {error}")
    return splits["test"]


def image_test_split(args, parser, hyper: NeuMetaModel):
    from .data import DataConfig, load_splits

    family = hyper.base_network.config
    # A stock vision model trained elsewhere may not record its normalisation: the data's own is used then.
    data = DataConfig(
        name=args.dataset, image_mean=getattr(family, "image_mean", None), image_std=getattr(family, "image_std", None)
    )
    try:
        _, _, test, info = load_splits(data)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load dataset {args.dataset!r}: {error}")
    if (info.num_channels, info.image_size) != (family.num_channels, family.image_size):
        parser.error(
            f"dataset {args.dataset!r} has {info.num_channels}x{info.image_size}x{info.image_size} images, the "
            f"hypernetwork's networks take {family.num_channels}x{family.image_size}x{family.image_size}"
        )
    return test


def find_sweep(source: str, hyper: NeuMetaModel) -> Path | None:
    """sweep.json in a hypernetwork directory or beside it (where training/train.py writes it), if it was
    measured on `hyper` (its `fingerprint`); one measured on other weights is left out, with a warning."""
    for candidate in (Path(source) / "sweep.json", Path(source).parent / "sweep.json"):
        if candidate.is_file():
            measured = json.loads(candidate.read_text()).get("hypernetwork")
            if measured == hyper.fingerprint():
                return candidate
            warnings.warn(
                f"{candidate} was measured on {'another hypernetwork' if measured else 'an unnamed hypernetwork'} "
                f"(fingerprint {measured}, this one is {hyper.fingerprint()}): its figures are left out; measure "
                f"this one with `neumeta-hf sweep {source} --output DIR`",
                stacklevel=2,
            )
    return None


def run_push(args, parser):
    if not Path(args.source, "config.json").is_file():
        parser.error(f"{args.source!r} is not a saved hypernetwork directory (no config.json)")
    hyper = load_hypernetwork(parser, args.source)
    if hyper.config.trained_steps == 0 and not args.untrained:
        parser.error(f"{args.source} is an untrained hypernetwork (as from_base_model builds it): train it first, or "
                     "pass --untrained to upload it as it is")  # fmt: skip
    sweep_path = find_sweep(args.source, hyper)
    sweep = json.loads(sweep_path.read_text()) if sweep_path else None
    plot = sweep_path.with_name("sweep.png") if sweep_path else None
    # Pictures sit beside the hypernetwork's card (training) or beside sweep.json (the sweep command).
    places = [Path(args.source)] + ([sweep_path.parent] if sweep_path else [])
    pictures = []
    for name in PICTURES:
        found = [place / name for place in places if (place / name).is_file()]
        pictures += [str(found[0])] if found else []
    commit = hyper.push_to_hub(
        args.repo,
        sweep=sweep,
        sweep_plot=str(plot) if plot and plot.is_file() else None,
        pictures=pictures,
        private=args.private,
        allow_untrained=args.untrained,
    )
    print(f"pushed {args.source} to {args.repo}: {commit}")


def describe(hyper: NeuMetaModel, source: str) -> dict:
    config = hyper.config
    full = hyper.spec.skeleton(config.full_width)
    facts = {
        "family": config.family,
        "full_width": config.full_width,
        "width_range": config.width_range,
        "training": training_status(config),
        "train_widths": _widths_in_words(config.train_widths),
        "morph": config.morph,
        "inr": {k: getattr(config, k) for k in ("hidden_size", "num_layers", "num_frequencies", "shared_trunk")},
        **hyper.parameter_counts(),
        "generated_parameters_at_full_width": sum(
            p.numel() for name, p in full.named_parameters() if name in set(hyper.spec.names)
        ),
        "smoothing": {k: v for k, v in (config.smoothing or {}).items() if k != "groups"},
    }
    sweep_path = find_sweep(source, hyper)
    if sweep_path:
        facts["sweep"] = json.loads(sweep_path.read_text())
    return facts


def _widths_in_words(widths: list[int]) -> str:
    """`16..256 step 16 (16 widths)` for an evenly spaced list, else the list itself: `info` stays short when a
    Llama trains on all 193 widths of 64-256."""
    steps = {b - a for a, b in zip(widths, widths[1:])}
    if len(widths) > 2 and len(steps) == 1:
        step = steps.pop()
        return f"{widths[0]}..{widths[-1]}" + (f" step {step}" if step > 1 else "") + f" ({len(widths)} widths)"
    return ", ".join(map(str, widths))


def run_info(args, parser):
    hyper = load_hypernetwork(parser, args.source)
    facts = describe(hyper, args.source)
    print(json.dumps(facts, indent=2))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"sample": run_sample, "sweep": run_sweep, "info": run_info, "push": run_push}
    try:
        commands[args.command](args, parser)
    except RuntimeError as error:  # a failed upload, or damaged weights: say what failed, without a traceback
        print(f"neumeta-hf {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
