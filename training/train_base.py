"""Train (or load) the full-width base network of a family, report its test score and save it.

    accelerate launch training/train_base.py --config training/configs/digits_mlp.yaml [key=value ...]

Writes OUTPUT_DIR/base/ (config, weights, model code and image processor). `training/train.py` runs the same
code first when no trained base network is given.
"""

import argparse
import random
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.func import functional_call
from transformers import PreTrainedModel

if __package__ in (None, ""):  # run by path (accelerate launch training/train_base.py): make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neumeta_hf import NeuMetaConfig  # noqa: E402
from neumeta_hf.data import DataInfo, load_splits  # noqa: E402
from neumeta_hf.evaluation import check_labels, evaluate_score  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.pruning import nested_weights, prune_l1  # noqa: E402
from neumeta_hf.publishing import save_network  # noqa: E402
from neumeta_hf.targets import config_at_width, network_width, target, task_for  # noqa: E402
from training.recipe import BaseConfig, TrainConfig, load_config, schedule_factor  # noqa: E402

# What a run writes into its output directory (train.py; train_base.py writes only base/).
RUN_OUTPUTS = ("log.jsonl", "checkpoints", "hypernetwork", "base", "sweep.json", "sweep.md", "sweep.png")


def claim_output_dir(config: TrainConfig, accelerator: Accelerator, resuming: bool, outputs=RUN_OUTPUTS):
    """Refuse an output directory that holds an earlier run, unless it is resumed or `overwrite_output_dir` says
    to replace it (its outputs are then deleted, so that nothing stale mixes with the new run)."""
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"output_dir {output} is a file; choose a directory with output_dir=...")
    earlier = [output / name for name in outputs if (output / name).exists()]
    if "hypernetwork" in outputs:
        earlier += sorted(output.glob("sampled-width-*"))
    pretrained = Path(config.base.pretrained).resolve() if config.base.pretrained else None
    earlier = [path for path in earlier if path.resolve() != pretrained]  # the base network this run starts from
    if not earlier or resuming:
        return
    names = ", ".join(path.name for path in earlier)
    if not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {output} already holds a run ({names}). Resume it with "
            "training.resume_from_checkpoint=latest, choose another output_dir=..., or replace it with "
            "overwrite_output_dir=true."
        )
    if accelerator.is_main_process:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        accelerator.print(f"overwrite_output_dir: removed the earlier run's {names} from {output}")
    accelerator.wait_for_everyone()


def check_against_data(config: TrainConfig, train, validation, test, info: DataInfo, accelerator: Accelerator):
    """The recipe against the data, before anything trains: labels, image shape and classes of a given base
    network, batch sizes, and the hypernetwork's own config. Each failure names the key and the fix."""
    model_class = target(config.base.family).trainable_network_class()
    if config.base.pretrained:
        base_config = model_class.config_class.from_pretrained(config.base.pretrained)
        expected = (base_config.num_channels, base_config.image_size)
        if expected != (info.num_channels, info.image_size):
            raise ValueError(
                f"base.pretrained {config.base.pretrained!r} takes {expected[0]}x{expected[1]}x{expected[1]} images, "
                f"but data {config.data.name!r} has {info.num_channels}x{info.image_size}x{info.image_size}"
            )
    else:
        base_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})
    base_config.architectures = [model_class.__name__]
    task = task_for(base_config)
    if info.task != task.name:
        raise ValueError(
            f"data {config.data.name!r} is {info.task} data, but base.family {config.base.family!r} is a "
            f"{task.name} network; use a family of that task or data of this one"
        )
    if config.training.teacher:  # checked now, not after the base network has trained
        check_teacher(config.training.teacher, model_class, base_config)
    for split, dataset in (("training", train), ("validation", validation), ("test", test)):
        if dataset is not None:
            where = f"data {config.data.name!r} ({split} split)"
            check_labels(dataset, base_config.num_labels, where, ignore_index=task.ignore_index)
    per_step = config.training.batch_size * accelerator.num_processes * config.training.gradient_accumulation_steps
    batches = [("training.batch_size", per_step)]
    if not config.base.pretrained:
        batches.append(("base.batch_size", config.base.batch_size * accelerator.num_processes))
    for key, examples in batches:
        if examples > len(train):
            raise ValueError(
                f"{key}: one step takes {examples} examples (over all processes and accumulation steps), more "
                f"than the {len(train)} training examples of data {config.data.name!r}; lower {key}"
            )
    hypernetwork = config.hypernetwork
    NeuMetaConfig(  # the hypernetwork's config errors now, not after the base network has trained
        family=config.base.family,
        family_config=base_config.to_dict(),
        width_range=hypernetwork.width_range,
        train_widths=hypernetwork.train_widths,
        morph=hypernetwork.morph,
        **hypernetwork.config,
    )
    if config.training.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        warnings.warn("training.mixed_precision=fp16 on a CPU: use bf16 there (fp16 is for GPUs)", stacklevel=2)


def check_teacher(path: str, model_class, base_config):
    """`training.teacher` names a saved network of the base's family that predicts the same labels (any width)."""
    try:
        teacher = model_class.config_class.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"training.teacher {path!r} is not a saved {model_class.__name__} (a directory with config.json and "
            f"model.safetensors, or a Hub id): {error}"
        ) from error
    if (teacher.model_type, teacher.num_labels) != (base_config.model_type, base_config.num_labels):
        raise ValueError(
            f"training.teacher {path!r} is a {teacher.model_type!r} network with {teacher.num_labels} labels; the "
            f"base is a {base_config.model_type!r} network with {base_config.num_labels}: the teacher must be of the "
            "base's family and predict the same labels"
        )


def load_trained_network(key: str, path: str, family: str) -> PreTrainedModel:
    """The trained network that the recipe's `key` names (a directory or Hub id), refused with a ValueError naming
    the key unless it is of `family` and its weights are finite."""
    model = target(family).trainable_network_class().from_pretrained(path)
    if model.config.model_type != family:
        raise ValueError(f"{key} {path!r} is a {model.config.model_type!r} network, but base.family is {family!r}")
    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ValueError(
            f"{key} {path!r} holds non-finite values in {', '.join(broken)}: it diverged or is damaged; retrain it "
            f"(or leave {key} unset)"
        )
    return model


def build_base_network(
    config: TrainConfig, train, test, info: DataInfo, accelerator: Accelerator
) -> tuple[PreTrainedModel, float]:
    """(network, its test score -- the task's main metric): loaded from `base.pretrained`, or trained on `train` with `base.*` settings."""
    model_class = target(config.base.family).trainable_network_class()
    if config.base.pretrained:
        model = load_trained_network("base.pretrained", config.base.pretrained, config.base.family)
    elif config.base.prune_from:
        source = model_class.from_pretrained(config.base.prune_from)
        width = config.base.family_config.get(target(config.base.family).width_field, network_width(source.config))
        model = train_network(prune_l1(source, width).train(), train, config.base, accelerator, config.seed)
    else:
        family_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})
        torch.manual_seed(config.seed)
        model = model_class(family_config)
        nested = None
        if config.base.slimmable:
            full_width = network_width(model.config)
            nested = tuple(config.hypernetwork.width_range or (max(1, full_width // 4), full_width))
        model = train_network(model, train, config.base, accelerator, config.seed, nested)
    model.eval()
    return model, evaluate_score(model, test)


def train_network(model, train, settings: BaseConfig, accelerator: Accelerator, seed: int, nested_widths=None):
    """Supervised training with AdamW and a cosine (or multistep) schedule; returns the unwrapped model.
    With `nested_widths` (smallest, largest) the network is trained universally slimmable (`SlimmableObjective`)."""
    if nested_widths and accelerator.num_processes > 1:
        raise ValueError("base.slimmable trains in one process; launch train_base.py without --num_processes")
    slimmable = SlimmableObjective(nested_widths, seed) if nested_widths else None
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train, batch_size=settings.batch_size, shuffle=True, drop_last=True, generator=generator
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = settings.epochs * (len(train) // settings.batch_size)
    scheduler_name = "multistep" if settings.milestones else "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, total, scheduler_name, settings.milestones)
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    progress = progress_bar(
        range(settings.epochs), desc="base network", unit="epoch", disable=not accelerator.is_main_process
    )
    for epoch in progress:
        for batch in loader:
            if slimmable:
                loss = slimmable(model, batch["pixel_values"], batch["labels"])
            else:
                loss = model(batch["pixel_values"], labels=batch["labels"]).loss
            if accelerator.gather(torch.isfinite(loss.detach()).reshape(1).float()).min() == 0:
                raise FloatingPointError(
                    f"Base network training: the loss became {loss.item()} in epoch {epoch}; lower "
                    f"base.learning_rate (now {settings.learning_rate})"
                )
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model = accelerator.unwrap_model(model)
    # Forget the base network's training objects, so that later checkpoints hold only the hypernetwork's.
    accelerator.free_memory()
    return model.eval()


class SlimmableObjective:
    """The sandwich rule with in-place distillation (US-Nets; for a stock transformers model, MatFormer-style nested
    feed-forward widths): cross-entropy of the full width to the labels,
    plus that of the smallest and two random widths of `widths` (the first channels of the same weights) to the
    full width's predictions. Widths are drawn from `seed`."""

    def __init__(self, widths: tuple[int, int], seed: int):
        self.low, self.high = widths
        self.rng = random.Random(seed)
        self.skeletons = {}  # width -> network on the meta device (structure only, for functional_call)

    def __call__(self, model, pixel_values, labels) -> torch.Tensor:
        full = model(pixel_values, labels=labels)
        teacher = full.logits.detach().softmax(1)  # class probabilities, per image or per pixel
        loss = full.loss
        for width in (self.low, self.rng.randint(self.low, self.high), self.rng.randint(self.low, self.high)):
            if width not in self.skeletons:
                with torch.device("meta"):
                    self.skeletons[width] = type(model)(config_at_width(model.config, width))
            skeleton = self.skeletons[width]
            logits = functional_call(skeleton, nested_weights(model, skeleton), (pixel_values,)).logits
            loss = loss + F.cross_entropy(logits, teacher)
        return loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see training/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. base.epochs=5")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, OSError) as error:  # a bad recipe: say what is wrong, exit 2, no traceback
        parser.error(str(error))
    accelerator = Accelerator()
    claim_output_dir(config, accelerator, resuming=False, outputs=("base",))
    train, validation, test, info = load_splits(config.data)
    check_against_data(config, train, validation, test, info, accelerator)
    model, score = build_base_network(config, train, test, info, accelerator)
    output = Path(config.output_dir) / "base"
    if accelerator.is_main_process:
        save_network(model, output)
        metric = task_for(model.config, type(model)).main_metric
        accelerator.print(f"Base network ({config.base.family}, width {network_width(model.config)}): test {metric} "
                          f"{score:.4f}; saved to {output}")


if __name__ == "__main__":
    main()
