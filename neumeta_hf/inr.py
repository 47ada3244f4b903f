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
    """Maps coordinate rows (see `morph.Coordinates`) to `max(kernel_sizes)` values per row (padded: tensor
    `t` uses the first `kernel_sizes[t]`).

    Channel positions get `num_frequencies` Fourier frequencies; the per-tensor context (tensor position and
    the two relative sizes) gets `size_frequencies`, so that a small value keeps neighbouring widths close. The
    context is the same for every row of a tensor, so its contribution to the first layer is computed once per
    tensor and added like a bias.
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
        affine_sites: int = 0,
    ):
        super().__init__()
        # With `affine_sites` sites (`nested.affine_sites`): a correction of their per-width scales and shifts
        # (`WidthAffineINR`).
        self.width_affine = (
            WidthAffineINR(affine_sites, hidden_size, num_frequencies, size_frequencies) if affine_sites else None
        )
        num_tensors = len(kernel_sizes)
        num_heads = 1 if shared_trunk else num_tensors
        self.kernel_sizes = kernel_sizes
        self.position_features = FourierFeatures(num_frequencies)
        self.context_features = FourierFeatures(size_frequencies)
        self.num_position_features = self.position_features.output_size(2)
        # grouped_mm wants 16-byte aligned rows: pad feature and output sizes to multiples of 8 (bf16-safe).
        position_size = _aligned(self.num_position_features)
        context_size = self.context_features.output_size(3)
        out_features = _aligned(max(kernel_sizes))
        # Weights are per head; biases of the first and last layer are per tensor (the shared trunk's embedding).
        self.position_weight = nn.Parameter(torch.empty(num_heads, position_size, hidden_size))
        self.context_weight = nn.Parameter(torch.empty(num_heads, context_size, hidden_size))
        self.input_bias = nn.Parameter(torch.empty(num_tensors, hidden_size))
        self.hidden_weight = nn.Parameter(torch.empty(num_layers, num_heads, hidden_size, hidden_size))
        self.hidden_bias = nn.Parameter(torch.empty(num_layers, num_heads, hidden_size))
        self.residual_scale = nn.Parameter(torch.full((num_layers, num_heads), float(residual_scale)))
        self.output_weight = nn.Parameter(torch.empty(num_heads, hidden_size, out_features))
        self.output_bias = nn.Parameter(torch.empty(num_tensors, out_features))

    @property
    def shared_trunk(self) -> bool:
        return self.position_weight.shape[0] == 1

    def forward(
        self, positions: torch.Tensor, context: torch.Tensor, row_counts: tuple[int, ...], first_tensor: int = 0
    ) -> torch.Tensor:
        """positions [rows, 2] grouped by tensor (`row_counts` rows each), context [tensors, 3]
        -> [rows, max kernel size].

        The rows may be those of tensors `first_tensor`, `first_tensor + 1`, ... only (a chunk of a larger
        evaluation, possibly cut inside its first and last tensor): `context` and `row_counts` are then those
        tensors', and those tensors' heads and biases are used.
        """
        device = positions.device
        counts = torch.tensor(row_counts, device=device)
        tensors = slice(first_tensor, first_tensor + len(row_counts))
        # The head of each tensor, the heads of the grouped products, and where each head's rows end.
        heads = torch.arange(tensors.start, tensors.stop, device=device)
        heads = torch.zeros_like(heads) if self.shared_trunk else heads
        grouped = slice(None) if self.shared_trunk else tensors
        offsets = None if self.shared_trunk else counts.cumsum(0).to(torch.int32)
        padding = self.position_weight.shape[1] - self.num_position_features
        # Features in the coordinates' precision, then the weights' (a hypernetwork loaded in bf16 runs in bf16).
        dtype = self.position_weight.dtype
        features = torch.nn.functional.pad(self.position_features(positions), (0, padding)).to(dtype)
        per_tensor = torch.einsum("tc,tch->th", self.context_features(context).to(dtype), self.context_weight[heads])
        hidden = _grouped_linear(features, self.position_weight[grouped], offsets)
        _add_per_tensor_(hidden, per_tensor + self.input_bias[tensors], row_counts).relu_()
        for layer in range(self.hidden_weight.shape[0]):
            update = _grouped_linear(hidden, self.hidden_weight[layer, grouped], offsets)
            _add_per_tensor_(update, self.hidden_bias[layer][heads], row_counts).relu_()
            scale = torch.repeat_interleave(self.residual_scale[layer][heads], counts, output_size=len(hidden))
            scale = scale.unsqueeze(1)
            # In place when nothing needs the old activations for a backward pass.
            if torch.is_grad_enabled():
                hidden = torch.addcmul(hidden, update, scale)
            else:
                hidden.addcmul_(update, scale)
        output = _grouped_linear(hidden, self.output_weight[grouped], offsets)
        return _add_per_tensor_(output, self.output_bias[tensors], row_counts)


class WidthAffineINR(nn.Module):
    """(site, channel position, width) -> a correction of that channel's log scale and shift at that width: of
    the per-width parameters of a nested network (`nested.WidthAffine`, a table over the trained
    widths, interpolated between them), so that every width, unseen ones included, gets its own. Fourier features
    of the channel position (its index over the group's full size; `num_frequencies`) and of the width (over the full
    width; `size_frequencies`, few, so that neighbouring widths stay close), plus a learned embedding per site
    (`nested.affine_sites`: a scaling group, or one layer of a residual stream; the parameter keeps its first
    name, `group_embedding`), feed a small residual ReLU MLP. The caller tapers the output to zero at the full
    width."""

    def __init__(self, num_sites: int, hidden_size: int, num_frequencies: int, size_frequencies: int):
        super().__init__()
        self.position_features = FourierFeatures(num_frequencies)
        self.width_features = FourierFeatures(size_frequencies)
        features = self.position_features.output_size(1) + self.width_features.output_size(1)
        self.group_embedding = nn.Parameter(torch.empty(num_sites, hidden_size))
        self.input_weight = nn.Parameter(torch.empty(features, hidden_size))
        self.hidden_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.hidden_bias = nn.Parameter(torch.empty(hidden_size))
        self.output_weight = nn.Parameter(torch.empty(hidden_size, 2))
        self.output_bias = nn.Parameter(torch.empty(2))

    def forward(self, sites: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Per row: its site's index, channel position in [0, 1) and width in (0, 1] -> [rows, 2]: log scale
        and shift corrections. Rows of any sites and widths at once."""
        features = torch.cat([self.position_features(positions[:, None]), self.width_features(widths[:, None])], -1)
        hidden = (features.to(self.input_weight.dtype) @ self.input_weight + self.group_embedding[sites]).relu()
        hidden = hidden + (hidden @ self.hidden_weight + self.hidden_bias).relu()
        return hidden @ self.output_weight + self.output_bias


def _add_per_tensor_(rows: torch.Tensor, values: torch.Tensor, row_counts: tuple[int, ...]) -> torch.Tensor:
    """Add `values[t]` to the rows of tensor `t`, in place (on views, so autograd follows)."""
    start = 0
    for count, value in zip(row_counts, values):
        rows.narrow(0, start, count).add_(value)
        start += count
    return rows


def _aligned(size: int) -> int:
    return -(-size // 8) * 8


def _grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """x [rows, in] @ weight[head] for the head owning each row; `offsets` ends each head's rows."""
    if torch.is_autocast_enabled(x.device.type):
        # grouped_mm is on none of autocast's lists and takes one dtype: cast as autocast casts a matmul.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    if offsets is None:
        return x @ weight[0]
    if x.device.type != "cpu" and x.dtype != torch.bfloat16:
        # grouped_mm on CUDA takes bfloat16 only: one matmul per head's contiguous rows instead.
        counts = torch.diff(offsets, prepend=offsets.new_zeros(1)).tolist()
        return torch.cat([rows @ weight[head] for head, rows in enumerate(x.split(counts))])
    out = F.grouped_mm(x, weight, offs=offsets)
    if out.requires_grad:
        # grouped_mm's backward rejects expanded (stride 0) gradients, such as `.sum()` produces.
        out.register_hook(torch.Tensor.contiguous)
    return out
