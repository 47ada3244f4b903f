"""The hypernetwork's training objective, in one place: `training/train.py`, the quality benchmark and the
training-speed benchmark all step with it.

For a batch and a width w, the width-w network is generated and run, and its loss is

    task loss (the target's task: cross-entropy per image, pixel or token, `neumeta_hf.tasks`)
    + l2_weight x sum of the generated tensors' L2 norms
    + reconstruction_weight x magnitude-weighted MSE to the permuted base tensors     (w = full width)
    + distillation_weight x KL(teacher || generated) of the softened class distributions  (w < full width)

The teacher is the base network unless the recipe names another (`training.teacher`). With reconstruction off
(`reconstruction_weight` 0) the full width is free to move away from the base: it is then distilled like every
other width, which is how a hypernetwork anchored on a weaker base (a slimmable network) learns from a stronger one.

With `sandwich`, every step also trains the smallest width and the full width (the sandwich rule of slimmable
networks): the full width by reconstruction, which needs no forward pass, or with reconstruction off by a forward
pass and distillation.
"""

from dataclasses import dataclass, fields

import torch

from .targets import task_for


@dataclass(frozen=True)
class Objective:
    l2_weight: float = 1e-4
    reconstruction_weight: float = 1.0
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0
    sandwich: bool = False

    @classmethod
    def from_settings(cls, settings) -> "Objective":
        """The objective from any settings object with these fields (a recipe's `training` section)."""
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})

    def step_loss(self, model, hyper, teacher, inputs, targets, width: int, smallest_width: int, generator):
        """(loss, detached terms) of one training step on a batch of `inputs` (the task's `input_name`: pixel
        values or token ids) at `width`, plus the sandwich rule's smallest and full widths when `sandwich` is set. `model` runs the batch (the hypernetwork, or its distributed wrapper);
        `hyper` is the hypernetwork itself; `teacher` the network distilled from (the base, or the recipe's
        `training.teacher`)."""
        task = task_for(hyper.spec.family_config)
        full_width = hyper.config.full_width
        shared = task.shared_inputs(hyper.spec.family_config, inputs, generator)
        teacher_output = None
        if self.distillation_weight and (self.distills(width, full_width) or self.sandwich):
            with torch.no_grad():
                teacher_output = teacher(inputs, **shared)
        batch = (inputs, targets, teacher_output, shared)
        loss, terms = self.width_loss(model, hyper, *batch, width, generator)
        if not self.sandwich:
            return loss, terms
        if width != smallest_width:
            smallest_loss, _ = self.width_loss(model, hyper, *batch, smallest_width, generator)
            loss = loss + smallest_loss
            terms["smallest_width_loss"] = smallest_loss.detach()
        if width != full_width and self.reconstruction_weight:
            reconstruction = reconstruction_loss(hyper.generate(full_width), hyper.reconstruction_targets())
            loss = loss + self.reconstruction_weight * reconstruction
            terms["reconstruction_loss"] = reconstruction.detach()
        elif width != full_width:
            full_loss, _ = self.width_loss(model, hyper, *batch, full_width, generator)
            loss = loss + full_loss
            terms["full_width_loss"] = full_loss.detach()
        return loss, terms

    def distills(self, width: int, full_width: int) -> bool:
        """Whether the width-`width` network is distilled: every width but a reconstructed full width."""
        return bool(self.distillation_weight) and (width != full_width or not self.reconstruction_weight)

    def width_loss(self, model, hyper, inputs, targets, teacher_output, shared: dict, width: int, generator):
        """(loss, detached terms) of the width-`width` network generated for this batch: task loss (against
        `targets`: the labels, or class probabilities) + L2 of the generated tensors + reconstruction at full
        width, and + distillation towards `teacher_output` (the teacher's, run with the same `shared` inputs)
        where `distills`."""
        task = task_for(hyper.spec.family_config)
        full_width = hyper.config.full_width
        # The full width is fitted exactly (reconstruction loss), so it is generated without noise.
        noise = 0.0 if width == full_width else None
        output = model(inputs, width=width, noise=noise, generator=generator, **shared)
        task_loss = task.loss(output.network_output, targets)
        terms = {"task_loss": task_loss.detach()}
        loss = task_loss + self.l2_weight * sum(tensor.norm() for tensor in output.weights.values())
        if width == full_width and self.reconstruction_weight:
            reconstruction = reconstruction_loss(output.weights, hyper.reconstruction_targets())
            loss = loss + self.reconstruction_weight * reconstruction
            terms["reconstruction_loss"] = reconstruction.detach()
        if self.distills(width, full_width):
            distillation = task.distillation(output.network_output, teacher_output, self.distillation_temperature)
            loss = loss + self.distillation_weight * distillation
            terms["distillation_loss"] = distillation.detach()
        return loss, terms


def reconstruction_loss(weights: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Magnitude-weighted MSE to the permuted base tensors, each normalised by its own scale."""
    total = 0.0
    for name, target in targets.items():
        magnitude = target.abs()
        error = (magnitude * (weights[name] - target) ** 2).mean()
        total = total + error / (magnitude.mean() * target.pow(2).mean()).clamp_min(1e-12)
    return total
