"""The morph spec: which tensors of a family network NeuMeta generates, and the INR's coordinates for them.

Everything that depends on "which tensors morph and how their shapes follow the width" reads this one object:
generation, injection into the network, reconstruction targets, permutation groups and export.
"""

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from .families import ChannelGroup
from .targets import channel_groups, config_at_width, network_class, network_width, output_axis


@dataclass(frozen=True)
class MorphTensor:
    """A generated tensor: its name in the family network and, for its output and input axes, the scaling
    channel group (an index into `MorphSpec.scaling_groups`, None for a group that keeps its size) of each
    segment of the axis. An axis usually holds one group; one that concatenates several (a U-Net decoder
    convolution's `[upsampled; skip]` input) holds one segment per group, in order; one outside every group
    (image channels, classes) holds none."""

    name: str
    out_groups: tuple[int | None, ...]  # axis 0
    in_groups: tuple[int | None, ...]  # axis 1 (empty for 1-D tensors)
    # With fold_fixed_axes, a weight with one scaling axis has one INR row per channel of that axis, the other
    # axis folded into the row's values: `rows_along` is the scaling axis then (None: a row per (out, in) pair).
    rows_along: int | None = None

    def scales(self, axis: int) -> bool:
        return any(group is not None for group in (self.out_groups, self.in_groups)[axis])

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

    A channel's position on an axis is its centre, (i + 0.5) / C; on an axis that concatenates K channel groups,
    channel i of segment k (of C_k channels) sits at (k + (i + 0.5) / C_k) / K, so that each group keeps its own
    stretch of the axis at every width.

    Coordinate noise moves whole channels: one offset per channel of each scaling group, shared by every
    tensor that channel appears in, so a noisy generation is the network resampled at shifted channel
    positions rather than a tensor-by-tensor blur.
    """

    width: int
    centres: torch.Tensor  # [rows, 2] channel positions on the output and input axes
    jitter_index: torch.Tensor  # [rows, 2] each axis's channel in the concatenated group offsets (-1: fixed)
    jitter_scale: torch.Tensor  # [rows, 2] position shift per channel of offset (the channel's spacing)
    context: torch.Tensor  # [tensors, 3] tensor position i / T, C_out / C_out(full), C_in / C_in(full)
    row_counts: tuple[int, ...]  # rows per tensor
    shapes: tuple[tuple[int, ...], ...]  # each tensor's shape at this width
    group_sizes: tuple[int, ...]  # channels of each scaling group at this width
    fan_in_ratio: torch.Tensor  # [tensors] fan-in at full width / fan-in at this width
    # Per tensor and axis (out, in): the channel count of each segment and each channel's index in the
    # concatenated group offsets (-1: fixed), over the tensor's true channels (folded axes included).
    segments: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    axis_jitter_index: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def draw_jitter(self, noise: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Channel offsets for one noisy generation: uniform in +-noise/2 channel, one per channel of each
        scaling group (concatenated); None without noise."""
        if not noise:
            return None
        uniform = torch.rand(sum(self.group_sizes), generator=generator, device=self.centres.device)
        return noise * (uniform - 0.5)

    def group_jitter(self, jitter: torch.Tensor | None, group: int) -> torch.Tensor | None:
        """The offsets of one scaling group's channels (None without jitter)."""
        if jitter is None:
            return None
        start = sum(self.group_sizes[:group])
        return jitter[start : start + self.group_sizes[group]]

    def axis_jitter(self, jitter: torch.Tensor | None, tensor: int) -> tuple[torch.Tensor | None, ...]:
        """Offsets of every channel of tensor `tensor`'s (out, in) axes (zero in fixed segments; None for an axis
        that does not move, or without jitter)."""
        if jitter is None:
            return (None, None)
        padded = torch.cat([jitter, jitter.new_zeros(1)])  # index -1: fixed channels do not move
        return tuple(padded[index] if (index >= 0).any() else None for index in self.axis_jitter_index[tensor])

    def positions(self, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, 2] channel positions in (0, 1), shifted by `jitter` (from `draw_jitter`)."""
        if jitter is None:
            return self.centres
        padded = torch.cat([jitter, jitter.new_zeros(1)])  # index -1: fixed axes do not move
        return self.centres + padded[self.jitter_index] * self.jitter_scale

    def to(self, device) -> "Coordinates":
        tensors = ("centres", "jitter_index", "jitter_scale", "context", "fan_in_ratio")
        moved = {name: getattr(self, name).to(device) for name in tensors}
        moved["axis_jitter_index"] = tuple(tuple(i.to(device) for i in axes) for axes in self.axis_jitter_index)
        return Coordinates(**{**self.__dict__, **moved})


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
        scaling = {group.name: index for index, group in enumerate(self.scaling_groups)}
        layout = axis_layout(groups, full.state_dict())
        parameters = dict(full.named_parameters())
        tensors = []
        for name, tensor in full.state_dict().items():
            out_groups, in_groups = (tuple(scaling.get(g) for g, _, _ in layout.get((name, axis), ())) for axis in (0, 1))
            if any(g is not None for g in out_groups + in_groups):
                out_scales, in_scales = (any(g is not None for g in axis) for axis in (out_groups, in_groups))
                rows_along = _rows_along(out_scales, in_scales, tensor.dim(), fold_fixed_axes)
                tensors.append(MorphTensor(name, out_groups, in_groups, rows_along))
        self.tensors = tuple(tensors)
        buffers = [t.name for t in self.tensors if t.name not in parameters]
        if buffers:
            raise ValueError(
                f"Buffers {buffers} would morph; fold BatchNorm into the convolutions first "
                "(NeuMetaModel.from_base_model does this)"
            )
        names = {t.name for t in self.tensors}
        # Groups worth permuting for smoothness: those along which a generated tensor is laid out.
        self.groups: tuple[ChannelGroup, ...] = tuple(
            g for g in groups if any(member.tensor in names for member in g.members)
        )
        self._shapes: dict[int, dict[str, tuple[int, ...]]] = {}
        self._layouts: dict[int, dict[tuple[str, int], tuple[tuple[str, int, int], ...]]] = {}
        self._meta_networks: dict[int, PreTrainedModel] = {}
        self._coordinates: dict[tuple[int, str], Coordinates] = {}
        full_shapes = self.shapes(self.full_width)
        # Values per INR row: the kernel, times the folded axis where there is one (the same at every width).
        self.kernel_sizes = tuple(
            math.prod(full_shapes[t.name]) // math.prod(t.row_grid(full_shapes[t.name])) for t in self.tensors
        )
        self._full_sizes = [_channel_sizes(full_shapes[t.name]) for t in self.tensors]
        # The axis of each tensor that runs over its layer's inputs (1; 0 for a transposed convolution's weight).
        self._input_axes = [1 - output_axis(full, t.name) for t in self.tensors]
        # Segment sizes of each tensor's (out, in) axes at full width: where resampling starts from.
        self.full_segments = tuple(
            tuple(self.segments(self.full_width, t, axis) for axis in (0, 1)) for t in self.tensors
        )

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

    def layout(self, width: int) -> dict[tuple[str, int], tuple[tuple[str, int, int], ...]]:
        """(tensor, axis) -> the channel groups along that axis of the width-`width` network, as
        (group name, start, stop) in order (`axis_layout`)."""
        if width not in self._layouts:
            network = self.meta_network(width)
            self._layouts[width] = axis_layout(channel_groups(network), network.state_dict())
        return self._layouts[width]

    def segments(self, width: int, tensor: MorphTensor, axis: int) -> tuple[int, ...]:
        """Channel counts of the segments of `tensor`'s `axis` at `width` (one segment: the whole axis)."""
        spans = self.layout(width).get((tensor.name, axis))
        if spans:
            return tuple(stop - start for _, start, stop in spans)
        return (_channel_sizes(self.shapes(width)[tensor.name])[axis],)

    def row_count(self, width: int) -> int:
        """Rows of the width-`width` coordinates (one per generated (out, in) channel pair), without building them."""
        shapes = self.shapes(width)
        return sum(math.prod(t.row_grid(shapes[t.name])) for t in self.tensors)

    def coordinates(self, width: int, device: torch.device | str = "cpu") -> Coordinates:
        """The INR inputs for the width-`width` network, computed once per width and device."""
        key = (width, str(device))
        if key not in self._coordinates:
            cpu = self._coordinates.get((width, "cpu")) or self.build_coordinates(width)
            self._coordinates[(width, "cpu")] = cpu
            self._coordinates[key] = cpu.to(device)
        return self._coordinates[key]

    def build_coordinates(self, width: int) -> Coordinates:
        """The INR inputs for the width-`width` network on the CPU, built afresh (`coordinates` caches them)."""
        shapes = self.shapes(width)
        group_sizes = [g.members[0].length(shapes[g.members[0].tensor]) for g in self.scaling_groups]
        group_starts = [sum(group_sizes[:index]) for index in range(len(group_sizes))]
        count = len(self.tensors)
        centres, jitter_index, jitter_scale, context, row_counts, fan_in_ratio = [], [], [], [], [], []
        segments, axis_jitter_index = [], []
        for index, (tensor, full) in enumerate(zip(self.tensors, self._full_sizes)):
            sizes = tuple(self.segments(width, tensor, axis) for axis in (0, 1))
            groups = (tensor.out_groups or (None,), tensor.in_groups or (None,))
            axes = [_axis_channels(sizes[axis], groups[axis], group_starts) for axis in (0, 1)]
            segments.append(sizes)
            axis_jitter_index.append((axes[0][1], axes[1][1]))
            if tensor.rows_along is not None:  # the folded axis is one fixed row position
                folded = 1 - tensor.rows_along
                axes[folded] = (torch.tensor([0.5]), torch.tensor([-1]), torch.tensor([1.0]))
            (out_position, out_index, out_scale), (in_position, in_index, in_scale) = axes
            c_out, c_in = len(out_position), len(in_position)
            centres.append(_pairs(out_position, in_position))
            jitter_index.append(_pairs(out_index, in_index))
            jitter_scale.append(_pairs(out_scale, in_scale))
            true_out, true_in = _channel_sizes(shapes[tensor.name])
            context.append([index / count, true_out / full[0], true_in / full[1]])
            row_counts.append(c_out * c_in)
            sizes_now = (true_out, true_in)
            fan_in_ratio.append(full[self._input_axes[index]] / sizes_now[self._input_axes[index]])
        return Coordinates(
            width=width,
            centres=torch.cat(centres),
            jitter_index=torch.cat(jitter_index),
            jitter_scale=torch.cat(jitter_scale),
            context=torch.tensor(context, dtype=torch.float32),
            row_counts=tuple(row_counts),
            shapes=tuple(shapes[t.name] for t in self.tensors),
            group_sizes=tuple(group_sizes),
            fan_in_ratio=torch.tensor(fan_in_ratio, dtype=torch.float32),
            segments=tuple(segments),
            axis_jitter_index=tuple(axis_jitter_index),
        )


def axis_layout(groups, state: dict[str, torch.Tensor]) -> dict[tuple[str, int], tuple[tuple[str, int, int], ...]]:
    """(tensor name, axis) -> (group name, start, stop) of every channel group along that axis, in order of
    position. Raises if the groups along an axis overlap or leave channels out: a family's channel groups are
    wrong then."""
    spans: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for group in groups:
        for member in group.members:
            stop = member.start + member.length(state[member.tensor].shape)
            spans.setdefault((member.tensor, member.axis), []).append((member.start, stop, group.name))
    layout = {}
    for (name, axis), found in spans.items():
        found.sort()
        ends = [start for start, _, _ in found[1:]] + [state[name].shape[axis]]
        if found[0][0] != 0 or any(stop != end for (_, stop, _), end in zip(found, ends)):
            raise ValueError(
                f"The channel groups along axis {axis} of {name} ({[(g, a, b) for a, b, g in found]}) do not "
                f"cover its {state[name].shape[axis]} channels exactly once; fix the family's channel_groups()"
            )
        layout[(name, axis)] = tuple((group, start, stop) for start, stop, group in found)
    return layout


def _pairs(out_values: torch.Tensor, in_values: torch.Tensor) -> torch.Tensor:
    """[out * in, 2]: every (out, in) pair of per-channel values, in row-major order (the rows of a tensor)."""
    return torch.stack(torch.broadcast_tensors(out_values[:, None], in_values[None, :]), -1).reshape(-1, 2)


def _axis_channels(sizes: tuple[int, ...], groups: tuple[int | None, ...], group_starts: list[int]):
    """(position, jitter index, jitter scale) of every channel of an axis made of `sizes` segments, segment k
    belonging to scaling group `groups[k]` (None: fixed)."""
    count = len(sizes)
    positions, indices, scales = [], [], []
    for k, (size, group) in enumerate(zip(sizes, groups)):
        channel = torch.arange(size)
        positions.append((k + (channel + 0.5) / size) / count)
        indices.append(channel + group_starts[group] if group is not None else torch.full((size,), -1))
        scales.append(torch.full((size,), 1.0 / (count * size)))
    return torch.cat(positions), torch.cat(indices), torch.cat(scales)


def _channel_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) channels of a weight; a 1-D tensor (bias, scale) has a single input position."""
    return (shape[0], shape[1]) if len(shape) > 1 else (shape[0], 1)


def _rows_along(out_scales: bool, in_scales: bool, dims: int, fold_fixed_axes: bool) -> int | None:
    """`MorphTensor.rows_along`: with `fold_fixed_axes`, the scaling axis of a weight whose other axis is fixed
    (folding the fixed one into the values cuts the rows by its size, e.g. 768x for a ViT-B feed-forward weight);
    None otherwise."""
    if not fold_fixed_axes or dims < 2 or out_scales == in_scales:
        return None
    return 0 if out_scales else 1


def resample_channels(
    tensor: torch.Tensor,
    shape: tuple[int, ...],
    offsets: tuple[torch.Tensor | None, ...] = (None, None),
    segments: tuple[tuple[tuple[int, ...], tuple[int, ...]] | None, ...] = (None, None),
) -> torch.Tensor:
    """`tensor` linearly interpolated along its first two axes to `shape`, channel centres aligned (channel `i`
    of `n` sits at `(i + 0.5) / n`, as in the INR's coordinates), each channel optionally shifted by
    `offsets[axis][i]` channels. An axis that concatenates channel groups is given as `segments[axis]` =
    (segment sizes in `tensor`, segment sizes in `shape`): each segment is resampled on its own."""
    for axis in range(min(2, tensor.dim())):
        old_sizes, new_sizes = segments[axis] or ((tensor.shape[axis],), (shape[axis],))
        offset = offsets[axis]
        if tuple(old_sizes) == tuple(new_sizes) and offset is None:
            continue
        pieces = tensor.split(list(old_sizes), axis)
        piece_offsets = offset.split(list(new_sizes)) if offset is not None else [None] * len(pieces)
        tensor = torch.cat(
            [_resample_axis(piece, axis, new, shift) for piece, new, shift in zip(pieces, new_sizes, piece_offsets)],
            axis,
        )
    return tensor


def _resample_axis(tensor: torch.Tensor, axis: int, new: int, offset: torch.Tensor | None) -> torch.Tensor:
    old = tensor.shape[axis]
    if old == new and offset is None:
        return tensor
    centre = torch.arange(new, device=tensor.device) + 0.5
    if offset is not None:
        centre = centre + offset
    position = (centre * (old / new) - 0.5).clamp(0, old - 1)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=old - 1)
    fraction = (position - lower).to(tensor.dtype).view(-1, *[1] * (tensor.dim() - axis - 1))
    return torch.lerp(tensor.index_select(axis, lower), tensor.index_select(axis, upper), fraction)


def leading_channels(
    tensor: torch.Tensor, shape: tuple[int, ...], segments: tuple[tuple[tuple[int, ...], tuple[int, ...]] | None, ...]
) -> torch.Tensor:
    """The first channels of `tensor` in `shape` (a slimmable network's member): on an axis that concatenates
    channel groups (`segments` as in `resample_channels`), the first channels of each segment."""
    for axis in range(tensor.dim()):
        if axis < len(segments) and segments[axis] is not None and len(segments[axis][0]) > 1:
            old_sizes, new_sizes = segments[axis]
            pieces = tensor.split(list(old_sizes), axis)
            tensor = torch.cat([piece.narrow(axis, 0, new) for piece, new in zip(pieces, new_sizes)], axis)
        else:
            tensor = tensor.narrow(axis, 0, shape[axis])
    return tensor
