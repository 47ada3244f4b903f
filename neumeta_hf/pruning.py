"""Structured L1 pruning of a family network to a smaller width: the baseline NeuMeta is measured against.

Channels are chosen per channel group (the same groups NeuMeta morphs and permutes) by the L1 norm of their
filters, as in Li et al., "Pruning Filters for Efficient ConvNets" (2017), and no fine-tuning follows.
"""

import torch

from .families import NeuMetaFamilyModel


@torch.no_grad()
def prune_l1(model: NeuMetaFamilyModel, width: int) -> NeuMetaFamilyModel:
    """The width-`width` network made of `model`'s channels with the largest filter L1 norms, in their original
    order. Every scaling channel group keeps as many channels as a width-`width` network has there; the
    weights are copied, not retrained."""
    if width > model.config.width:
        raise ValueError(f"Pruning can only shrink: width {width} > the network's width {model.config.width}")
    pruned = type(model)(model.config.at_width(width)).to(model.device, model.dtype)
    target_shapes = {name: tensor.shape for name, tensor in pruned.state_dict().items()}
    state = model.state_dict()
    kept = {}  # (tensor name, axis) -> channel indices to keep
    for group in model.channel_groups():
        if not group.scales:
            continue
        name, axis = group.members[0]
        count = target_shapes[name][axis]
        # A channel's filter: the rows of the multi-dimensional weights that produce it.
        filters = [state[n] for n, a in group.members if a == 0 and state[n].dim() > 1]
        importance = sum(weight.abs().flatten(1).sum(1) for weight in filters)
        indices = importance.topk(count).indices.sort().values
        kept.update({member: indices for member in group.members})
    pruned_state = {}
    for name, tensor in state.items():
        for axis in range(min(2, tensor.dim())):
            if (name, axis) in kept:
                tensor = tensor.index_select(axis, kept[(name, axis)])
        pruned_state[name] = tensor
    pruned.load_state_dict(pruned_state)
    return pruned.eval()
