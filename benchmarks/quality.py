"""Quality benchmark: NeuMeta against what a user would pick instead, all on the same data splits.

    python benchmarks/quality.py                        # Fashion-MNIST, LeNet widths 8-32
    python benchmarks/quality.py --recipe digits_mlp    # the embedded default: digits, MLP widths 32-64
    python benchmarks/quality.py --recipe fashion_mnist_vit  # a stock ViT, feed-forward widths 16-256
    python benchmarks/quality.py --recipe shakespeare_llama  # a stock Llama on Shakespeare, widths 128-512

Runs, as subprocesses of this one (two at a time on two cores, one thread each):
  base                 the full-width network, trained with the recipe's `base` settings (train_base.py);
  individual           the same recipe from scratch at each of the recipe's reference widths;
  pruned_l1_finetuned  the base L1-pruned to each reference width, then fine-tuned (FINETUNE_EPOCHS);
  slimmable            a universally slimmable network (US-Nets: first w channels, sandwich rule, in-place
                       distillation), trained from scratch on as many examples as the recipe's method sees in all
                       its stages; for a stock transformers model the same training of nested feed-forward
                       widths, MatFormer-style;
  nested               the nested stage on the base (train_base.py with nested.enabled): channels sorted by
                       importance, every trained width distilled from the base, a scale and shift per width;
  neumeta              the recipe's method, training/train.py: the hypernetwork around the nested stage (with
                       nested.enabled: the pipeline, each width's scales and shifts generated) or around the base,
                       swept over every width of the range (widths outside `train_widths` are unseen);
  neumeta_plain        where the recipe's method is the pipeline: the paper's plain method around the base
                       (nested.enabled=false, with the recipe's `plain` hyper-parameters);
  levers               variants of the method (LEVERS; the pipeline's: without generated scales and shifts,
                       without INR weight corrections; its nested stage's, trained by the lever's own run:
                       inplace_distillation, no_warm_start);
  ablations            (--ablations) NeuMeta without the channel permutation, without coordinate noise, with a
                       shared INR trunk; plus the main run sampled with num_samples 1 and 100.
Then, in this process: pruned_l1 (the base pruned to every width, no fine-tuning), the slimmable network cut
to every width, the targets, and OUTPUT_DIR/RECIPE.json, .md and .png (default OUTPUT_DIR: benchmarks/results).
Every accuracy here is on the test split, read once per method for this table; the recipes decide everything
(evaluation during training) on the validation split they carve out of the training data (`data.validation_size`).
Each method's cost is recorded in wall seconds and in forward-backward passes of the full-width network.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (installed with apt-get when missing and running as
root), from `--data-dir` (a directory of IDX files), or from the Hub (`--data-dir zalando-datasets/fashion_mnist`).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the `training` package

from neumeta_hf import NeuMetaModel  # noqa: E402
from neumeta_hf.data import FASHION_MNIST_DIR, load_splits  # noqa: E402
from neumeta_hf.evaluation import evaluate_score, sweep  # noqa: E402
from neumeta_hf.nested import NestedNetwork  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.pruning import calibration_batches, first_channels, has_batch_norm, prune_l1  # noqa: E402
from neumeta_hf.targets import (  # noqa: E402
    channel_groups, config_at_width, multiply_accumulates, network_width, target, task_for,
)
from neumeta_hf.tasks import PICTURES, BenchmarkTargets, metric_name, task_of_metric  # noqa: E402
from training.recipe import TrainConfig, load_config  # noqa: E402
from training.train_base import network_settings  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    config: str  # the training recipe both the baselines and NeuMeta use
    individual_widths: tuple[int, ...]
    levers: tuple[str, ...] = ()  # names in LEVERS
    # Where the recipe's default is the nested pipeline: the overrides that make it the paper's plain method, with
    # the hyper-parameters measured for it (method "neumeta_plain", beside the default "neumeta").
    plain: tuple[str, ...] | None = None
    # Tighter targets than the task's defaults, where an issue states them for this recipe (None: the task's).
    targets: BenchmarkTargets | None = None


# Each ablation is a full NeuMeta run with these overrides on top of the recipe (with --ablations).
ABLATIONS = {
    "no_permutation": ["hypernetwork.smooth=false"],
    "no_coordinate_noise": ["hypernetwork.config.coordinate_noise=0"],
    "shared_trunk": ["hypernetwork.config.shared_trunk=true"],
}
SAMPLE_COUNTS = (1, 100)  # the num_samples ablation: the main run sampled both ways


@dataclass(frozen=True)
class Lever:
    """A NeuMeta run that changes the method (measured by default for the recipes that name it)."""

    # The run whose network the hypernetwork is built around: "base", "slimmable" or "nested"; "recipe": the
    # recipe's own pipeline, the nested stage with nested.enabled, else the base.
    start: str
    overrides: tuple[str, ...]
    teacher: str | None = None  # the run whose network it distils from instead (training.teacher)


# nested_anchor: the INR learns a correction, from zero, to the slimmable network's first w channels, so that it
# starts where the slimmable network is at every width (no channel permutation: it would break the nesting).
# *_every_width: trained on every width of the range without coordinate noise (noise buys unseen widths; here
# none is unseen). *_teacher: distilled from the plain base network, 0.9 points above the slimmable network's full
# width on Fashion-MNIST, at every width; the full width too, since it is no longer held to the slimmable
# network's tensors (no reconstruction).
NESTED_ANCHOR = ("nested.enabled=false", "hypernetwork.smooth=false", "hypernetwork.config.anchor_channels=first",
                 "training.learning_rate=1.0e-3")  # fmt: skip
EVERY_WIDTH = ("hypernetwork.train_widths=null", "hypernetwork.config.coordinate_noise=0")
# The nested stage on the base network (train_base.py, method "nested"): importance-ordered, distilled from the
# base, a scale and shift per trained width; other widths interpolate the nearest two.
NESTED = ("nested.enabled=true",)
# The recipes' pipeline (nested.enabled) builds the hypernetwork on it, with each width's scales and shifts the
# stage's (interpolated between trained widths) plus a generated correction, so that every width gets its own.
# Its levers: without them (the table's values frozen in at the trained widths, INR corrections only), and with or without the
# INR's weight corrections (whichever the recipe does not do).
NO_WIDTH_AFFINE = ("hypernetwork.config.width_affine=false", "training.train_corrections=true")
NO_WEIGHT_CORRECTIONS = ("training.train_corrections=false",)
WEIGHT_CORRECTIONS = ("training.train_corrections=true",)
FROM_BASE = ("training.reconstruction_weight=0",)
# The nested stage's own ablations, trained by the lever's run from the base (train.py's stage 2): every width
# distilled from the full width in training (US-Nets' in-place distillation) instead of the fixed base, and shared
# weights from a fresh initialisation instead of the base's importance-sorted ones.
IN_PLACE = ("nested.teacher=inplace",)
NO_WARM_START = ("nested.warm_start=false",)
LEVERS = {
    "nested_anchor": Lever("slimmable", NESTED_ANCHOR),
    "nested_anchor_every_width": Lever("slimmable", NESTED_ANCHOR + EVERY_WIDTH),
    "nested_anchor_teacher": Lever("slimmable", NESTED_ANCHOR + FROM_BASE, teacher="base"),
    "nested_anchor_teacher_every_width": Lever("slimmable", NESTED_ANCHOR + FROM_BASE + EVERY_WIDTH, teacher="base"),
    "no_width_affine": Lever("recipe", NO_WIDTH_AFFINE),
    "no_weight_corrections": Lever("recipe", NO_WEIGHT_CORRECTIONS),
    "weight_corrections": Lever("recipe", WEIGHT_CORRECTIONS),
    "inplace_distillation": Lever("base", IN_PLACE),
    "no_warm_start": Lever("base", NO_WARM_START),
}
RECIPES = {  # each with its reference widths (the individual networks) and the levers it runs
    "fashion_mnist_lenet": Recipe(
        "training/configs/fashion_mnist_lenet.yaml", (8, 12, 16, 20, 24, 28, 32),
        ("no_width_affine", "no_weight_corrections"),
        plain=("nested.enabled=false", "training.epochs=15", "training.learning_rate=6.0e-3"),
        # Issue 22: at most 0.2 below the individual line, held-out widths within 0.3 of their neighbours' mean,
        # the full width within 0.1 of the base.
        targets=BenchmarkTargets(individual=0.002, smoothness=0.003, full_width=0.001),
    ),
    "digits_mlp": Recipe(
        "training/configs/digits_mlp.yaml", (32, 40, 48, 56, 64), ("no_width_affine", "weight_corrections"),
        plain=("nested.enabled=false", "training.max_steps=12000", "training.learning_rate=2.0e-3"),
    ),
    # Feed-forward widths 16-256: the individual networks at 16, 32, 64 and 128 (and the base, 256).
    "fashion_mnist_vit": Recipe(
        "training/configs/fashion_mnist_vit.yaml", (16, 32, 64, 128, 256), ("no_width_affine", "no_weight_corrections"),
        plain=("nested.enabled=false", "training.epochs=2", "training.learning_rate=3.0e-3"),
        targets=BenchmarkTargets(individual=0.003, smoothness=0.003, full_width=0.001),  # issue 22
    ),
    # Reference widths at 75%, 50% and 25% compression. The U-Net has BatchNorm: the slimmable U-Net's widths are
    # calibrated (CALIBRATION_BATCHES); the pipeline folds it and generates every width's scales and shifts.
    "fashion_mnist_scenes_unet": Recipe(
        "training/configs/fashion_mnist_scenes_unet.yaml", (8, 16, 24, 32),
        plain=("nested.enabled=false", "training.epochs=8", "training.learning_rate=3.0e-3"),
        # Issue 23: within 1.0 of the individual line, unseen widths within 1.0 of their neighbours' mean, the
        # full width within 0.3 of the base.
        targets=BenchmarkTargets(individual=0.010, smoothness=0.010, full_width=0.003, pruning_margin_at_quarter=0.10),
    ),
    # A CIFAR-style ResNet-8 with BatchNorm, whole network (residual streams included): the slimmable ResNet's
    # widths are calibrated (CALIBRATION_BATCHES); the pipeline folds every width's statistics into its table. The
    # plain method gets the VAE's training length and learning rate (not tuned for it); the task's default targets.
    "fashion_mnist_resnet": Recipe(
        "training/configs/fashion_mnist_resnet.yaml", (16, 24, 32, 48, 64),
        plain=("nested.enabled=false", "training.epochs=4", "training.learning_rate=3.0e-3"),
    ),
    # A stock Llama (or GPT-2) on Shakespeare, feed-forward widths 256-1024: individual networks at 75%, 50% and 25%
    # compression (and the base); the slimmable baseline is MatFormer-style nested training of the same widths. The
    # plain method keeps the recipe's hyper-parameters (not tuned for it).
    "shakespeare_llama": Recipe(
        "training/configs/shakespeare_llama.yaml", (128, 256, 384, 512), plain=("nested.enabled=false",)
    ),
    "shakespeare_gpt2": Recipe(
        "training/configs/shakespeare_gpt2.yaml", (128, 256, 384, 512), plain=("nested.enabled=false",)
    ),
    # The VAE: widths at 75%, 50% and 25% compression; the slimmable VAE distils its posterior and decoded pixels
    # in place. Issue 23: within 1.0 nat of the individual line, the full width within 0.2 nats of the base.
    "fashion_mnist_vae": Recipe(
        "training/configs/fashion_mnist_vae.yaml", (8, 16, 24, 32),
        plain=("nested.enabled=false", "training.epochs=4", "training.learning_rate=3.0e-3"),
        targets=BenchmarkTargets(individual=1.0, smoothness=1.0, full_width=0.2),
    ),
}
# The pruned networks' fine-tuning: a fixed, stated budget (not tuned on the test split).
FINETUNE_EPOCHS = 2
FINETUNE_LEARNING_RATE = 5e-4

COST_BUDGET = 4  # classification: hypernetwork training cost, in individually trained full-width networks


@dataclass
class Bench:
    """What the methods of one benchmark share: the recipe, the widths, the data, the work directory and its
    runs, and each width's share of the full width's multiply-accumulates (for training costs)."""

    config: TrainConfig  # the recipe every run starts from, with the benchmark's overrides
    recipe: Recipe
    overrides: list[str]
    full_width: int
    widths: list[int]  # the reference widths below the full one: individual and fine-tuned networks
    everywhere: list[int]  # every width the sweeping methods are measured at
    examples: int  # training examples
    method_epochs: float  # the recipe's method's epochs, all its stages together: what the slimmable network gets
    share: dict[int, float]  # width -> its multiply-accumulates / the full width's
    work: Path | None = None
    runs: "Runs | None" = None
    model_class: type | None = None
    train: object = None
    validation: object = None
    test: object = None
    info: object = None
    base: object = None  # the base network and its test score, once trained
    base_score: float | None = None

    def standalone(self, width: int) -> list[str]:
        """The recipe overrides of a network trained on its own at `width`."""
        fields = target(self.config.base.family).standalone_fields(width)
        return [f"base.family_config.{key}={value}" for key, value in fields.items()]

    def submit_network(self, run: str, overrides: list[str], after: list[str] = ()):
        """Queue a train_base.py run of one network: without the recipe's nested stage (the "nested" method
        trains that, once)."""
        self.runs.submit(run, "train_base.py", [*overrides, "nested.enabled=false"], after=after)

    def trained(self, run: str):
        """The network that run `run` of train_base.py saved."""
        return self.model_class.from_pretrained(self.work / run / "base")

    @property
    def base_passes(self) -> int:
        return self.config.base.epochs * self.examples


@dataclass(frozen=True)
class Method:
    """One method of the benchmark: a column of its table, a line of its plot, an entry of its report.

    `scores(bench)` reads the test split once: {width: score}. `submit(bench)` queues the training runs it needs
    (None: it trains nothing of its own). `passes(bench)` is its training cost in forward-backward passes of the
    full-width network -- {width: passes} for one network per width; None where it trains nothing. `section` is
    where the report keeps it ("methods", "ablations" or "levers"); `run` names a NeuMeta run's directory, whose
    validation sweep the report also keeps. `colour`/`style` draw it (None: the next of `VARIANT_COLOURS`);
    style "points" draws markers only.
    """

    label: str
    scores: Callable[[Bench], dict[int, float]]
    submit: Callable[[Bench], None] | None = None
    passes: Callable[[Bench], int | dict[int, int]] | None = None
    section: str = "methods"
    colour: str | None = None
    style: str = "-"
    run: str | None = None


def submit_individual(bench: Bench):
    for width in sorted(bench.widths, reverse=True):  # longest first, so that two workers finish together
        run = f"individual_{width}"
        bench.submit_network(run, [f"output_dir={bench.work / run}", *bench.standalone(width)])


def submit_finetuned(bench: Bench):
    for width in bench.widths:
        finetune = [f"base.prune_from={bench.work / 'base' / 'base'}", *bench.standalone(width),
                    f"base.epochs={FINETUNE_EPOCHS}", f"base.learning_rate={FINETUNE_LEARNING_RATE}"]  # fmt: skip
        output = f"output_dir={bench.work / f'finetuned_{width}'}"
        bench.submit_network(f"pruned_l1_finetuned_{width}", [output, *finetune], after=["base"])


def method_epochs(config: TrainConfig, examples: int) -> float:
    """The epochs the recipe's method trains for, base network and nested stage included: the slimmable network,
    trained from scratch, gets as many (in the hypernetwork's batch size)."""
    settings = config.training
    hypernetwork = settings.epochs or settings.max_steps * settings.batch_size / examples
    return config.base.epochs + (config.nested.epochs if config.nested.enabled else 0) + hypernetwork


def submit_slimmable(bench: Bench):
    # The slimmable network sees as many examples as the recipe's method, all its stages together.
    slimmable = ["base.slimmable=true", f"base.epochs={round(bench.method_epochs)}",
                 f"base.batch_size={bench.config.training.batch_size}"]  # fmt: skip
    bench.submit_network("slimmable", [f"output_dir={bench.work / 'slimmable'}", *slimmable])


def slimmable_passes(bench: Bench) -> int:
    """The sandwich rule: the full width, the smallest and two random widths per step."""
    low = bench.config.hypernetwork.width_range[0]
    mean_share = sum(bench.share[w] for w in bench.everywhere) / len(bench.everywhere)
    return round(round(bench.method_epochs) * bench.examples * (1 + bench.share[low] + 2 * mean_share))


def hypernetwork_passes(bench: Bench, recipe: TrainConfig) -> int:
    """A hypernetwork's own steps under `recipe`: each its width's share, the smallest width and the full one
    with the sandwich rule (the full width unless it is only reconstructed), a third for the teacher's
    forward-only pass. The INR's own work is not in these figures: its wall seconds are."""
    low, high = recipe.hypernetwork.width_range
    train_widths = recipe.hypernetwork.train_widths or list(range(low, high + 1))
    per_example = sum(bench.share[w] for w in train_widths) / len(train_widths)
    if recipe.training.sandwich:
        per_example += bench.share[low] + (0 if recipe.training.reconstruction_weight else 1)
    if recipe.training.distillation_weight:
        per_example += 1 / 3
    epochs = recipe.training.epochs or recipe.training.max_steps * recipe.training.batch_size / bench.examples
    return round(epochs * bench.examples * per_example)


def neumeta_method(label: str, run: str, lever: Lever, section: str, style: str = "-", colour=None,
                   fresh: bool = False) -> Method:  # fmt: skip
    """A NeuMeta run (the main one, an ablation or a lever): train.py around the network `lever.start` names,
    with `lever.overrides`, distilled from `lever.teacher` when set. Its cost includes the networks it starts
    from and distils from, and its hypernetwork's follows its own recipe. Reused with --reuse, like a baseline,
    while its recipe is unchanged, unless `fresh` (the recipe's own method: trained by every benchmark)."""

    def start(bench: Bench) -> str:
        if lever.start != "recipe":
            return lever.start
        return "nested" if load_config(REPO / bench.recipe.config, lever_overrides(bench)).nested.enabled else "base"

    def lever_overrides(bench: Bench) -> list[str]:
        return list(lever.overrides) + bench.overrides

    def submit(bench: Bench):
        command = [f"output_dir={bench.work / run}", f"base.pretrained={bench.work / start(bench) / 'base'}"]
        if start(bench) == "nested":  # its base/ is the base network's copy; the hypernetwork builds on nested/
            command.append(f"nested.pretrained={bench.work / 'nested' / 'nested'}")
        if lever.teacher:
            command.append(f"training.teacher={bench.work / lever.teacher / 'base'}")
        after = [start(bench)] + ([lever.teacher] if lever.teacher else [])
        bench.runs.submit(run, "train.py", command, after=after, fresh=fresh, method=lever.overrides)

    def passes(bench: Bench) -> int:
        networks = {"base": bench.base_passes, "slimmable": slimmable_passes(bench), "nested": nested_passes(bench)}
        recipe = load_config(REPO / bench.recipe.config, lever_overrides(bench))
        if start(bench) == "base" and recipe.nested.enabled:  # the run trains a nested stage of its own
            networks["base"] = nested_passes(bench, recipe)
        teacher = networks[lever.teacher] if lever.teacher else 0
        return networks[start(bench)] + teacher + hypernetwork_passes(bench, recipe)

    return Method(label, lambda bench: swept(bench.work / run), submit, passes, section, colour, style, run)


def resampled_method(count: int) -> Method:
    """The main NeuMeta run's hypernetwork sampled with `num_samples=count` (no training of its own)."""

    def scores(bench: Bench) -> dict[int, float]:
        hyper = NeuMetaModel.from_pretrained(bench.work / "neumeta" / "hypernetwork")
        result = sweep(hyper, bench.test, bench.everywhere, num_samples=count)
        return {r["width"]: r[result["metric"]] for r in result["results"]}

    return Method(f"ablation: num_samples_{count}", scores, section="ablations", style="-.")


def individual_scores(bench: Bench) -> dict[int, float]:
    trained = {w: evaluate_score(bench.trained(f"individual_{w}"), bench.test) for w in bench.widths}
    return dict(sorted((trained | {bench.full_width: bench.base_score}).items()))  # the full-width one is the base


def individual_passes(bench: Bench) -> dict[int, int]:
    return {w: round(bench.base_passes * bench.share[w]) for w in bench.widths} | {bench.full_width: bench.base_passes}


def pruned_scores(bench: Bench) -> dict[int, float]:
    return {w: evaluate_score(prune_l1(bench.base, w), bench.test) for w in progress_bar(bench.everywhere, desc="pruned_l1")}


def finetuned_scores(bench: Bench) -> dict[int, float]:
    tuned = {w: evaluate_score(bench.trained(f"finetuned_{w}"), bench.test) for w in bench.widths}
    return dict(sorted((tuned | {bench.full_width: bench.base_score}).items()))


def finetuned_passes(bench: Bench) -> dict[int, int]:
    return {w: round(bench.base_passes + FINETUNE_EPOCHS * bench.examples * bench.share[w]) for w in bench.widths}


def submit_nested(bench: Bench):
    command = [f"output_dir={bench.work / 'nested'}", f"base.pretrained={bench.work / 'base' / 'base'}", *NESTED]
    bench.runs.submit("nested", "train_base.py", command, after=["base"])


def nested_scores(bench: Bench) -> dict[int, float]:
    nested = NestedNetwork.from_pretrained(bench.work / "nested" / "nested")
    return {w: evaluate_score(nested.network_at(w), bench.test) for w in progress_bar(bench.everywhere, desc="nested")}


def nested_passes(bench: Bench, recipe: TrainConfig | None = None) -> int:
    """The base, then the nested stage's steps (under `recipe`, default the benchmark's nested stage): the full
    width, the smallest and `random_widths` of the trained widths (of every width with `nested.every_width`), and
    the base teacher's forward-only pass (a third; none with in-place distillation, whose teacher is the full
    width's own pass). With `nested.mix_layers` the last random width is one per layer, and the network runs at
    its widest layer's width: that draw costs the expected share of the widest of one draw per layer."""
    recipe = recipe or load_config(REPO / bench.recipe.config, list(NESTED) + bench.overrides)
    low, high = recipe.hypernetwork.width_range
    every = list(range(low, high + 1))
    widths = every if recipe.nested.every_width else recipe.hypernetwork.train_widths or every
    teacher = 1 / 3 if recipe.nested.teacher == "base" else 0
    draws = sorted(bench.share[w] for w in widths)
    mean_draw = sum(draws) / len(draws)
    random = recipe.nested.random_widths * mean_draw
    if recipe.nested.mix_layers:  # P(the widest of L draws is the k-th smallest) = ((k + 1)^L - k^L) / n^L
        layers, n = sum(1 for g in channel_groups(bench.base) if g.scales), len(draws)
        random += sum(share * ((k + 1) ** layers - k**layers) / n**layers for k, share in enumerate(draws)) - mean_draw
    per_example = teacher + 1 + bench.share[low] + random
    return round(bench.base_passes + recipe.nested.epochs * bench.examples * per_example)


# US-Nets' BatchNorm calibration of a slimmable network with BatchNorm: every width's statistics recomputed from
# this many batches of training images (the recipe's base.batch_size), the same batches for every width. The
# slimmable baseline uses the most; the others are the same network with less calibration data.
CALIBRATION_BATCHES = (100, 10, 1)


def slimmable_method(batches: int | None = None) -> Method:
    """The slimmable network cut to every width; with BatchNorm, calibrated on `batches` training batches."""

    def scores(bench: Bench) -> dict[int, float]:
        slimmable = bench.trained("slimmable")
        calibration = None
        if has_batch_norm(slimmable):
            input_name = task_for(slimmable.config, type(slimmable)).input_name
            calibration = calibration_batches(bench.train, input_name, bench.config.base.batch_size, batches)
        return {w: evaluate_score(first_channels(slimmable, w, calibration), bench.test)
                for w in progress_bar(bench.everywhere, desc=f"slimmable, {batches} calibration batches")}  # fmt: skip

    if batches == CALIBRATION_BATCHES[0]:
        return Method("slimmable", scores, submit_slimmable, slimmable_passes, colour="tab:green")
    return Method(f"slimmable_calibrated_{batches}", scores, passes=slimmable_passes, colour="tab:olive", style=":")


# The benchmark's methods, in table order. Adding a method is one entry here (or in ABLATIONS / LEVERS).
BASELINES = {
    "individual": Method("individual", individual_scores, submit_individual, individual_passes, colour="tab:blue",
                         style="points"),
    "pruned_l1": Method("pruned_l1", pruned_scores, colour="tab:orange"),
    "pruned_l1_finetuned": Method("pruned_l1_finetuned", finetuned_scores, submit_finetuned, finetuned_passes,
                                  colour="tab:brown"),
    "slimmable": slimmable_method(CALIBRATION_BATCHES[0]),
    "nested": Method("nested", nested_scores, submit_nested, nested_passes, colour="tab:purple"),
    "neumeta": neumeta_method("neumeta", "neumeta", Lever("recipe", ()), "methods", colour="black", fresh=True),
}  # fmt: skip
VARIANT_COLOURS = ("tab:red", "tab:purple", "tab:cyan", "tab:olive", "tab:pink")


def plain_method(overrides: tuple[str, ...]) -> Method:
    """The paper's plain method, around the base network, where the recipe's own method is the pipeline."""
    return neumeta_method("neumeta_plain", "neumeta_plain", Lever("base", overrides), "methods", colour="tab:gray")


def has_batch_norm_config(recipe: Recipe) -> bool:
    """Whether the recipe's base network has BatchNorm (built on the meta device to look)."""
    config = load_config(REPO / recipe.config)
    model_class = target(config.base.family).trainable_network_class()
    with torch.device("meta"):
        return has_batch_norm(model_class(model_class.config_class(**config.base.family_config)))


def chosen_methods(recipe: Recipe, ablations: bool, levers: dict[str, Lever]) -> dict[str, Method]:
    """The methods a benchmark run measures: every baseline, NeuMeta, the ablations (with
    `ablations`) and `levers`."""
    methods = dict(BASELINES)
    if has_batch_norm_config(recipe):  # the slimmable network with less calibration data too
        methods |= {f"slimmable_calibrated_{count}": slimmable_method(count) for count in CALIBRATION_BATCHES[1:]}
    if recipe.plain is not None:  # the paper's plain method beside the recipe's nested pipeline
        methods["neumeta_plain"] = plain_method(recipe.plain)
    if ablations:
        methods |= {name: neumeta_method(f"ablation: {name}", name, Lever("base", tuple(extra)), "ablations", ":")
                    for name, extra in ABLATIONS.items()}  # fmt: skip
        methods |= {f"num_samples_{count}": resampled_method(count) for count in SAMPLE_COUNTS}
    methods |= {name: neumeta_method(f"lever: {name}", f"lever_{name}", lever, "levers", "--")
                for name, lever in levers.items()}  # fmt: skip
    return methods


def training_passes(bench: Bench, methods: dict[str, Method]) -> dict:
    """Each method's training cost in forward-backward passes of the full-width network (a width-w pass counts
    its share of the full width's multiply-accumulates; a teacher's forward-only pass counts a third), keyed as
    the report keeps it: a NeuMeta run by its run name."""
    return {method.run or name: method.passes(bench) for name, method in methods.items() if method.passes}


def main(argv=None):
    args = parse_arguments(argv)
    if args.rescore:  # the targets of a committed report, from its recorded scores: nothing trained or read
        report = json.loads(Path(args.rescore).read_text(), object_hook=width_keys)
        missing = {"metric", "recipe", "seen_widths", "training_passes"} - set(report)
        if missing:
            raise SystemExit(f"{args.rescore} was written by an older quality.py (it lacks {', '.join(sorted(missing))}"
                             "): run the benchmark again instead of --rescore.")
        paths = write_report(score_targets(report), Path(args.rescore).with_suffix(""))
        print(markdown(report))
        print("Wrote " + ", ".join(str(p) for p in paths))
        return
    started = time.time()
    bench, methods = set_up(args)
    bench.submit_network("base", [f"output_dir={bench.work / 'base'}"])
    # The longest baseline first, so that it runs beside all the others; then the nested stage, which the
    # levers built on it wait for.
    first = {submit_slimmable: 0, submit_nested: 1}
    for method in sorted(methods.values(), key=lambda method: first.get(method.submit, 2)):
        if method.submit:
            method.submit(bench)
    bench.runs.wait()
    report = measure(bench, methods, args)
    report["wall_seconds"] = {**bench.runs.seconds, "total": round(time.time() - started, 1)}
    output = Path(args.output_dir)
    paths = write_report(report, output / args.recipe)
    for name in PICTURES:  # what the sampled networks make (segmentation, generation)
        picture = bench.work / "neumeta" / "hypernetwork" / name
        if picture.is_file():
            paths.append(Path(shutil.copy(picture, output / f"{args.recipe}_{name}")))
    print(markdown(report))
    print("Wrote " + ", ".join(str(p) for p in paths))


def width_keys(mapping: dict) -> dict:
    """A JSON object read back with its widths as ints again (JSON keys are strings)."""
    return {int(k) if k.isdigit() else k: v for k, v in mapping.items()}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="fashion_mnist_lenet")
    parser.add_argument("--data-dir", help="data.name for every run: a directory of IDX files or a Hub dataset id")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"), help="where RECIPE.json/.md/.png go (default: benchmarks/results)")
    parser.add_argument("--work-dir", help="where the runs write their networks (default: outputs/quality/RECIPE)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--ablations", action="store_true", help="also run the ablations (three more NeuMeta runs)")
    parser.add_argument(
        "--levers", nargs="*", choices=sorted(LEVERS), metavar="LEVER",
        help=f"the levers to run (default: the recipe's; any of {', '.join(LEVERS)}; none: --levers with no name)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep the networks of every run but the recipe's method (`neumeta`) "
        "from an earlier benchmark in the work directory when their resolved recipe is the same (the JSON records "
        "which were reused); only valid when the code that trains them has not changed either",
    )
    parser.add_argument(
        "--rescore", metavar="REPORT.json", help="check the targets of an earlier report again from its recorded "
        "scores (after a target changed) and rewrite its .json/.md/.png; trains and evaluates nothing",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="key=value", help="recipe overrides for every run, e.g. base.epochs=2"
    )
    return parser.parse_args(argv)


def set_up(args) -> tuple[Bench, dict[str, Method]]:
    """The recipe with the benchmark's overrides, the data, the widths and their costs, and the methods chosen."""
    recipe = RECIPES[args.recipe]
    levers = {name: LEVERS[name] for name in (recipe.levers if args.levers is None else args.levers)}
    overrides = list(args.set) + ([f"data.name={args.data_dir}"] if args.data_dir else [])
    config = load_config(REPO / recipe.config, overrides)
    if config.data.name == "fashion_mnist":
        ensure_fashion_mnist()
    work = Path(args.work_dir or REPO / "outputs" / "quality" / args.recipe)
    work.mkdir(parents=True, exist_ok=True)
    model_class = target(config.base.family).trainable_network_class()
    full_width = network_width(model_class.config_class(**config.base.family_config))
    low, high = config.hypernetwork.width_range
    train, validation, test, info = load_splits(config.data)
    base_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})

    def network_at(width):  # structure only: what multiply_accumulates needs
        with torch.device("meta"):
            return model_class(config_at_width(base_config, width))

    macs = {w: multiply_accumulates(network_at(w)) for w in range(low, high + 1)}
    bench = Bench(
        config, recipe, overrides, full_width,
        widths=[w for w in recipe.individual_widths if w != full_width],
        # The widths every method is measured at: the recipe's sweep (every width of the range unless it says less).
        everywhere=config.sweep.widths or list(range(low, high + 1)),
        examples=len(train),
        method_epochs=method_epochs(config, len(train)),
        share={w: macs[w] / macs[full_width] for w in macs},
        work=work, runs=Runs(REPO / recipe.config, overrides, work, args.jobs, reuse=args.reuse),
        model_class=model_class, train=train, validation=validation, test=test, info=info,
    )  # fmt: skip
    return bench, chosen_methods(recipe, args.ablations, levers)


def measure(bench: Bench, methods: dict[str, Method], args) -> dict:
    """Every method on the test split (once each), NeuMeta's validation sweeps, the costs and the targets: the
    report (all but the wall seconds)."""
    config, validation, test = bench.config, bench.validation, bench.test
    bench.base = bench.trained("base")
    bench.base_score = evaluate_score(bench.base, test)
    metric = task_for(bench.base.config, type(bench.base)).main_metric
    scores = {name: method.scores(bench) for name, method in methods.items()}
    sections = {
        section: {name: scores[name] for name, method in methods.items() if method.section == section}
        for section in ("methods", "ablations", "levers")
    }
    validation_sweeps = {
        method.run: validation_sweep(bench.work / method.run, validation, bench.everywhere)
        for method in methods.values() if method.run
    }  # fmt: skip
    hyper = NeuMetaModel.from_pretrained(bench.work / "neumeta" / "hypernetwork")
    passes = training_passes(bench, methods)
    report = {
        "metric": metric,
        "dataset": bench.info.name,
        "family": config.base.family,
        "slimmable_kind": target(config.base.family).slimmable_kind,
        "full_width": bench.full_width,
        # What "neumeta" is: the recipe's own method.
        "neumeta_method": "nested pipeline" if config.nested.enabled else "plain",
        "seen_widths": hyper.config.train_widths,
        "num_samples": hyper.config.num_samples,
        "splits": {
            "train": bench.examples,
            "validation": len(validation) if validation is not None else 0,
            "test": len(test),
            "every score in this report": "test",
            "decisions during training (evaluation)": "validation" if validation is not None else "test",
        },
        "methods": {"base": bench.base_score, **sections["methods"]},
        "ablations": sections["ablations"],
        "levers": sections["levers"],
        f"validation_{metric}": validation_sweeps,
        **{k: v for k, v in hyper.parameter_counts().items() if k in ("inr_parameters", "width_table_parameters")},
        "base_parameters": bench.base.num_parameters(),
        "recipe": bench.recipe.config,
        "overrides": list(args.set),
        "finetuning": f"{FINETUNE_EPOCHS} epochs, AdamW lr {FINETUNE_LEARNING_RATE} cosine, "
        f"batch {config.base.batch_size}",
        "reused_runs": sorted(bench.runs.reused),
        "training_passes": passes,
    }
    return score_targets(report)


def score_targets(report: dict) -> dict:
    """The report with its targets (NeuMeta's and each lever's) checked against its recorded scores and costs."""
    check = check_targets if report["metric"] == "accuracy" else check_task_targets
    passes = report["training_passes"]
    report["targets"] = check(report, report["methods"]["neumeta"], passes["neumeta"])
    report["lever_targets"] = {
        name: check(report, values, passes[f"lever_{name}"]) for name, values in report["levers"].items()
    }
    return report


class Runs:
    """Training scripts run as subprocesses, `jobs` at a time, each logging to WORK/logs/NAME.log. With `reuse`,
    a run that finished in an earlier benchmark (WORK/logs/NAME.done holds its command and the recipe it
    resolved to) is kept when both are the same, unless it is submitted `fresh`."""

    def __init__(self, config: Path, overrides: list[str], work: Path, jobs: int, reuse: bool = False):
        self.config, self.overrides, self.work, self.reuse = config, overrides, work, reuse
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.futures, self.seconds, self.reused = {}, {}, set()
        (work / "logs").mkdir(exist_ok=True)

    def submit(self, name: str, script: str, overrides: list[str], after: list[str] = (), fresh: bool = False,
               method: tuple[str, ...] = ()):  # fmt: skip
        """Queue a run; it starts once the runs named in `after` have finished (those that were submitted).
        `method`: the overrides that make the recipe the run's method (a lever's, the plain method's), which the
        benchmark's own overrides (--set) may change; `overrides`, the run's own (its directory, width, epochs)."""
        dependencies = [self.futures[run] for run in after if run in self.futures]
        arguments = list(method) + self.overrides + overrides
        self.futures[name] = self.pool.submit(self._run, name, script, arguments, dependencies, fresh)

    def command(self, script: str, arguments: list[str]) -> list[str]:
        # The work directory is the benchmark's own: each run replaces the previous benchmark's.
        return [sys.executable, str(REPO / "training" / script), "--config", str(self.config), *arguments,
                "overwrite_output_dir=true"]  # fmt: skip

    def signature(self, script: str, arguments: list[str]) -> list[str]:
        """What a run does: its command and the recipe it resolves to (the command names the file, not its
        contents); for train_base.py, only the settings that decide its networks."""
        recipe = load_config(self.config, arguments)
        if script == "train_base.py":
            settings = network_settings(recipe)
        else:  # train.py: the whole recipe, but the stage's settings decide nothing in a run without one
            settings = asdict(recipe) | ({} if recipe.nested.enabled else {"nested": None})
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return self.command(script, arguments)[1:] + [digest]

    def _run(self, name, script, arguments, dependencies, fresh):
        for dependency in dependencies:
            dependency.result()  # raises if what this run needs failed
        command = self.command(script, arguments)
        done = self.work / "logs" / f"{name}.done"
        signature = self.signature(script, arguments)
        if self.reuse and not fresh and done.exists() and json.loads(done.read_text())["command"] == signature:
            self.reused.add(name)
            self.seconds[name] = json.loads(done.read_text())["seconds"]
            print(f"[{time.strftime('%H:%M:%S')}] {name}: reused from the earlier benchmark", flush=True)
            return
        environment = os.environ | {"OMP_NUM_THREADS": str(self.threads), "TQDM_MININTERVAL": "30"}
        log = self.work / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: started (log: {log})", flush=True)
        started = time.time()
        with log.open("w") as stream:
            code = subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        self.seconds[name] = round(time.time() - started, 1)
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); see {log}:\n{log.read_text()[-2000:]}")
        done.write_text(json.dumps({"command": signature, "seconds": self.seconds[name]}))
        print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {self.seconds[name]:.0f}s", flush=True)

    def wait(self):
        for future in self.futures.values():
            future.result()
        self.pool.shutdown()


def swept(run: Path) -> dict[int, float]:
    """{width: main metric} from a NeuMeta run's sweep.json."""
    result = json.loads((run / "sweep.json").read_text())
    return {r["width"]: r[result["metric"]] for r in result["results"]}


def validation_sweep(run: Path, validation, widths) -> dict[int, float] | None:
    """{width: validation score} of a NeuMeta run's hypernetwork, the figure to choose between recipes by."""
    if validation is None:
        return None
    result = sweep(NeuMetaModel.from_pretrained(run / "hypernetwork"), validation, widths)
    return {r["width"]: r[result["metric"]] for r in result["results"]}


def ensure_fashion_mnist():
    """Install Debian's dataset-fashion-mnist when it is missing and we may (root with apt-get)."""
    if Path(FASHION_MNIST_DIR).is_dir():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"Fashion-MNIST is not in {FASHION_MNIST_DIR}. Install it (sudo apt-get install dataset-fashion-mnist), "
            "or pass --data-dir with a directory of IDX files or the Hub id zalando-datasets/fashion_mnist."
        )
    print("Installing dataset-fashion-mnist with apt-get ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)


def check_targets(report: dict, neumeta: dict[int, float], passes: int) -> list[dict]:
    """Each target for NeuMeta's accuracies `neumeta` at training cost `passes`, with the measured figure and
    whether it is met (accuracies in points)."""
    methods, full = report["methods"], report["full_width"]
    individual = methods["individual"]
    tolerance = recipe_targets(report)
    points = lambda value: round(100 * value, 2)  # noqa: E731
    targets = []

    def target(text, measured, met):
        targets.append({"target": text, "measured": measured, "met": bool(met)})

    target(f"full width within {points(tolerance.full_width)} points of the base", f"{points(neumeta[full])} vs "
           f"{points(methods['base'])}", neumeta[full] >= methods["base"] - tolerance.full_width)  # fmt: skip
    references, line = sorted(individual), {}
    for width in sorted(neumeta):
        below, above = max(w for w in references if w <= width), min(w for w in references if w >= width)
        fraction = 0.0 if above == below else (width - below) / (above - below)
        line[width] = reference = individual[below] + fraction * (individual[above] - individual[below])
        what = "the individual network" if below == above else f"the line between individual {below} and {above}"
        target(f"width {width}: at most {points(tolerance.individual)} points below {what}",
               f"{points(neumeta[width])} vs {points(reference)}", neumeta[width] >= reference - tolerance.individual)
    mean, line_mean = sum(neumeta.values()) / len(neumeta), sum(line.values()) / len(line)
    target(f"mean over the {len(neumeta)} widths at or above the individual line's", f"{points(mean)} vs "
           f"{points(line_mean)}", mean >= line_mean)  # fmt: skip
    for name in ("slimmable", "pruned_l1_finetuned"):
        short = [w for w, value in methods[name].items() if neumeta[w] < value]
        target(f"at or above {name} at every width it is measured at ({len(methods[name])})",
               f"below at {len(short)}: " + ", ".join(f"{w} ({points(neumeta[w])} vs {points(methods[name][w])})"
                                                     for w in short), not short)  # fmt: skip
    short = [w for w in neumeta if w != full and neumeta[w] <= methods["pruned_l1"][w]]
    target("above pruned_l1 at every width below the full one", f"at or below at {len(short)}: {short}", not short)
    rough, measured, seen = [], sorted(neumeta), set(report["seen_widths"])
    for before, width, after in zip(measured, measured[1:], measured[2:]):  # neighbours among measured widths
        mean = (neumeta[before] + neumeta[after]) / 2
        if width not in seen and neumeta[width] < mean - tolerance.smoothness:
            rough.append(f"{width} ({points(neumeta[width])} vs {points(mean)})")
    unseen = [w for w in measured[1:-1] if w not in seen]
    target(f"unseen widths ({len(unseen)}) at most {points(tolerance.smoothness)} points below the mean of their "
           "neighbours", f"{len(rough)} widths: " + ", ".join(rough), not rough)  # fmt: skip
    stored = report["inr_parameters"] + report.get("width_table_parameters", 0)  # reports before the table: none
    target("INR parameters, its per-width table included, at most the full-width network's",
           f"{stored:,} vs {report['base_parameters']:,}", stored <= report["base_parameters"])  # fmt: skip
    ratio = round(passes / report["training_passes"]["individual"][full], 2)
    target(f"training cost at most {COST_BUDGET} individually trained full-width networks",
           f"{ratio} (in full-width forward-backward passes, base network included)", ratio <= COST_BUDGET)
    return targets


def recipe_targets(report: dict) -> BenchmarkTargets:
    """The targets of the report's recipe: its own where it states them, else its task's."""
    recipe = next((r for r in RECIPES.values() if r.config == report.get("recipe")), None)
    return recipe.targets if recipe and recipe.targets else task_of_metric(report["metric"]).targets


def check_task_targets(report: dict, neumeta: dict[int, float], passes: int) -> list[dict]:
    """The segmentation (issue 13), image generation (issue 15) and language model (issue 24) targets for NeuMeta's
    scores `neumeta`, in the metric's own terms (the task's `targets`, `scale`, `unit`, direction and
    `relative_gain`): the full width near the base where a tolerance is given, near the individual networks, at
    or better than the slimmable (MatFormer-style) baseline where there is one, better than L1 pruning
    (segmentation: by a margin at 75% compression; else at every width below full), unseen widths no worse than
    their neighbours."""
    methods, full, seen = report["methods"], report["full_width"], set(report["seen_widths"])
    task = task_of_metric(report["metric"])
    spec, unit, gain = recipe_targets(report), difference_unit(task), task.gain
    show = lambda value: round(task.scale * value, 2)  # noqa: E731
    # A tolerance: in the metric's units, or for a metric compared by ratios (perplexity) in per cent of it.
    allow = lambda amount: f"{100 * amount:g} %" if task.relative_gain else f"{show(amount)} {unit}"  # noqa: E731
    worse = "below" if task.higher_is_better else "above"
    targets = []

    def target(text, measured, met):
        targets.append({"target": text, "measured": measured, "met": bool(met)})

    def tally(prefix, cases):  # "worse at 2: 8 (...), 9 (...)", or "worse at none"
        return f"{prefix} {len(cases)}: " + ", ".join(cases) if cases else f"{prefix} none"

    if spec.full_width is not None:
        base = methods["base"]
        target(f"full width at most {allow(spec.full_width)} {worse} the base", f"{show(neumeta[full])} vs "
               f"{show(base)}", gain(neumeta[full], base) >= -spec.full_width)  # fmt: skip
    for width, reference in sorted(methods["individual"].items()):
        target(f"width {width}: at most {allow(spec.individual)} {worse} the individual network",
               f"{show(neumeta[width])} vs {show(reference)}", gain(neumeta[width], reference) >= -spec.individual)  # fmt: skip
    for name in ("slimmable", "pruned_l1_finetuned"):
        if name in methods:
            short = [f"{w} ({show(neumeta[w])} vs {show(v)})" for w, v in sorted(methods[name].items())
                     if gain(neumeta[w], v) < 0]  # fmt: skip
            kind = f" ({report.get('slimmable_kind')})" if name == "slimmable" else ""
            target(f"at or better than {name}{kind} at every width it is measured at ({len(methods[name])})",
                   tally("worse at", short), not short)  # fmt: skip
    pruned = methods["pruned_l1"]
    if spec.pruning_margin_at_quarter is not None:
        quarter = round(full / 4)
        if quarter in neumeta:
            margin = spec.pruning_margin_at_quarter
            target(f"width {quarter} (75% compression): at least {allow(margin)} better than L1 pruning",
                   f"{show(neumeta[quarter])} vs {show(pruned[quarter])}", gain(neumeta[quarter], pruned[quarter]) >= margin)  # fmt: skip
    else:
        short = [f"{w} ({show(neumeta[w])} vs {show(pruned[w])})" for w in sorted(neumeta)
                 if w != full and gain(neumeta[w], pruned[w]) <= 0]  # fmt: skip
        target("better than pruned_l1 at every width below the full one",
               tally("not better at", short), not short)  # fmt: skip
    rough, measured = [], sorted(neumeta)
    for before, width, after in zip(measured, measured[1:], measured[2:]):
        mean = (neumeta[before] + neumeta[after]) / 2
        if width not in seen and gain(neumeta[width], mean) < -spec.smoothness:
            rough.append(f"{width} ({show(neumeta[width])} vs {show(mean)})")
    unseen = [w for w in measured[1:-1] if w not in seen]
    target(f"unseen widths ({len(unseen)}) at most {allow(spec.smoothness)} {worse} the mean of their "
           "neighbours", tally(worse, rough), not rough)  # fmt: skip
    ratio = round(passes / report["training_passes"]["individual"][full], 2)
    target("training cost (stated, no target)", f"{ratio} individually trained full-width networks", True)
    return targets


def difference_unit(task) -> str:
    """How a difference of the task's main metric reads: points of a percentage, else the metric's unit."""
    return "points" if task.unit == "%" else task.unit


def units(report: dict) -> tuple[float, str]:
    """(factor, unit) of a report's metric in tables and plots (the task's: fractions in %, likelihoods in nats)."""
    task = task_of_metric(report.get("metric", "accuracy"))
    return task.scale, task.unit


def report_methods(report: dict) -> dict[str, tuple[str, dict]]:
    """Every measured method of a report but the base, in table order: name -> (label, {width: score})."""
    entries = {}
    for section, prefix in (("methods", ""), ("ablations", "ablation: "), ("levers", "lever: ")):
        for name, values in report[section].items():
            if name != "base":
                entries[name if section == "methods" else f"{prefix}{name}"] = (label(report, name, prefix), values)
    return entries


def label(report: dict, name: str, prefix: str = "") -> str:
    """A method's name in tables and plots: the slimmable network says which kind it is on stock models."""
    if name == "slimmable" and report.get("slimmable_kind", "US-Nets") != "US-Nets":
        return f"slimmable ({report['slimmable_kind']})"
    return f"{prefix}{name}"


def markdown(report: dict) -> str:
    scale, unit = units(report)
    methods = report["methods"]
    columns = dict(report_methods(report).values())
    seen = set(report["seen_widths"])
    splits = report["splits"]
    rows = report.get("width_table_parameters")
    table = f", plus {rows:,} in its per-width table" if rows else ""
    lines = [
        f"# NeuMeta quality: {report['family']} on {report['dataset']} "
        f"(test {metric_name(report.get('metric', 'accuracy'))}" + (f", {unit})" if unit else ")"),
        "",
        f"Base network (width {report['full_width']}, {report['base_parameters']:,} parameters): "
        f"{scale * methods['base']:.2f}. INR: {report['inr_parameters']:,} parameters{table}. "
        f"Unseen widths are marked *. `neumeta` is the recipe's method ({report.get('neumeta_method', 'plain')}). "
        f"Recipe `{report['recipe']}`"
        + (f" with `{' '.join(report['overrides'])}`" if report["overrides"] else "")
        + f"; {report['wall_seconds']['total'] / 60:.1f} minutes in all"
        + (" for this run, which reused earlier runs' networks (their own seconds below)" if report["reused_runs"] else "")
        + f". Splits: {splits['train']:,} training, "
        f"{splits['validation']:,} validation (evaluation during training), {splits['test']:,} test (this table "
        f"only). Pruned networks fine-tuned {report['finetuning']}.",
        "",
        "| width | " + " | ".join(columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for width in sorted(methods["neumeta"]):
        cells = [f"{scale * values[width]:.2f}" if width in values else "" for values in columns.values()]
        lines.append(f"| {width}{'' if width in seen else '*'} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---|:---:|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in report["targets"]]
    for name, targets in report["lever_targets"].items():
        met = sum(t["met"] for t in targets)
        lines += ["", f"Lever `{name}`: {met} of {len(targets)} targets met; missed:", ""]
        lines += [f"- {t['target']}: {t['measured']}" for t in targets if not t["met"]]
    passes = report["training_passes"]
    cost = [f"individual {w}: {v:,}" for w, v in passes["individual"].items()]
    cost += [f"{name}: {passes[name]:,}" for name in passes if name not in ("individual", "pruned_l1_finetuned")]
    seconds = ", ".join(f"{name} {value:.0f}" for name, value in report["wall_seconds"].items())
    reused = f" Reused from an earlier run: {', '.join(report['reused_runs'])}." if report["reused_runs"] else ""
    return "\n".join(lines + ["", "Training cost (forward-backward passes, full-width units): " + "; ".join(cost)
                              + ".", "", f"Wall seconds: {seconds}.{reused}", ""])  # fmt: skip


# How the plot's legend names the methods (the report keeps their ids).
LEGEND_NAMES = {
    "individual": "trained individually", "pruned_l1": "L1-pruned", "pruned_l1_finetuned": "L1-pruned + fine-tuned",
    "nested": "nested stage alone", "neumeta": "NeuMeta (the recipe's method)",
    "neumeta_plain": "NeuMeta, the paper's plain method",
}  # fmt: skip


def plot(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, seen = report["methods"], set(report["seen_widths"])
    task = task_of_metric(report.get("metric", "accuracy"))
    scale, unit = task.scale, task.unit
    figure, axis = plt.subplots(figsize=(8, 4.5))
    colours = iter(VARIANT_COLOURS)
    for key, (name, values) in report_methods(report).items():
        method = plotted_method(key)
        widths = sorted(values)
        points = [scale * values[w] for w in widths]
        colour = method.colour or next(colours, "tab:gray")
        name = LEGEND_NAMES.get(key, name)
        if key == "slimmable":
            name = f"slimmable ({report.get('slimmable_kind', 'US-Nets')})"
        if method.style == "points":
            axis.scatter(widths, points, marker="s", color=colour, zorder=4, label=name)
        elif key == "neumeta":  # the method measured: bold, its unseen widths hollow
            axis.plot(widths, points, color=colour, lw=1.5, label=name, zorder=3)
            unseen = [w for w in widths if w not in seen]
            axis.scatter(unseen, [scale * values[w] for w in unseen], facecolors="white", edgecolors=colour,
                         zorder=3, label="NeuMeta, unseen width")  # fmt: skip
        else:
            marker = "^" if len(widths) < 10 and method.section == "methods" else None
            lw = 1.0 if method.section == "methods" else 1.2
            axis.plot(widths, points, color=colour, ls=method.style, marker=marker, lw=lw, label=name)
    neumeta = methods["neumeta"]
    axis.axhline(scale * methods["base"], color="gray", ls="--", lw=0.8, label="base network")
    # Pruning collapses far away; keep the interesting band readable.
    if not task.higher_is_better:  # NeuMeta's spread from the base, with room on both sides
        bottom, top = scale * min(methods["base"], *neumeta.values()), scale * max(neumeta.values())
        room = max(top - bottom, 1.0)
        axis.set_ylim(bottom - room / 2, top + 2 * room)
    else:
        top = scale * max(methods["base"], *neumeta.values())
        axis.set_ylim(max(0, min(top - 15, scale * min(neumeta.values()) - 2)), top + 1)  # NeuMeta always in view
    low, high = axis.get_ylim()
    labelled = {"low": 0, "high": 0}  # values at the same edge stacked, not drawn over each other
    for line in list(axis.lines):  # points outside the band: markers at the edge, the farthest one with its value
        outside = [(x, y) for x, y in line.get_xydata() if not low <= y <= high]
        for x, y in outside:
            edge, marker = (low, "v") if y < low else (high, "^")
            axis.plot([x], [edge], marker=marker, color=line.get_color(), clip_on=False, zorder=5)
        if outside:
            x, y = max(outside, key=lambda point: abs(point[1] - (low + high) / 2))
            side = "low" if y < low else "high"
            edge, offset = (low, 4 + 9 * labelled[side]) if y < low else (high, -10 - 9 * labelled[side])
            labelled[side] += 1
            axis.annotate(f"{y:.1f}", (x, edge), xytext=(6, offset), textcoords="offset points", fontsize="x-small",
                          color=line.get_color())  # fmt: skip
    axis.set_xlabel("width")
    axis.set_ylabel(f"test {task.metric_label}" + (f" ({unit})" if unit else ""))
    axis.set_title(f"{report['family']} on {report['dataset']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", ncol=2, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plotted_method(key: str) -> Method:
    """How a report entry (`report_methods`' key) is drawn: its `Method`, or a variant's default style."""
    if key in BASELINES:
        return BASELINES[key]
    if key == "neumeta_plain":
        return plain_method(())
    section, _, name = key.partition(": ")
    style = "-." if name.startswith("num_samples") else {"ablation": ":", "lever": "--"}.get(section, "-")
    return Method(key, scores=dict, section=f"{section}s", style=style)


def write_report(report: dict, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in (".json", ".md", ".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


if __name__ == "__main__":
    main()
