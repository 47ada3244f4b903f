"""Train (or load) the full-width base network of a family, report its validation score (the test score when the
recipe holds out no validation split) and save it.

    accelerate launch training/train_base.py --config training/configs/digits_mlp.yaml [key=value ...]

Writes OUTPUT_DIR/base/ (config, weights, model code and image processor) and, with `nested.enabled`, the
nested stage OUTPUT_DIR/nested/ (the importance-ordered shared network, which loads as a plain network, and the
per-width scales and shifts beside it). `training/train.py` runs the same stages first when they are not given.
"""

import argparse
import atexit
import contextlib
import json
import os
import random
import shutil
import socket
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.func import functional_call
from transformers import PretrainedConfig, PreTrainedModel

if __package__ in (None, ""):  # run by path (accelerate launch training/train_base.py): make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neumeta_hf import NeuMetaConfig  # noqa: E402
from neumeta_hf.data import DataInfo, load_splits  # noqa: E402
from neumeta_hf.evaluation import check_labels, evaluate_score  # noqa: E402
from neumeta_hf.modeling_neumeta import non_finite_tensors  # noqa: E402
from neumeta_hf.nested import (  # noqa: E402
    AFFINE_FILE, NestedNetwork, detached, importance_order, train_nested, trained_widths,
)
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.pruning import calibration_batches, nested_weights, prune_l1, unlisted_buffers  # noqa: E402
from neumeta_hf.publishing import load_preprocessor, save_network  # noqa: E402
from neumeta_hf.targets import config_at_width, network_width, target, task_for  # noqa: E402
from neumeta_hf.text_data import TextDataConfig, context_length  # noqa: E402
from training.recipe import BaseConfig, TrainConfig, load_config, schedule_factor  # noqa: E402

# What a run writes into its output directory (train.py; train_base.py writes only base/).
RUN_OUTPUTS = ("log.jsonl", "checkpoints", "hypernetwork", "base", "nested", "sweep.json", "sweep.md", "sweep.png")
BASE_OUTPUTS = ("base", "nested")  # train_base.py's


def network_settings(config: TrainConfig) -> dict:
    """The parts of a recipe that decide the networks this script trains (the base and the nested stage): the
    rest (the hypernetwork's own settings and training, the sweep) is only checked here. Two recipes that agree on
    these give the same networks (e.g. the benchmark reuses a baseline across a change of the hypernetwork, and a
    network trained without a nested stage across a change of the stage's settings)."""
    settings = asdict(config)
    hypernetwork = settings["hypernetwork"]
    nested = settings["nested"] if config.nested.enabled else None
    return {"seed": config.seed, "data": settings["data"], "base": settings["base"], "nested": nested,
            "widths": [hypernetwork["width_range"], hypernetwork["train_widths"]]}  # fmt: skip


LOCK_FILE = ".run.lock"  # in the output directory while a run holds it: {"pid", "host", "started"}


def claim_output_dir(config: TrainConfig, accelerator: Accelerator, resuming: bool, outputs=RUN_OUTPUTS) -> list[Path]:
    """Hold the output directory (`hold_output_dir`) and refuse one that holds an earlier run, unless it is
    resumed or `overwrite_output_dir` says to replace it. Returns the earlier run's outputs to replace: nothing is
    deleted here; `replace_earlier_run` deletes them once every check that can fail before training has passed."""
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"output_dir {output} is a file; choose a directory with output_dir=...")
    for part in output.resolve().parents:  # a run inside another's checkpoints/ or base/ is lost when that one's are
        if part.name in outputs and any((part.parent / marker).exists() for marker in ("log.jsonl", LOCK_FILE)):
            raise ValueError(f"output_dir {output} lies inside {part}, which belongs to the run in {part.parent} and "
                             "is replaced or pruned by it; choose a directory outside it with output_dir=...")  # fmt: skip
    hold_output_dir(output, accelerator)
    earlier = [output / name for name in outputs if (output / name).exists()]
    if "hypernetwork" in outputs:
        earlier += sorted(output.glob("sampled-width-*"))
    given = {Path(path).resolve() for path in (config.base.pretrained, config.nested.pretrained) if path}
    earlier = [path for path in earlier if path.resolve() not in given]  # the stages this run starts from
    if not earlier or resuming:
        return []
    if not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {output} already holds a run ({', '.join(path.name for path in earlier)}). Resume it with "
            "training.resume_from_checkpoint=latest, choose another output_dir=..., or replace it with "
            "overwrite_output_dir=true."
        )
    return earlier


def replace_earlier_run(earlier: list[Path], accelerator: Accelerator):
    """Delete the earlier run's outputs that `claim_output_dir` found (overwrite_output_dir=true)."""
    if earlier and accelerator.is_main_process:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        names = ", ".join(path.name for path in earlier)
        accelerator.print(f"overwrite_output_dir: removed the earlier run's {names} from {earlier[0].parent}")
    accelerator.wait_for_everyone()


def hold_output_dir(output: Path, accelerator: Accelerator):
    """Take OUTPUT_DIR/LOCK_FILE for this run (the main process; released when it exits, or by
    `release_output_dir`): refused while another live process on this host, or any process on another host,
    holds it; taken over, with a warning, from a process that has died."""
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        lock, me = output / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()}
        record = json.dumps(me | {"started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        while True:
            try:  # created only if absent: of two runs started together, one gets it
                with os.fdopen(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as held:
                    held.write(record)
                break
            except FileExistsError:
                pass
            try:
                holder = json.loads(lock.read_text())
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError):
                holder = {}  # half-written: its writer is being checked below by pid, which it lacks
            if {k: holder.get(k) for k in me} == me:
                break  # this process holds it already (train() called again in one process)
            if holder.get("host") not in (None, me["host"]) or _process_alive(holder.get("pid")):
                raise RuntimeError(
                    f"output_dir {output} is in use by another run (pid {holder.get('pid')} on host "
                    f"{holder.get('host')}, since {holder.get('started')}): wait for it to finish or choose another "
                    f"output_dir=...; if that run is no longer running, delete {lock}"
                )
            warnings.warn(f"output_dir {output}: taking over {lock} from pid {holder.get('pid')}, which is no longer "
                          "running (an interrupted run)", stacklevel=2)  # fmt: skip
            lock.unlink(missing_ok=True)
        atexit.register(release_output_dir, output)
    accelerator.wait_for_everyone()


def release_output_dir(output: Path):
    """Remove OUTPUT_DIR/LOCK_FILE if this process holds it."""
    lock = Path(output) / LOCK_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()


def _process_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_against_data(config: TrainConfig, train, validation, test, info: DataInfo, accelerator: Accelerator):
    """The recipe against the data, before anything trains: labels, image shape and classes of a given base
    network, batch sizes, and the hypernetwork's own config. Each failure names the key and the fix."""
    model_class = target(config.base.family).trainable_network_class()
    if config.base.pretrained:
        base_config = model_class.config_class.from_pretrained(config.base.pretrained)
    else:
        base_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})
    if isinstance(config.data, TextDataConfig):
        context = context_length(base_config)
        if context is not None and config.data.block_size > context:
            raise ValueError(
                f"data.block_size={config.data.block_size} tokens is longer than the base network's context of "
                f"{context} positions; lower data.block_size (or give the base a longer context)"
            )
    elif config.base.pretrained:
        expected = (base_config.num_channels, base_config.image_size)
        if expected != (info.num_channels, info.image_size):
            raise ValueError(
                f"base.pretrained {config.base.pretrained!r} takes {expected[0]}x{expected[1]}x{expected[1]} images, "
                f"but data {config.data.name!r} has {info.num_channels}x{info.image_size}x{info.image_size}"
            )
    base_config.architectures = [model_class.__name__]
    task = task_for(base_config)
    if info.task != task.name:
        raise ValueError(
            f"data {config.data.name!r} is {info.task} data, but base.family {config.base.family!r} is a "
            f"{task.name} network; use a family of that task or data of this one"
        )
    for key, path in (("training.teacher", config.training.teacher), ("nested.pretrained", config.nested.pretrained)):
        if path:  # checked now, not after the base network has trained
            check_trained_network(key, path, model_class, base_config)
    if config.nested.pretrained and config.hypernetwork.config.get("width_affine"):
        check_nested_widths(config, base_config)
    for split, dataset in (("training", train), ("validation", validation), ("test", test)):
        if dataset is not None:
            where = f"data {config.data.name!r} ({split} split)"
            check_labels(dataset, task.label_count(base_config), where, ignore_index=task.ignore_index)
    per_step = config.training.batch_size * accelerator.num_processes * config.training.gradient_accumulation_steps
    batches = [("training.batch_size", per_step)]
    if not config.base.pretrained:
        batches.append(("base.batch_size", config.base.batch_size * accelerator.num_processes))
    if config.nested.enabled and not config.nested.pretrained:
        batches.append(("nested.batch_size", config.nested.batch_size))
        with torch.device("meta"):  # a structure the stage cannot give per-width scales refused now, not after the base
            NestedNetwork(model_class(base_config), config.hypernetwork.train_widths or [])
        if accelerator.num_processes > 1:
            raise ValueError("the nested stage trains in one process; launch without --num_processes, or give its "
                             "output from an earlier run with nested.pretrained=DIR")  # fmt: skip
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
    if (config.training.mixed_precision or accelerator.mixed_precision) == "fp16" and accelerator.device.type == "cpu":
        warnings.warn("training.mixed_precision=fp16 on a CPU: use bf16 there (fp16 is for GPUs)", stacklevel=2)


def check_trained_network(key: str, path: str, model_class, base_config):
    """The recipe's `key` (training.teacher, nested.pretrained) names a saved network of the base's family that
    predicts the same labels (any width); a nested stage's output also has its per-width table."""
    try:
        saved = model_class.config_class.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{key} {path!r} is not a saved {model_class.__name__} (a directory with config.json and "
            f"model.safetensors{', or a Hub id' if key == 'training.teacher' else ''}): {error}"
        ) from error
    if (saved.model_type, saved.num_labels) != (base_config.model_type, base_config.num_labels):
        raise ValueError(
            f"{key} {path!r} is a {saved.model_type!r} network with {saved.num_labels} labels; the base is a "
            f"{base_config.model_type!r} network with {base_config.num_labels}: it must be of the base's family "
            "and predict the same labels"
        )
    if key == "nested.pretrained" and not (Path(path) / AFFINE_FILE).is_file():
        raise ValueError(
            f"nested.pretrained {path!r} is not a nested stage's output (no {AFFINE_FILE}): name the nested/ "
            "directory of an earlier run, or leave nested.pretrained unset to train the stage"
        )


def check_nested_widths(config: TrainConfig, base_config):
    """A given nested stage has a table row for each of hypernetwork.train_widths below the full width, which
    the hypernetwork's per-width scales and shifts (`width_affine`) start from."""
    wanted = sorted(set(train_widths(config, base_config)) - {network_width(base_config)})
    saved = trained_widths(config.nested.pretrained)
    if saved != wanted:
        raise ValueError(
            f"nested.pretrained {config.nested.pretrained!r} was trained at widths {saved} (and the full one); "
            f"hypernetwork.train_widths asks for {wanted}: give the stage's widths, or train a stage for these"
        )


def check_base_family(config: TrainConfig):
    """base.pretrained names a saved network of base.family: refused (ValueError naming both) before anything
    reads it as one, or creates the output directory."""
    path, family = config.base.pretrained, config.base.family
    if not path:
        return
    try:
        saved = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"base.pretrained {path!r} is not a saved network (a directory with config.json, or a "
                         f"Hub id): {error}") from error  # fmt: skip
    if saved != family:
        raise ValueError(f"base.pretrained {path!r} is a {saved!r} network, but base.family is {family!r}: set "
                         f"base.family={saved} (or name a {family!r} network)")  # fmt: skip


def make_reproducible(seed: int):
    """Seed every generator and use deterministic kernels: with several CPU threads the hypernetwork's backward
    otherwise accumulates in an order that varies from run to run, so the same recipe gave networks differing in
    their last bits. Where an op has no deterministic version (some CUDA kernels) this warns rather than stops."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def adopt_base_preprocessing(config: TrainConfig):
    """With `base.pretrained`, feed its data as the base expects, unless the recipe says otherwise: text through
    the base's own tokenizer (data.tokenizer); images normalised as the base was trained (data.image_mean /
    data.image_std) -- its image processor's, else what neumeta-hf's training recorded in its config -- not by the
    training split's own statistics. Binarised images are fed as drawn, as the base was."""
    data, path = config.data, config.base.pretrained
    if not path:
        return
    if isinstance(data, TextDataConfig):
        data.tokenizer = data.tokenizer or path
        return
    if data.image_mean is not None or data.image_std is not None or data.binarize:
        return
    preprocessor = load_preprocessor(path) if not target(config.base.family).needs_remote_code else None
    expects = preprocessor if getattr(preprocessor, "do_normalize", False) else None
    if expects is None:
        expects = target(config.base.family).trainable_network_class().config_class.from_pretrained(path)
    if getattr(expects, "image_mean", None) is not None and getattr(expects, "image_std", None) is not None:
        data.image_mean, data.image_std = list(expects.image_mean), list(expects.image_std)


def carry_preprocessor(model: PreTrainedModel, path: str, info: DataInfo):
    """Give a stock base loaded from `path` the image processor or tokenizer it came with, to travel with every
    network sampled from it, its normalisation set to the one training used (with a warning where it differs)."""
    if target(model.config.model_type).needs_remote_code:
        return  # a family's processor follows from its config
    model.preprocessor = preprocessor = load_preprocessor(path)
    if getattr(preprocessor, "image_mean", None) is None:
        return
    used = [list(info.image_mean), list(info.image_std)]
    if [list(preprocessor.image_mean), list(preprocessor.image_std)] != used:
        warnings.warn(f"base.pretrained {path!r}: its image processor normalises with mean {list(preprocessor.image_mean)}, "
                      f"std {list(preprocessor.image_std)}, but training used mean {used[0]}, std {used[1]}; the "
                      "sampled networks' processors get the latter", stacklevel=2)  # fmt: skip
        preprocessor.image_mean, preprocessor.image_std = used
    model.config.image_mean, model.config.image_std = used


def load_trained_network(key: str, path: str, family: str) -> PreTrainedModel:
    """The trained network that the recipe's `key` names (a directory or Hub id), refused with a ValueError naming
    the key unless it is of `family` and its weights are finite."""
    model = target(family).trainable_network_class().from_pretrained(path)
    if model.config.model_type != family:
        raise ValueError(f"{key} {path!r} is a {model.config.model_type!r} network, but base.family is {family!r}")
    broken = non_finite_tensors(model.state_dict())
    if broken:
        raise ValueError(
            f"{key} {path!r} holds non-finite values in {', '.join(broken)}: it diverged or is damaged; retrain it "
            f"(or leave {key} unset)"
        )
    return model


def build_base_network(config: TrainConfig, train, info: DataInfo, accelerator: Accelerator) -> PreTrainedModel:
    """The base network, in eval mode: loaded from `base.pretrained`, or trained on `train` with `base.*` settings."""
    model_class = target(config.base.family).trainable_network_class()
    if config.base.pretrained:
        model = load_trained_network("base.pretrained", config.base.pretrained, config.base.family)
        carry_preprocessor(model, config.base.pretrained, info)
    elif config.base.prune_from:
        source = model_class.from_pretrained(config.base.prune_from)
        width = config.base.family_config.get(target(config.base.family).width_field, network_width(source.config))
        model = train_network(prune_l1(source, width).train(), train, config.base, accelerator, config.seed)
    else:
        family_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})
        torch.manual_seed(config.seed)
        model = model_class(family_config)
        nested = width_range(config, model.config) if config.base.slimmable else None
        model = train_network(model, train, config.base, accelerator, config.seed, nested)
    if info.preprocessor is not None and not config.base.pretrained:  # the tokenizer that cut the text goes along
        model.preprocessor = info.preprocessor
    return model.eval()


def watched_split(validation, test) -> tuple[datasets.Dataset, str]:
    """(dataset, split name) that a run reports while it works and that decisions are taken by: the validation
    split when there is one. The test split is read once, for a final table (train.py's sweep)."""
    return (test, "test") if validation is None else (validation, "validation")


def width_range(config: TrainConfig, base_config) -> tuple[int, int]:
    """hypernetwork.width_range, or its default: a quarter of the base's full width to the full width."""
    full_width = network_width(base_config)
    return tuple(config.hypernetwork.width_range or (max(1, full_width // 4), full_width))


def train_widths(config: TrainConfig, base_config) -> list[int]:
    """hypernetwork.train_widths, or its default: every width of the range."""
    low, high = width_range(config, base_config)
    return list(config.hypernetwork.train_widths or range(low, high + 1))


def build_nested_network(config: TrainConfig, base: PreTrainedModel, train, accelerator: Accelerator) -> NestedNetwork:
    """The nested stage: loaded from `nested.pretrained`, else the base's channels sorted by importance and every
    width of hypernetwork.train_widths (default: the whole range) distilled from the base (`nested.*` settings)."""
    settings = config.nested
    if settings.pretrained:
        return NestedNetwork.from_pretrained(settings.pretrained).to(accelerator.device)
    widths = train_widths(config, base.config)
    torch.manual_seed(config.seed)
    start = importance_order(base) if settings.warm_start else type(base)(base.config)  # fresh: its own init
    nested = NestedNetwork(start, widths).to(accelerator.device)
    teacher = base if settings.teacher == "base" else None  # None: in-place
    train_nested(
        nested, teacher, train, settings.epochs, settings.batch_size, settings.learning_rate, settings.weight_decay,
        settings.random_widths, settings.temperature, config.seed, accelerator.autocast, settings.every_width,
        settings.label_weight, settings.mix_layers,
    )  # fmt: skip
    if nested.batch_norm:  # each width's statistics, computed once here, folded in: sampling needs no data
        input_name = task_for(base.config, type(base)).input_name
        batches = calibration_batches(train, input_name, settings.batch_size, settings.calibration_batches, config.seed)
        nested = nested.folded(batches, settings.untrained_statistics)
    return nested


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
    warmup = settings.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, total, scheduler_name, settings.milestones, warmup_steps=warmup)
    )
    input_name = task_for(model.config, type(model)).input_name  # pixel values, or token ids
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    progress = progress_bar(
        range(settings.epochs), desc="base network", unit="epoch", disable=not accelerator.is_main_process
    )
    for epoch in progress:
        for batch in loader:
            if slimmable:
                loss = slimmable(model, batch[input_name], batch["labels"])
            else:
                loss = model(batch[input_name], labels=batch["labels"]).loss
            if accelerator.gather(torch.isfinite(loss.detach()).reshape(1).float()).min() == 0:
                raise FloatingPointError(
                    f"Base network training: the loss became {loss.item()} in epoch {epoch}; lower "
                    f"base.learning_rate (now {settings.learning_rate})"
                )
            optimizer.zero_grad()
            accelerator.backward(loss)
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model = accelerator.unwrap_model(model)
    # Forget the base network's training objects, so that later checkpoints hold only the hypernetwork's.
    accelerator.free_memory()
    return model.eval()


class SlimmableObjective:
    """The sandwich rule with in-place distillation (US-Nets; for a stock transformers model, MatFormer-style nested
    feed-forward widths): the task loss of the full width, plus the task's distillation of the smallest and two
    random widths of `widths` (the first channels of the same weights) from the full width's outputs of the same
    step -- class predictions, or a VAE's posterior and decoded pixels, decoding the same posterior noise. Widths
    and noise are drawn from `seed`."""

    def __init__(self, widths: tuple[int, int], seed: int):
        self.low, self.high = widths
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.skeletons = {}  # width -> network on the meta device (structure only, for functional_call)

    def __call__(self, model, inputs, labels) -> torch.Tensor:
        task = task_for(model.config, type(model))
        shared = task.shared_inputs(model.config, inputs, self.generator)
        full = model(inputs, labels=labels, **shared)
        teacher = detached(full)
        loss = full.loss
        for width in (self.low, self.rng.randint(self.low, self.high), self.rng.randint(self.low, self.high)):
            if width not in self.skeletons:
                with torch.device("meta"):
                    self.skeletons[width] = type(model)(config_at_width(model.config, width))
            skeleton = self.skeletons[width]
            tensors = nested_weights(model, skeleton) | unlisted_buffers(model, skeleton)
            output = functional_call(skeleton, tensors, (inputs,), shared)
            loss = loss + task.distillation(output, teacher, temperature=1.0)
        return loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see training/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. base.epochs=5")
    args = parser.parse_args(argv)
    try:  # a bad recipe, or one the data refuses: say what is wrong, exit 2, no traceback
        config = load_config(args.config, args.overrides)
        check_base_family(config)
        accelerator = Accelerator(mixed_precision=config.training.mixed_precision)  # as train.py trains the base
        make_reproducible(config.seed)
        earlier = claim_output_dir(config, accelerator, resuming=False, outputs=BASE_OUTPUTS)
        adopt_base_preprocessing(config)
        train, validation, test, info = load_splits(config.data)
        check_against_data(config, train, validation, test, info, accelerator)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    replace_earlier_run(earlier, accelerator)
    model = build_base_network(config, train, info, accelerator)
    output = Path(config.output_dir)
    metric = task_for(model.config, type(model)).main_metric
    watched, split = watched_split(validation, test)
    if accelerator.is_main_process:
        save_network(model, output / "base")
        accelerator.print(f"Base network ({config.base.family}, width {network_width(model.config)}): {split} "
                          f"{metric} {evaluate_score(model, watched):.4f}; saved to {output / 'base'}")
    if config.nested.enabled:
        nested = build_nested_network(config, model, train, accelerator)
        if accelerator.is_main_process:
            nested.save_pretrained(output / "nested")
            low, high = width_range(config, model.config)
            scores = {w: evaluate_score(nested.network_at(w), watched) for w in sorted({low, (low + high) // 2, high})}
            figures = ", ".join(f"width {w} {score:.4f}" for w, score in scores.items())
            accelerator.print(f"Nested stage: {split} {metric} {figures}; saved to {output / 'nested'}")
    release_output_dir(output)


if __name__ == "__main__":
    main()
