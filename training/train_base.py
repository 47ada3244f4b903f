"""Train (or load) the full-width base network of a family, report its test accuracy and save it.

    accelerate launch training/train_base.py --config training/configs/digits_mlp.yaml [key=value ...]

Writes OUTPUT_DIR/base/ (config, weights, model code and image processor). `training/train.py` runs the same
code first when no trained base network is given.
"""

import argparse
from pathlib import Path

import torch
from accelerate import Accelerator

from neumeta_hf.data import DataInfo, load_splits
from neumeta_hf.evaluation import evaluate_accuracy
from neumeta_hf.families import NeuMetaFamilyModel, family_model_class
from neumeta_hf.progress import progress_bar
from recipe import BaseConfig, TrainConfig, load_config, schedule_factor


def build_base_network(
    config: TrainConfig, train, test, info: DataInfo, accelerator: Accelerator
) -> tuple[NeuMetaFamilyModel, float]:
    """(network, test accuracy): loaded from `base.pretrained`, or trained on `train` with `base.*` settings."""
    model_class = family_model_class(config.base.family)
    if config.base.pretrained:
        model = model_class.from_pretrained(config.base.pretrained)
        if model.config.model_type != config.base.family:
            raise ValueError(
                f"base.pretrained {config.base.pretrained!r} is a {model.config.model_type!r} network, "
                f"but base.family is {config.base.family!r}"
            )
    else:
        family_config = model_class.config_class(**{**info.family_kwargs(), **config.base.family_config})
        torch.manual_seed(config.seed)
        model = train_network(model_class(family_config), train, config.base, accelerator, config.seed)
    model.eval()
    return model, evaluate_accuracy(model, test)


def train_network(model, train, settings: BaseConfig, accelerator: Accelerator, seed: int):
    """Plain supervised training with AdamW and a cosine (or multistep) schedule; returns the unwrapped model."""
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
    progress = progress_bar(range(settings.epochs), desc="base network", unit="epoch", disable=not accelerator.is_main_process)
    for _ in progress:
        for batch in loader:
            loss = model(batch["pixel_values"], labels=batch["labels"]).loss
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model = accelerator.unwrap_model(model)
    # Forget the base network's training objects, so that later checkpoints hold only the hypernetwork's.
    accelerator.free_memory()
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see training/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. base.epochs=5")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    accelerator = Accelerator()
    train, test, info = load_splits(config.data)
    model, accuracy = build_base_network(config, train, test, info, accelerator)
    output = Path(config.output_dir) / "base"
    if accelerator.is_main_process:
        model.save_pretrained(output)
        accelerator.print(f"Base network ({config.base.family}, width {model.config.width}): test accuracy "
                          f"{accuracy:.4f}; saved to {output}")


if __name__ == "__main__":
    main()
