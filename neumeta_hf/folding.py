"""Folding BatchNorm into the preceding convolution, so that a network's tensors are plain weights and biases."""

import copy

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def fold_batch_norm(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` with every conv+BatchNorm pair replaced by one biased conv computing the same function
    in eval mode (config `norm="none"`). Networks without BatchNorm (stock transformers models included) come
    back as an unchanged copy."""
    config = model.config
    if getattr(config, "norm", None) != "batch":
        return copy.deepcopy(model).eval()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name in [n for n in state if n.endswith(".norm.running_mean")]:
        prefix = name.removesuffix(".norm.running_mean")
        mean = state.pop(f"{prefix}.norm.running_mean")
        var = state.pop(f"{prefix}.norm.running_var")
        gamma = state.pop(f"{prefix}.norm.weight")
        beta = state.pop(f"{prefix}.norm.bias")
        eps = model.get_submodule(f"{prefix}.norm").eps
        state.pop(f"{prefix}.norm.num_batches_tracked", None)
        scale = gamma / torch.sqrt(var + eps)
        weight = state[f"{prefix}.conv.weight"]
        state[f"{prefix}.conv.weight"] = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        state[f"{prefix}.conv.bias"] = beta - mean * scale
    config = type(config).from_dict({**config.to_dict(), "norm": "none"})
    folded = type(model)(config)
    folded.load_state_dict(state, strict=True)
    return folded.eval()
