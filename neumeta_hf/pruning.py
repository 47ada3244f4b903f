"""Smaller networks cut out of a family network: the baselines NeuMeta is measured against.

* `prune_l1`: structured L1 pruning. Channels are chosen per channel group (the same groups NeuMeta morphs and
  permutes) by the L1 norm of their filters, as in Li et al., "Pruning Filters for Efficient ConvNets" (2017);
  no fine-tuning follows here (`training/train_base.py` fine-tunes with `base.prune_from`).
* `first_channels` / `nested_weights`: the width-w network as the first w channels of every scaling group, the
  sub-network of a universally slimmable network (Yu & Huang, "Universally Slimmable Networks", ICCV 2019), its
  BatchNorm statistics recomputed from a few batches (`calibrate_batch_norm`, their "BN calibration").
"""

from collections.abc import Iterable, Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import PreTrainedModel

from .morph import axis_layout, leading_channels
from .targets import channel_groups, config_at_width, network_width, target


@torch.no_grad()
def prune_l1(model: PreTrainedModel, width: int) -> PreTrainedModel:
    """The width-`width` network made of `model`'s channels with the largest filter L1 norms, in their original
    order. Every scaling channel group keeps as many channels as a width-`width` network has there; the
    weights are copied, not retrained. For a stock transformers model, the channels are the feed-forward hidden
    units and a unit's filter is its input weights (the first tensor of the model type's width rule)."""
    full_width = network_width(model.config)
    if width > full_width:
        raise ValueError(f"Pruning can only shrink: width {width} > the network's width {full_width}")
    pruned = type(model)(config_at_width(model.config, width)).to(model.device, model.dtype)
    target_shapes = {name: tensor.shape for name, tensor in pruned.state_dict().items()}
    state = model.state_dict()
    pruned_sizes = {g.name: g.members[0].length(target_shapes[g.members[0].tensor]) for g in channel_groups(pruned)}
    kept = {}  # (tensor name, axis) -> [(start of the group's slice, indices kept in it)]
    for group in channel_groups(model):
        count = pruned_sizes[group.name]
        importance = sum(weight.abs().flatten(1).sum(1) for weight in target(model.config.model_type).filters(model, group, state))
        indices = importance.topk(count).indices.sort().values
        for member in group.members:
            kept.setdefault((member.tensor, member.axis), []).append((member.start, indices))
    pruned_state = {}
    for name, tensor in state.items():
        for axis in range(min(2, tensor.dim())):
            if (name, axis) in kept:
                indices = torch.cat([start + chosen for start, chosen in sorted(kept[(name, axis)], key=lambda k: k[0])])
                tensor = tensor.index_select(axis, indices)
        pruned_state[name] = tensor
    pruned.load_state_dict(pruned_state)
    return pruned.eval()


def nested_weights(
    model: PreTrainedModel, narrower: PreTrainedModel, tensors: dict | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of `model` cut to its first channels in the shape `narrower` (a network of the same family at
    a smaller width, on any device, the meta device included) has: views, differentiable, for training a slimmable
    network through `torch.func.functional_call` on `narrower`. `tensors`: cut these instead of `model`'s own of
    the same names and shapes."""
    width, full_width = network_width(narrower.config), network_width(model.config)
    if width > full_width:
        raise ValueError(f"A nested network can only be narrower: width {width} > the network's width {full_width}")
    # Tied tensors (GPT-2's output layer is its embedding) under every name: `narrower.state_dict()` lists them all.
    state = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    state |= tensors or {}
    wide_layout = axis_layout(channel_groups(model), state)
    narrow_state = narrower.state_dict()
    narrow_layout = axis_layout(channel_groups(narrower), narrow_state)

    def segments(name, axis):  # (sizes in model, sizes in narrower) of an axis that concatenates groups
        spans = wide_layout.get((name, axis))
        if spans is None or len(spans) == 1:
            return None
        return tuple(b - a for _, a, b in spans), tuple(b - a for _, a, b in narrow_layout[(name, axis)])

    cut = {}  # id of a shared tensor -> its cut: tied names get the same object, as functional_call requires
    for name, tensor in narrow_state.items():
        if id(state[name]) not in cut:
            cut[id(state[name])] = leading_channels(state[name], tensor.shape, (segments(name, 0), segments(name, 1)))
    return {name: cut[id(state[name])] for name in narrow_state}


def mixed_layers(per_width: dict[int, dict[str, torch.Tensor]], layer_of: dict[str, int], widths: Sequence[int]):
    """The tensors of a network whose layer l has width `widths[l]` (MatFormer's mix'n'match), from each width's
    own tensors (`per_width`, every width in `widths`) and the layer each width-dependent tensor belongs to
    (`layer_of`), in the shapes of the widest layer's network: a layer's tensors are its width's, zero-padded --
    hidden units with zero weights in and out compute nothing -- and the others are the widest's (they do not
    depend on the width; tied ones stay one object). Differentiable."""
    widest = per_width[max(widths)]
    mixed = {}
    for name, tensor in widest.items():
        source = tensor if name not in layer_of else per_width[widths[layer_of[name]]][name]
        padding = [pad for size, full in zip(source.shape[::-1], tensor.shape[::-1]) for pad in (0, full - size)]
        mixed[name] = torch.nn.functional.pad(source, padding) if any(padding) else source
    return mixed


def unlisted_buffers(model: PreTrainedModel, narrower: PreTrainedModel) -> dict[str, torch.Tensor]:
    """`model`'s buffers that `narrower.state_dict()` leaves out -- non-persistent ones, which no width changes
    (Llama's rotary frequencies) -- for a `functional_call` on a `narrower` built on the meta device, which lacks
    their values."""
    listed = set(narrower.state_dict())
    return {name: buffer for name, buffer in model.named_buffers() if name not in listed}


@torch.no_grad()
def first_channels(model: PreTrainedModel, width: int, calibration: Iterable[torch.Tensor] | None = None) -> PreTrainedModel:
    """The standalone width-`width` network made of `model`'s first channels (a slimmable network's member, or a
    MatFormer sub-model of a stock transformers model). A network with BatchNorm needs `calibration`, batches of
    inputs from which each width's statistics are computed (`calibrate_batch_norm`): the full width's running
    statistics are wrong for every other width (given, they are recomputed at the full width too)."""
    nested = type(model)(config_at_width(model.config, width)).to(model.device, model.dtype)
    nested.load_state_dict({name: tensor.clone() for name, tensor in nested_weights(model, nested).items()})
    if has_batch_norm(model):
        if calibration is not None:
            calibrate_batch_norm(nested, calibration)
        elif width != network_width(model.config):
            raise ValueError(
                f"{model.config.model_type} has BatchNorm, whose statistics differ per width: pass calibration= "
                f"batches of training inputs to recompute them for width {width} (US-Nets), or fold BatchNorm and "
                "train the nested stage, whose per-width scales and shifts need no data"
            )
    return nested.eval()


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, _BatchNorm) for module in model.modules())


def calibration_batches(dataset, input_name: str, batch_size: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """The inputs (column `input_name`) of the first `count` batches of `dataset` shuffled with `seed`: the data
    that `calibrate_batch_norm` computes a width's statistics from."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return [batch[input_name] for batch, _ in zip(loader, range(count))]


@torch.no_grad()
def calibrate_batch_norm(network: torch.nn.Module, batches: Iterable[torch.Tensor]) -> torch.nn.Module:
    """US-Nets' BatchNorm calibration: every BatchNorm's running statistics replaced by their plain average over
    `batches` (inputs, run in training mode without gradients); returns `network` in eval mode."""
    norms = [module for module in network.modules() if isinstance(module, _BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches, not an exponential one
    network.train()
    count = 0
    for inputs in batches:
        network(inputs.to(next(network.parameters()).device))
        count += 1
    if count == 0:
        raise ValueError("calibrate_batch_norm needs at least one batch of inputs")
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return network.eval()
