"""The implicit neural representation: coordinate -> weight values.

NeRF-style Fourier features of the coordinate feed a residual ReLU MLP. With per-tensor heads every generated
tensor has its own MLP; all heads run together in grouped matrix multiplies over the rows of their tensors
(`torch.nn.functional.grouped_mm`), so the cost is that of the arithmetic, not of a Python loop over heads.
With a shared trunk one MLP serves every tensor and a learned per-tensor embedding (the first layer's bias)
tells them apart.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierFeatures(nn.Module):
    """x -> [x, sin(2^f pi x), cos(2^f pi x)] for f < num_frequencies, per input dimension."""

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.register_buffer("frequencies", self.values(num_frequencies), persistent=False)

    @staticmethod
    def values(num_frequencies: int) -> torch.Tensor:
        return math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32)

    def output_size(self, in_features: int) -> int:
        return in_features * (1 + 2 * len(self.frequencies))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x.unsqueeze(-1) * self.frequencies).flatten(-2)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class NeuMetaINR(nn.Module):
    """Maps coordinate rows (see `morph.Coordinates.inputs`) to `max(kernel_sizes)` values per row (padded:
    tensor `t` uses the first `kernel_sizes[t]`).

    The first two inputs (channel positions) get `num_frequencies` Fourier frequencies; the other three
    (tensor position and the two relative sizes) get `size_frequencies`, so that a small value keeps the INR
    smooth across widths.
    """

    def __init__(
        self,
        kernel_sizes: tuple[int, ...],
        hidden_size: int,
        num_layers: int,
        num_frequencies: int,
        size_frequencies: int,
        residual_scale: float,
        shared_trunk: bool,
    ):
        super().__init__()
        num_tensors = len(kernel_sizes)
        num_heads = 1 if shared_trunk else num_tensors
        # grouped_mm wants 16-byte aligned rows: pad feature and output sizes to multiples of 8 (bf16-safe).
        out_features = _aligned(max(kernel_sizes))
        self.kernel_sizes = kernel_sizes
        self.position_features = FourierFeatures(num_frequencies)
        self.context_features = FourierFeatures(size_frequencies)
        self.num_features = self.position_features.output_size(2) + self.context_features.output_size(3)
        in_features = _aligned(self.num_features)
        # Weights are per head; biases of the first and last layer are per tensor (the shared trunk's embedding).
        self.input_weight = nn.Parameter(torch.empty(num_heads, in_features, hidden_size))
        self.input_bias = nn.Parameter(torch.empty(num_tensors, hidden_size))
        self.hidden_weight = nn.Parameter(torch.empty(num_layers, num_heads, hidden_size, hidden_size))
        self.hidden_bias = nn.Parameter(torch.empty(num_layers, num_heads, hidden_size))
        self.residual_scale = nn.Parameter(torch.full((num_layers, num_heads), float(residual_scale)))
        self.output_weight = nn.Parameter(torch.empty(num_heads, hidden_size, out_features))
        self.output_bias = nn.Parameter(torch.empty(num_tensors, out_features))

    @property
    def shared_trunk(self) -> bool:
        return self.input_weight.shape[0] == 1

    def forward(self, inputs: torch.Tensor, row_counts: tuple[int, ...]) -> torch.Tensor:
        """inputs [rows, 5], grouped by tensor with `row_counts` rows each -> [rows, max kernel size]."""
        counts = torch.tensor(row_counts, device=inputs.device)
        padding = torch.zeros(inputs.shape[0], self.input_weight.shape[1] - self.num_features, device=inputs.device)
        features = torch.cat(
            [self.position_features(inputs[:, :2]), self.context_features(inputs[:, 2:]), padding], dim=1
        )
        offsets = None if self.shared_trunk else torch.cumsum(counts, 0).to(torch.int32)

        def per_tensor(bias):
            return torch.repeat_interleave(bias, counts, dim=0, output_size=inputs.shape[0])

        def per_head(value):
            return value[0] if self.shared_trunk else per_tensor(value)

        hidden = torch.relu(_grouped_linear(features, self.input_weight, offsets) + per_tensor(self.input_bias))
        for layer in range(self.hidden_weight.shape[0]):
            update = _grouped_linear(hidden, self.hidden_weight[layer], offsets)
            update = torch.relu(update + per_head(self.hidden_bias[layer]))
            hidden = hidden + per_head(self.residual_scale[layer].unsqueeze(1)) * update
        return _grouped_linear(hidden, self.output_weight, offsets) + per_tensor(self.output_bias)


def _aligned(size: int) -> int:
    return -(-size // 8) * 8


def _grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """x [rows, in] @ weight[head] for the head owning each row; `offsets` ends each head's rows."""
    if offsets is None:
        return x @ weight[0]
    out = F.grouped_mm(x, weight, offs=offsets)
    if out.requires_grad:
        # grouped_mm's backward rejects expanded (stride 0) gradients, such as `.sum()` produces.
        out.register_hook(torch.Tensor.contiguous)
    return out
