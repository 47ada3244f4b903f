"""Train a NeuMeta hypernetwork with Accelerate, then sweep the widths and save everything.

    accelerate launch training/train.py --config training/configs/digits_mlp.yaml [key=value ...]

Overrides use dotted keys: `output_dir=/tmp/run training.max_steps=200 hypernetwork.config.hidden_size=128`.
Steps: (1) the base network -- loaded from base.pretrained or OUTPUT_DIR/base, else trained; (2) with
`nested.enabled`, the nested stage (OUTPUT_DIR/nested); (3) the hypernetwork around it (BatchNorm folded, channels
permuted unless nested); (4) training: one width per step drawn from the
training widths, loss = task loss + l2_weight x sum of generated tensors' L2 norms + reconstruction loss at full
width (+ optional distillation from the base, or from `training.teacher`, at other widths; with
`training.mixup_alpha` > 0 the batch is mixup-blended first; with `training.sandwich` every step also trains the
smallest width and reconstructs the full width), AdamW, warm-up then cosine or multistep decay, gradient clipping,
EMA of the INR; checkpoints every `training.checkpoint_every` steps (`training.resume_from_checkpoint=latest`
continues exactly); (5) OUTPUT_DIR/hypernetwork (EMA weights),
OUTPUT_DIR/base, a width sweep (sweep.json, sweep.md, sweep.png) and one sampled network.

`train()` runs these as named stages: `set_up` (accelerator, output directory, data, every check), `base_stage`,
`nested_stage` (with `nested.enabled`: the importance-ordered nested network between the base and the
hypernetwork, see `neumeta_hf.nested`), `hypernetwork_stage`, `prepare_training` (with `resume`), `training_loop` and `export`.

The whole recipe is checked, against the data too, before anything trains. An OUTPUT_DIR that holds an earlier
run is refused unless the run is resumed or `overwrite_output_dir=true` says to replace it.
"""

import argparse
import contextlib
import copy
import json
import math
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import ProjectConfiguration
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

if __package__ in (None, ""):  # run by path (accelerate launch training/train.py): make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neumeta_hf import NeuMetaModel  # noqa: E402
from neumeta_hf.data import DataInfo, load_splits  # noqa: E402
from neumeta_hf.evaluation import (  # noqa: E402
    evaluate_score, evaluate_width, sweep, worst_result, write_pictures, write_sweep,
)
from neumeta_hf.nested import AFFINE_FILE, NestedNetwork  # noqa: E402
from neumeta_hf.objective import Objective  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.publishing import attach_card, hypernetwork_card, sampled_network_card, save_network  # noqa: E402
from neumeta_hf.targets import network_width, task_for  # noqa: E402
from training.recipe import (  # noqa: E402
    RESUMABLE_CHANGES,
    TrainConfig,
    config_to_dict,
    flatten,
    identity_hash,
    load_config,
    run_identity,
    schedule_factor,
)
from training.train_base import (  # noqa: E402
    adopt_base_preprocessing,
    build_base_network,
    build_nested_network,
    check_against_data,
    check_base_family,
    claim_output_dir,
    load_trained_network,
    make_reproducible,
    release_output_dir,
    replace_earlier_run,
    watched_split,
)


class JSONLTracker(GeneralTracker):
    """An accelerate tracker appending one JSON object per `log` call to LOGGING_DIR/log.jsonl."""

    name = "jsonl"
    requires_logging_directory = True

    # No @on_main_process here: the tracker is built before the Accelerator, and asking for the process
    # state that early would settle it as single-process before the CPU multi-process set-up happens.
    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.path = Path(logging_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        self._write({"config": values})

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self._write({"step": step, **values})

    def _write(self, record: dict):
        with self.path.open("a") as log:
            log.write(json.dumps(record) + "\n")


class EMA:
    """Exponential moving average of a module's parameters, checkpointed with the training state."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up: early steps weigh more
        for name, parameter in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module, values: dict | None = None):
        """Load the averaged weights (or `values`, same names) into `module`."""
        parameters = dict(module.named_parameters())
        for name, value in (self.shadow if values is None else values).items():
            parameters[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """Temporarily load the averaged weights into `module`."""
        parameters = dict(module.named_parameters())
        saved = {name: parameters[name].detach().clone() for name in self.shadow}
        self.copy_to(module)
        try:
            yield module
        finally:
            self.copy_to(module, saved)

    def save(self, path: Path):
        """A safetensors file (no pickle: loading a checkpoint never runs code)."""
        save_file(self.shadow, path, metadata={"decay": repr(self.decay), "updates": str(self.updates)})

    def load(self, path: Path):
        with safe_open(path, framework="pt") as stored:
            metadata = stored.metadata()
            self.decay, self.updates = float(metadata["decay"]), int(metadata["updates"])
            for name, value in self.shadow.items():
                value.copy_(stored.get_tensor(name))


class StepBatches(torch.utils.data.Sampler):
    """Batch indices as a function of the global batch number, so a resumed run sees exactly the same data:
    epoch `e` shuffles with seed (seed, e); this process takes every `num_processes`-th batch."""

    def __init__(self, size, batch_size, seed, first_batch, num_batches, rank=0, num_processes=1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches = range(first_batch * num_processes + rank, num_batches * num_processes, num_processes)
        self.per_epoch = size // batch_size

    def __iter__(self):
        order, order_epoch = None, None
        for batch in self.batches:
            epoch, index = divmod(batch, self.per_epoch)
            if epoch != order_epoch:
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
                order_epoch = epoch
            yield order[index * self.batch_size : (index + 1) * self.batch_size].tolist()

    def __len__(self):
        return len(self.batches)


def mixup(pixel_values, labels, num_labels: int, alpha: float, seed: int):
    """Mixup (Zhang et al., 2018): each image blended with another of the batch by a Beta(alpha, alpha) weight,
    and its one-hot label likewise. Drawn from `seed`, so a resumed run mixes the same pairs."""
    rng = np.random.default_rng(seed)
    weight = torch.as_tensor(rng.beta(alpha, alpha, len(labels)), dtype=pixel_values.dtype, device=pixel_values.device)
    partner = torch.as_tensor(rng.permutation(len(labels)), device=pixel_values.device)
    shape = (-1,) + (1,) * (pixel_values.dim() - 1)
    mixed = weight.view(shape) * pixel_values + (1 - weight.view(shape)) * pixel_values[partner]
    one_hot = F.one_hot(labels, num_labels).to(mixed.dtype)
    targets = weight[:, None] * one_hot + (1 - weight[:, None]) * one_hot[partner]
    return mixed, targets


def step_width(config: TrainConfig, widths: list[int], step: int) -> int:
    """The width trained at `step`: uniform over the training widths, the same on every process and on resume."""
    return random.Random(config.seed * 1_000_003 + step).choice(widths)


# A checkpoint directory: accelerate's state (weights as safetensors; optimizer, scheduler and RNG states as
# torch files, loaded with weights_only=True), the EMA as safetensors and run.json saying which run wrote it.
RUN_FILE = "run.json"


def save_checkpoint(accelerator: Accelerator, ema: EMA, directory: Path, step: int, run: dict) -> Path:
    """Write checkpoint `step_{step}` under a temporary name and rename it when complete, so that a kill or a
    full disk leaves either a whole checkpoint or one that `find_checkpoint` never looks at."""
    final, partial = directory / f"step_{step}", directory / f".partial-step_{step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        ema.save(partial / "ema.safetensors")
        # What a complete checkpoint holds: a file lost or cut short later makes `latest` fall back a checkpoint.
        files = {str(f.relative_to(partial)): f.stat().st_size for f in sorted(partial.rglob("*")) if f.is_file()}
        (partial / RUN_FILE).write_text(json.dumps({"step": step, **run, "files": files}, indent=1) + "\n")
        if final.exists():  # written before by this run, then resumed from an earlier checkpoint
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def lost_files(path: Path, run: dict) -> list[str]:
    """The files checkpoint `path` was written with (its run.json lists them) that are gone or cut short."""
    return [name for name, size in run.get("files", {}).items()
            if not (path / name).is_file() or (path / name).stat().st_size != size]  # fmt: skip


def complete_checkpoints(directory: Path) -> list[tuple[int, Path, dict]]:
    """(step, path, run.json) of every complete checkpoint in `directory`, newest first. One that has lost a
    file since it was written is left out, with a warning."""
    found = []
    for path in directory.glob("step_*"):
        if re.fullmatch(r"step_\d+", path.name) and (path / RUN_FILE).is_file():
            run = json.loads((path / RUN_FILE).read_text())
            lost = lost_files(path, run)
            if lost:
                warnings.warn(f"checkpoint {path} has lost {', '.join(lost)} (missing or cut short) since it was "
                              "written; it is skipped, an earlier complete checkpoint is used", stacklevel=2)  # fmt: skip
                continue
            found.append((run["step"], path, run))
    return sorted(found, key=lambda item: item[0], reverse=True)


def find_checkpoint(resume: str, directory: Path, recipe: dict) -> tuple[Path, dict]:
    """(path, run.json) of the checkpoint to resume: `latest` is the newest complete checkpoint written with
    this recipe; a path must be a complete checkpoint of this recipe. Anything else is an error saying why."""
    expected = identity_hash(recipe)
    if resume == "latest":
        checkpoints = complete_checkpoints(directory)
        ours = [(path, run) for _, path, run in checkpoints if run["recipe_hash"] == expected]
        if not ours:
            others = f" ({len(checkpoints)} from other recipes: {checkpoints[0][1]} and older)" if checkpoints else ""
            raise FileNotFoundError(
                f"No complete checkpoint of this recipe in {directory}{others}; resume with the recipe that wrote "
                "them, name one with training.resume_from_checkpoint=PATH, or start afresh with "
                "overwrite_output_dir=true."
            )
        return ours[0]
    path = Path(resume)
    if not (path / RUN_FILE).is_file():
        state = "does not exist" if not path.exists() else f"is not a complete checkpoint (no {RUN_FILE})"
        raise FileNotFoundError(f"training.resume_from_checkpoint: {path} {state}")
    run = json.loads((path / RUN_FILE).read_text())
    lost = lost_files(path, run)
    if lost:
        raise FileNotFoundError(
            f"training.resume_from_checkpoint: {path} has lost {', '.join(lost)} (missing or cut short) since it "
            "was written; name an earlier checkpoint, or resume from `latest`, which skips damaged ones"
        )
    if run["recipe_hash"] != expected:
        differences = [
            f"{key}={run['recipe'].get(key)!r} there, {recipe.get(key)!r} here"
            for key in sorted(set(run["recipe"]) | set(recipe))
            if run["recipe"].get(key) != recipe.get(key)
        ]
        raise ValueError(
            f"Checkpoint {path} was written by another recipe ({'; '.join(differences)}). Resume it with the "
            f"recipe that wrote it; only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume."
        )
    return path, run


def stop_on_non_finite_loss(accelerator, checkpoints: Path, identity: dict, loss: float, step: int, width: int):
    """Stop, naming the newest checkpoint whose weights gave a finite loss. The checkpoint written just before
    this step holds the weights that gave `loss`: it is renamed so that `latest` skips it."""
    diverged = checkpoints / f"step_{step}"
    if accelerator.is_main_process and diverged.exists():
        diverged.rename(checkpoints / f"non-finite-loss-step_{step}")
    accelerator.wait_for_everyone()
    good = [path for _, path, run in complete_checkpoints(checkpoints) if run["recipe_hash"] == identity_hash(identity)]
    kept = f"the newest checkpoint with a finite loss is {good[0]}" if good else "no checkpoint with a finite loss"
    raise FloatingPointError(
        f"Loss became {loss} at step {step} (width {width}); stopping: {kept}. Lower training.learning_rate "
        "(a resumed run applies the new rate) or set training.max_grad_norm, then resume with "
        "training.resume_from_checkpoint=latest."
    )


def set_learning_rate(scheduler, learning_rate: float):
    """Make `learning_rate` the schedule's peak from the current step on (a checkpoint restores the old one)."""
    schedule = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    schedule.base_lrs = [learning_rate] * len(schedule.base_lrs)
    for group, factor in zip(schedule.optimizer.param_groups, schedule.lr_lambdas):
        group["initial_lr"], group["lr"] = learning_rate, learning_rate * factor(schedule.last_epoch)


def evaluate_widths(hyper: NeuMetaModel, dataset, widths, split: str) -> dict:
    """The task's main metric (accuracy, mean IoU) of the sampled networks at `widths`."""
    hyper.eval()
    prefix = "" if split == "test" else f"{split}_"
    metric = task_for(hyper.spec.family_config).main_metric
    return {f"{prefix}{metric}/width_{w}": evaluate_width(hyper, dataset, w, num_samples=1)[metric] for w in widths}


@dataclass
class Run:
    """What a run's stages share: the recipe (with its derived settings filled in), the accelerator, the run's
    identity (what its checkpoints must match), the checkpoint to resume and the data splits."""

    config: TrainConfig
    accelerator: Accelerator
    identity: dict
    resume_from: tuple[Path, dict] | None
    train_set: datasets.Dataset
    validation_set: datasets.Dataset | None
    test_set: datasets.Dataset
    info: DataInfo

    @property
    def output(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    @property
    def watched(self) -> tuple[datasets.Dataset, str]:
        """(dataset, split name) that evaluation during training reads (`watched_split`)."""
        return watched_split(self.validation_set, self.test_set)


@dataclass
class Training:
    """The hypernetwork's training objects: the prepared model, optimizer and schedule, the network it distils
    from, the objective, the EMA of the INR, the widths and the step it starts at."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    teacher: torch.nn.Module
    objective: Objective
    ema: EMA
    widths: list[int]
    eval_widths: list[int]
    start_step: int = 0


def set_up(config: TrainConfig) -> Run:
    """The accelerator and trackers, the output directory claimed, the checkpoint to resume found, the data
    loaded and the whole recipe checked against it: everything that can fail before training, failed."""
    config = copy.deepcopy(config)  # derived settings are filled in later; the caller's recipe stays as given
    settings = config.training
    output = Path(config.output_dir)
    trackers = [JSONLTracker("neumeta", str(output))]
    with contextlib.suppress(ImportError):
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output)),
    )
    make_reproducible(config.seed)
    identity = run_identity(config)  # before the base network's place is filled in below
    resuming = settings.resume_from_checkpoint is not None
    earlier = claim_output_dir(config, accelerator, resuming)
    checkpoints = output / "checkpoints"
    resume_from = find_checkpoint(settings.resume_from_checkpoint, checkpoints, identity) if resuming else None
    adopt_base_preprocessing(config)
    train_set, validation_set, test_set, info = load_splits(config.data)
    if resuming and config.base.pretrained is None and (output / "base" / "config.json").exists():
        config.base.pretrained = str(output / "base")  # a resumed run reuses the base it trained
    if resuming and config.nested.enabled and not config.nested.pretrained and (output / "nested" / AFFINE_FILE).exists():
        config.nested.pretrained = str(output / "nested")  # and its nested stage
    check_against_data(config, train_set, validation_set, test_set, info, accelerator)
    replace_earlier_run(earlier, accelerator)  # only now: every check that can fail before training has passed
    return Run(config, accelerator, identity, resume_from, train_set, validation_set, test_set, info)


def base_stage(run: Run) -> PreTrainedModel:
    """(1) The base network -- loaded from base.pretrained, else trained -- saved to OUTPUT_DIR/base."""
    base = build_base_network(run.config, run.train_set, run.info, run.accelerator)
    metric = task_for(base.config, type(base)).main_metric
    watched, split = run.watched
    run.accelerator.print(
        f"Base network: width {network_width(base.config)}, {split} {metric} {evaluate_score(base, watched):.4f}"
    )
    if run.accelerator.is_main_process:
        save_network(base, run.output / "base")
    return base


def nested_stage(run: Run, base: PreTrainedModel) -> NestedNetwork | None:
    """(2) With `nested.enabled`, the nested stage -- loaded from nested.pretrained, else trained from the base --
    saved to OUTPUT_DIR/nested; None without it."""
    if not run.config.nested.enabled:
        return None
    nested = build_nested_network(run.config, base, run.train_set, run.accelerator)
    given = run.config.nested.pretrained
    if run.accelerator.is_main_process and not (given and Path(given).resolve() == (run.output / "nested").resolve()):
        nested.save_pretrained(run.output / "nested")
    return nested


def hypernetwork_stage(run: Run, base: PreTrainedModel, nested: NestedNetwork | None) -> NeuMetaModel:
    """(3) The hypernetwork around the base network (BatchNorm folded, channels permuted), or around the nested
    stage's shared network (unpermuted, anchored on each width's first channels; with
    hypernetwork.config.width_affine, the stage's per-width scales and shifts with generated corrections)."""
    settings = run.config.hypernetwork
    hyper = NeuMetaModel.from_base_model(
        base if nested is None else nested.network,
        width_range=settings.width_range,
        morph=settings.morph,
        smooth=settings.smooth,
        train_widths=settings.train_widths,
        preprocessor=getattr(base, "preprocessor", None),
        **settings.config,  # with nested.enabled: anchor_channels first, width_affine (recipe defaults)
    )
    if hyper.config.width_affine:
        hyper.adopt_width_affine(nested)
    return hyper


def prepare_training(run: Run, hyper: NeuMetaModel, base: PreTrainedModel) -> Training:
    """(3a) Optimizer, schedule, teacher, objective and EMA, prepared by the accelerator; the trackers started;
    the training state restored when the run resumes."""
    settings, accelerator = run.config.training, run.accelerator
    widths = sorted(hyper.config.train_widths)
    low, high = hyper.config.width_range
    eval_widths = settings.eval_widths or sorted({low, (low + high) // 2, high})
    if settings.epochs:
        per_step = settings.batch_size * accelerator.num_processes * settings.gradient_accumulation_steps
        settings.max_steps = math.ceil(settings.epochs * len(run.train_set) / per_step)
    if not settings.train_corrections:  # the pipeline's INR weight corrections stay at their start, zero
        hyper.inr.requires_grad_(False).width_affine.requires_grad_(True)
    trained = [p for p in hyper.inr.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: schedule_factor(
            step, settings.max_steps, settings.scheduler, settings.milestones, settings.gamma, settings.warmup_steps
        ),
    )
    model, optimizer, scheduler = accelerator.prepare(hyper, optimizer, scheduler)
    hyper = accelerator.unwrap_model(model)
    teacher = base  # distilled from, unless the recipe names another network
    if settings.teacher:
        teacher = load_trained_network("training.teacher", settings.teacher, run.config.base.family)
    training = Training(
        model, optimizer, scheduler, teacher.to(accelerator.device).eval(), Objective.from_settings(settings),
        EMA(hyper.inr, hyper.config.ema_decay), widths, eval_widths,
    )  # fmt: skip
    run_facts = {"num_processes": accelerator.num_processes, "device": str(accelerator.device)}
    flat = flatten(config_to_dict(run.config))
    tracked = {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}
    accelerator.init_trackers("neumeta", config=tracked | run_facts)
    accelerator.print(f"Training on {accelerator.num_processes} process(es), device {accelerator.device}")
    if run.resume_from:
        resume(run, training)
    return training


def resume(run: Run, training: Training):
    """(3b) The checkpoint's training state and EMA loaded; a changed learning rate applied from here on."""
    settings, accelerator = run.config.training, run.accelerator
    path, checkpoint_run = run.resume_from
    accelerator.load_state(str(path))
    training.ema.load(path / "ema.safetensors")
    training.start_step = checkpoint_run["step"]
    accelerator.print(f"Resumed from {path} at step {training.start_step}")
    if checkpoint_run["learning_rate"] != settings.learning_rate:
        set_learning_rate(training.scheduler, settings.learning_rate)
        accelerator.print(
            f"training.learning_rate is {settings.learning_rate} (the checkpoint's run had "
            f"{checkpoint_run['learning_rate']}): the schedule continues from step {training.start_step} at the "
            "new rate"
        )


def training_loop(run: Run, training: Training, hyper: NeuMetaModel, num_labels: int):
    """(3c) One width per step, evaluation on the watched split every `eval_every` steps and checkpoints every
    `checkpoint_every`; a non-finite loss stops the run."""
    config, settings, accelerator = run.config, run.config.training, run.accelerator
    model, widths, accumulation = training.model, training.widths, settings.gradient_accumulation_steps
    sampler = StepBatches(
        len(run.train_set), settings.batch_size, config.seed, training.start_step * accumulation,
        settings.max_steps * accumulation, accelerator.process_index, accelerator.num_processes,
    )  # fmt: skip
    # Each sampled index list is fetched as one slice (`batch_size=None`): datasets formats the batch at once,
    # instead of splitting it into rows for the default collate to stack again.
    loader = torch.utils.data.DataLoader(run.train_set, sampler=sampler, batch_size=None)
    model.train()
    started = time.time()
    # What every checkpoint of this run says about it (run.json).
    checkpoint_run = {
        "recipe_hash": identity_hash(run.identity), "learning_rate": settings.learning_rate, "recipe": run.identity
    }  # fmt: skip
    progress = progress_bar(
        total=settings.max_steps, initial=training.start_step, desc="hypernetwork",
        disable=not accelerator.is_main_process,
    )  # fmt: skip
    for micro_step, batch in enumerate(loader, start=training.start_step * accumulation):
        step = micro_step // accumulation
        width = step_width(config, widths, step)
        loss, terms = training_step(run, training, hyper, batch, micro_step, width, num_labels)
        if not accelerator.sync_gradients:
            continue
        training.ema.update(hyper.inr)
        done = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", width=width, refresh=False)
        accelerator.log(
            {"loss": loss.item(), "width": width, "lr": training.scheduler.get_last_lr()[0]}
            | {k: v.item() for k, v in terms.items()},
            step=done,
        )
        if done % settings.eval_every == 0 or done == settings.max_steps:
            watched, split = run.watched
            with training.ema.applied(hyper.inr):
                accuracies = evaluate_widths(hyper, watched, training.eval_widths, split)
            model.train()
            accelerator.log(accuracies, step=done)
            scores = ", ".join(f"{name.split('_')[-1]}: {value:.4f}" for name, value in accuracies.items())
            progress.write(f"step {done} ({split}): {scores}")
        if done % settings.checkpoint_every == 0 or done == settings.max_steps:
            save_checkpoint(accelerator, training.ema, run.checkpoints, done, checkpoint_run)
    progress.close()
    accelerator.wait_for_everyone()
    accelerator.print(f"Trained {settings.max_steps - training.start_step} steps in {time.time() - started:.1f}s")


def training_step(run: Run, training: Training, hyper, batch, micro_step: int, width: int, num_labels: int):
    """One forward-backward pass (an optimizer step when the gradients sync); returns (loss, its terms)."""
    settings, accelerator = run.config.training, run.accelerator
    inputs = batch[task_for(hyper.spec.family_config).input_name].to(accelerator.device)
    targets = labels = batch["labels"].to(accelerator.device)
    step_seed = run.config.seed * 7919 + micro_step
    noise_generator = torch.Generator(accelerator.device).manual_seed(step_seed)
    if settings.mixup_alpha:  # each process mixes its own shard of the batch: a draw of its own
        seed = step_seed * accelerator.num_processes + accelerator.process_index
        inputs, targets = mixup(inputs, labels, num_labels, settings.mixup_alpha, seed)
    with accelerator.accumulate(training.model):
        loss, terms = training.objective.step_loss(
            training.model, hyper, training.teacher, inputs, targets, width, training.widths[0], noise_generator
        )
        finite = accelerator.gather(torch.isfinite(loss.detach()).reshape(1).float()).min() > 0
        if not finite:
            step = micro_step // settings.gradient_accumulation_steps
            stop_on_non_finite_loss(accelerator, run.checkpoints, run.identity, loss.item(), step, width)
        accelerator.backward(loss)
        if accelerator.sync_gradients and settings.max_grad_norm:
            accelerator.clip_grad_norm_(hyper.inr.parameters(), settings.max_grad_norm)
        training.optimizer.step()
        training.scheduler.step()
        training.optimizer.zero_grad()
    return loss, terms


def export(run: Run, training: Training, hyper: NeuMetaModel, base: PreTrainedModel) -> dict:
    """(4) On the main process: the EMA hypernetwork to OUTPUT_DIR/hypernetwork with its card and pictures, the
    width sweep on the test split beside the base's score there (sweep.json, sweep.md, sweep.png) and one sampled
    network with its card. Returns the sweep result."""
    config, settings, output, info = run.config, run.config.training, run.output, run.info
    base_score = evaluate_score(base, run.test_set)
    training.ema.copy_to(hyper.inr)
    hyper.eval()
    hyper.config.trained_steps = settings.max_steps
    hyper.save_pretrained(output / "hypernetwork")
    result = sweep(
        hyper, run.test_set, config.sweep.widths, num_samples=config.sweep.num_samples, base_score=base_score,
        dataset_name=info.name, batch_size=config.sweep.batch_size,
    )  # fmt: skip
    write_sweep(result, output)
    shutil.copy(output / "sweep.png", output / "hypernetwork" / "sweep.png")
    pictures = write_pictures(hyper, run.test_set, output / "hypernetwork")
    recipe = (
        f"{settings.max_steps} steps, batch {settings.batch_size}, AdamW lr {settings.learning_rate} "
        f"({settings.scheduler}), distillation weight {settings.distillation_weight} "
        f"(temperature {settings.distillation_temperature}), mixup alpha {settings.mixup_alpha}"
    )
    hypernetwork_card(
        hyper, sweep=result, training={"dataset": info.name, "recipe": recipe}, sweep_plot="sweep.png",
        pictures=pictures,
    ).save(output / "hypernetwork" / "README.md")  # fmt: skip
    low, high = hyper.config.width_range
    save_width = config.sweep.save_width or (low + high) // 2
    network = hyper.sample_model(save_width, num_samples=config.sweep.num_samples)
    task = task_for(hyper.spec.family_config)
    measured = next((r for r in result["results"] if r["width"] == save_width), None)
    metrics = {name: measured[name] for name in task.metrics} if measured else None
    card = sampled_network_card(
        network, hypernetwork=str(output / "hypernetwork"), metrics=metrics, dataset=info.name, pictures=pictures,
        license=hyper.config.license,
    )
    attach_card(network, card, {name: output / "hypernetwork" / name for name in pictures})
    network.save_pretrained(output / f"sampled-width-{save_width}")
    worst = worst_result(result)
    run.accelerator.print(
        f"Sweep over {len(result['results'])} widths: worst {task.main_metric} {worst[task.main_metric]:.4f} at "
        f"width {worst['width']} (base {base_score:.4f}).\nResults in {output}: hypernetwork/, base/, "
        f"sampled-width-{save_width}/, sweep.json, sweep.md, sweep.png, log.jsonl"
    )
    return result


def train(config: TrainConfig, run: Run | None = None) -> dict:
    """Run the whole recipe, stage by stage (from `run`, its `set_up`, when given); returns the sweep result (on
    the main process)."""
    run = run or set_up(config)
    base = base_stage(run)
    hyper = hypernetwork_stage(run, base, nested_stage(run, base))
    training = prepare_training(run, hyper, base)
    hyper = run.accelerator.unwrap_model(training.model)
    training_loop(run, training, hyper, base.config.num_labels)
    result = export(run, training, hyper, base) if run.accelerator.is_main_process else {}
    run.accelerator.end_training()
    release_output_dir(run.output)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see training/configs/); omitted: the built-in defaults")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. training.max_steps=200"
    )
    args = parser.parse_args(argv)
    try:  # a bad recipe, or one the data refuses: say what is wrong, exit 2, no traceback
        config = load_config(args.config, args.overrides)
        check_base_family(config)
        run = set_up(config)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    train(config, run)


if __name__ == "__main__":
    main()
