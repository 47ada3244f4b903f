"""The morph spec: which tensors of a family network NeuMeta generates, and the INR's coordinates for them.

Everything that depends on "which tensors morph and how their shapes follow the width" reads this one object:
generation, injection into the network, reconstruction targets, permutation groups and export.
"""

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from .families import ChannelGroup
from .targets import channel_groups, config_at_width, network_class, network_width


@dataclass(frozen=True)
class MorphTensor:
    """A generated tensor: its name in the family network and the scaling channel group (an index into
    `MorphSpec.scaling_groups`) of its output and input axes, None where an axis does not follow the width."""

    name: str
    out_group: int | None  # axis 0
    in_group: int | None  # axis 1 (always None for 1-D tensors)
    # With fold_fixed_axes, a weight with one scaling axis has one INR row per channel of that axis, the other
    # axis folded into the row's values: `rows_along` is the scaling axis then (None: a row per (out, in) pair).
    rows_along: int | None = None

    def row_grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(out, in) extent of this tensor's INR rows at `shape`: a folded axis counts once."""
        c_out, c_in = _channel_sizes(shape)
        return {None: (c_out, c_in), 0: (c_out, 1), 1: (1, c_in)}[self.rows_along]

    def from_rows(self, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor of `shape` from its rows' values [rows, values per row]."""
        if self.rows_along == 1:  # rows run over inputs: each row holds one input's column (x kernel)
            return values.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)
        return values.reshape(shape)


@dataclass(frozen=True)
class Coordinates:
    """The INR's inputs for every generated value of the width-`width` network, one row per (tensor, out, in).

    Rows are grouped by tensor in spec order; within a tensor they run over (out, in) in row-major order, so a
    tensor's rows reshape straight into its weight. Each row yields `prod(kernel)` values (a whole conv kernel),
    or, for a tensor folded along its fixed axis (`MorphTensor.rows_along`), that axis's values times the kernel.

    Coordinate noise moves whole channels: one offset per channel of each scaling group, shared by every
    tensor that channel appears in, so a noisy generation is the network resampled at shifted channel
    positions rather than a tensor-by-tensor blur.
    """

    width: int
    centres: torch.Tensor  # [rows, 2] (out + 0.5) / C_out and (in + 0.5) / C_in
    jitter_index: torch.Tensor  # [rows, 2] each axis's channel in the concatenated group offsets (-1: fixed)
    inverse_sizes: torch.Tensor  # [tensors, 2] 1 / C_out, 1 / C_in
    context: torch.Tensor  # [tensors, 3] tensor position i / T, C_out / C_out(full), C_in / C_in(full)
    row_counts: tuple[int, ...]  # rows per tensor
    shapes: tuple[tuple[int, ...], ...]  # each tensor's shape at this width
    group_sizes: tuple[int, ...]  # channels of each scaling group at this width
    fan_in_ratio: torch.Tensor  # [tensors] fan-in at full width / fan-in at this width

    def draw_jitter(self, noise: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Channel offsets for one noisy generation: uniform in +-noise/2 channel, one per channel of each
        scaling group (concatenated); None without noise."""
        if not noise:
            return None
        uniform = torch.rand(sum(self.group_sizes), generator=generator, device=self.centres.device)
        return noise * (uniform - 0.5)

    def group_jitter(self, jitter: torch.Tensor | None, group: int | None) -> torch.Tensor | None:
        """The offsets of one scaling group's channels (None for a fixed axis or without jitter)."""
        if jitter is None or group is None:
            return None
        start = sum(self.group_sizes[:group])
        return jitter[start : start + self.group_sizes[group]]

    def positions(self, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, 2] channel positions in (0, 1), shifted by `jitter` (from `draw_jitter`)."""
        if jitter is None:
            return self.centres
        padded = torch.cat([jitter, jitter.new_zeros(1)])  # index -1: fixed axes do not move
        counts = torch.tensor(self.row_counts, device=self.centres.device)
        scale = torch.repeat_interleave(self.inverse_sizes, counts, dim=0, output_size=len(self.centres))
        return self.centres + padded[self.jitter_index] * scale

    def to(self, device) -> "Coordinates":
        tensors = ("centres", "jitter_index", "inverse_sizes", "context", "fan_in_ratio")
        return Coordinates(**{**self.__dict__, **{name: getattr(self, name).to(device) for name in tensors}})


class MorphSpec:
    """What morphs in a target network (a family's, or a stock transformers model's): derived from its channel
    groups (`targets.channel_groups`) and, for families, the config's morph mode.

    A tensor morphs when one of its first two axes belongs to a channel group that follows the width; all
    others have the same shape at every width and are kept frozen.
    """

    def __init__(self, family_config: PreTrainedConfig, fold_fixed_axes: bool = False):
        self.family_config = family_config
        self.model_class: type[PreTrainedModel] = network_class(family_config)
        self.full_width = network_width(family_config)
        full = self.skeleton(self.full_width)
        groups = channel_groups(full)
        self.scaling_groups: tuple[ChannelGroup, ...] = tuple(group for group in groups if group.scales)
        scaling = {member: index for index, group in enumerate(self.scaling_groups) for member in group.members}
        parameters = dict(full.named_parameters())
        self.tensors = tuple(
            MorphTensor(name, out_group, in_group, _rows_along(out_group, in_group, tensor.dim(), fold_fixed_axes))
            for name, tensor in full.state_dict().items()
            for out_group, in_group in [(scaling.get((name, 0)), scaling.get((name, 1)))]
            if out_group is not None or in_group is not None
        )
        buffers = [t.name for t in self.tensors if t.name not in parameters]
        if buffers:
            raise ValueError(
                f"Buffers {buffers} would morph; fold BatchNorm into the convolutions first "
                "(NeuMetaModel.from_base_model does this)"
            )
        names = {t.name for t in self.tensors}
        # Groups worth permuting for smoothness: those along which a generated tensor is laid out.
        self.groups: tuple[ChannelGroup, ...] = tuple(
            g for g in groups if any(name in names for name, _ in g.members)
        )
        self._shapes: dict[int, dict[str, tuple[int, ...]]] = {}
        self._meta_networks: dict[int, PreTrainedModel] = {}
        self._coordinates: dict[tuple[int, str], Coordinates] = {}
        full_shapes = self.shapes(self.full_width)
        # Values per INR row: the kernel, times the folded axis where there is one (the same at every width).
        self.kernel_sizes = tuple(
            math.prod(full_shapes[t.name]) // math.prod(t.row_grid(full_shapes[t.name])) for t in self.tensors
        )
        self._full_sizes = [_channel_sizes(full_shapes[t.name]) for t in self.tensors]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def skeleton(self, width: int) -> PreTrainedModel:
        """A new width-`width` network on the meta device: structure and shapes, no storage (for callers that
        materialise it)."""
        with torch.device("meta"):
            return self.model_class(config_at_width(self.family_config, width))

    def meta_network(self, width: int) -> PreTrainedModel:
        """The width-`width` meta network, built once per width and shared: for `functional_call`, which reads
        only its structure. Building one takes milliseconds (config round trip, layer init), once per step in
        training otherwise."""
        if width not in self._meta_networks:
            self._meta_networks[width] = self.skeleton(width)
        return self._meta_networks[width]

    def shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """Shapes of all tensors (parameters and buffers) of the width-`width` network."""
        if width not in self._shapes:
            state = self.meta_network(width).state_dict()
            self._shapes[width] = {name: tuple(tensor.shape) for name, tensor in state.items()}
        return self._shapes[width]

    def row_count(self, width: int) -> int:
        """Rows of the width-`width` coordinates (one per generated (out, in) channel pair), without building them."""
        shapes = self.shapes(width)
        return sum(math.prod(t.row_grid(shapes[t.name])) for t in self.tensors)

    def coordinates(self, width: int, device: torch.device | str = "cpu") -> Coordinates:
        """The INR inputs for the width-`width` network, computed once per width and device."""
        key = (width, str(device))
        if key not in self._coordinates:
            cpu = self._coordinates.get((width, "cpu")) or self._build_coordinates(width)
            self._coordinates[(width, "cpu")] = cpu
            self._coordinates[key] = cpu.to(device)
        return self._coordinates[key]

    def _build_coordinates(self, width: int) -> Coordinates:
        shapes = self.shapes(width)
        group_sizes = [shapes[g.members[0][0]][g.members[0][1]] for g in self.scaling_groups]
        group_starts = [sum(group_sizes[:index]) for index in range(len(group_sizes))]
        count = len(self.tensors)
        centres, jitter_index, inverse_sizes, context, row_counts, fan_in_ratio = [], [], [], [], [], []
        for index, (tensor, full) in enumerate(zip(self.tensors, self._full_sizes)):
            c_out, c_in = tensor.row_grid(shapes[tensor.name])
            out_index, in_index = torch.meshgrid(torch.arange(c_out), torch.arange(c_in), indexing="ij")
            channels = torch.stack([out_index.reshape(-1), in_index.reshape(-1)], dim=1)
            sizes = torch.tensor([c_out, c_in], dtype=torch.float32)
            centres.append((channels + 0.5) / sizes)
            starts = [-1 if g is None else group_starts[g] for g in (tensor.out_group, tensor.in_group)]
            moving = torch.tensor([s >= 0 for s in starts])
            jitter_index.append(torch.where(moving, channels + torch.tensor(starts), -1))
            inverse_sizes.append(1.0 / sizes)
            true_out, true_in = _channel_sizes(shapes[tensor.name])
            context.append([index / count, true_out / full[0], true_in / full[1]])
            row_counts.append(c_out * c_in)
            fan_in_ratio.append(full[1] / true_in)
        return Coordinates(
            width=width,
            centres=torch.cat(centres),
            jitter_index=torch.cat(jitter_index),
            inverse_sizes=torch.stack(inverse_sizes),
            context=torch.tensor(context, dtype=torch.float32),
            row_counts=tuple(row_counts),
            shapes=tuple(shapes[t.name] for t in self.tensors),
            group_sizes=tuple(group_sizes),
            fan_in_ratio=torch.tensor(fan_in_ratio, dtype=torch.float32),
        )


def _channel_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) channels of a weight; a 1-D tensor (bias, scale) has a single input position."""
    return (shape[0], shape[1]) if len(shape) > 1 else (shape[0], 1)


def _rows_along(out_group: int | None, in_group: int | None, dims: int, fold_fixed_axes: bool) -> int | None:
    """`MorphTensor.rows_along`: with `fold_fixed_axes`, the scaling axis of a weight whose other axis is fixed
    (folding the fixed one into the values cuts the rows by its size, e.g. 768x for a ViT-B feed-forward weight);
    None otherwise."""
    if not fold_fixed_axes or dims < 2 or (out_group is None) == (in_group is None):
        return None
    return 0 if out_group is not None else 1


def resample_channels(
    tensor: torch.Tensor, shape: tuple[int, ...], offsets: tuple[torch.Tensor | None, ...] = (None, None)
) -> torch.Tensor:
    """`tensor` linearly interpolated along its first two axes to `shape`, channel centres aligned (channel `i`
    of `n` sits at `(i + 0.5) / n`, as in the INR's coordinates), each channel optionally shifted by
    `offsets[axis][i]` channels."""
    for axis in range(min(2, tensor.dim())):
        old, new, offset = tensor.shape[axis], shape[axis], offsets[axis]
        if old == new and offset is None:
            continue
        centre = torch.arange(new, device=tensor.device) + 0.5
        if offset is not None:
            centre = centre + offset
        position = (centre * (old / new) - 0.5).clamp(0, old - 1)
        lower = position.floor().long()
        upper = (lower + 1).clamp(max=old - 1)
        fraction = (position - lower).to(tensor.dtype).view(-1, *[1] * (tensor.dim() - axis - 1))
        tensor = torch.lerp(tensor.index_select(axis, lower), tensor.index_select(axis, upper), fraction)
    return tensor
