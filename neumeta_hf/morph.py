"""The morph spec: which tensors of a family network NeuMeta generates, and the INR's coordinates for them.

Everything that depends on "which tensors morph and how their shapes follow the width" reads this one object:
generation, injection into the network, reconstruction targets, permutation groups and export.
"""

from dataclasses import dataclass

import torch

from .families import ChannelGroup, NeuMetaFamilyConfig, NeuMetaFamilyModel, family_model_class


@dataclass(frozen=True)
class MorphTensor:
    """A generated tensor: its name in the family network and which of its axes follow the width."""

    name: str
    out_scales: bool  # axis 0
    in_scales: bool  # axis 1 (always False for 1-D tensors)


@dataclass(frozen=True)
class Coordinates:
    """The INR's inputs for every generated value of the width-`width` network, one row per (tensor, out, in).

    Rows are grouped by tensor in spec order; within a tensor they run over (out, in) in row-major order, so a
    tensor's rows reshape straight into its weight. Each row yields `prod(kernel)` values (a whole conv kernel).
    """

    width: int
    centres: torch.Tensor  # [rows, 2] (out + 0.5) / C_out and (in + 0.5) / C_in
    noise_scale: torch.Tensor  # [tensors, 2] 1 / C along axes that follow the width, else 0
    context: torch.Tensor  # [tensors, 3] tensor position i / T, C_out / C_out(full), C_in / C_in(full)
    row_counts: tuple[int, ...]  # rows per tensor
    shapes: tuple[tuple[int, ...], ...]  # each tensor's shape at this width
    fan_in_ratio: torch.Tensor  # [tensors] fan-in at full width / fan-in at this width

    def positions(self, noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """[rows, 2] channel positions; `noise` > 0 jitters them uniformly by +-noise/2 channel along the axes
        that follow the width."""
        if not noise:
            return self.centres
        jitter = torch.rand(self.centres.shape, generator=generator, device=self.centres.device) - 0.5
        counts = torch.tensor(self.row_counts, device=self.centres.device)
        scale = torch.repeat_interleave(self.noise_scale, counts, dim=0, output_size=len(self.centres))
        return self.centres + noise * jitter * scale

    def to(self, device) -> "Coordinates":
        tensors = ("centres", "noise_scale", "context", "fan_in_ratio")
        return Coordinates(**{**self.__dict__, **{name: getattr(self, name).to(device) for name in tensors}})


class MorphSpec:
    """What morphs in a family network: derived from the family's channel groups and the config's morph mode.

    A tensor morphs when one of its first two axes belongs to a channel group that follows the width; all
    others have the same shape at every width and are kept frozen.
    """

    def __init__(self, family_config: NeuMetaFamilyConfig):
        self.family_config = family_config
        self.model_class: type[NeuMetaFamilyModel] = family_model_class(family_config.model_type)
        self.full_width = family_config.width
        full = self.skeleton(self.full_width)
        groups = full.channel_groups()
        scaling = {member for group in groups if group.scales for member in group.members}
        parameters = dict(full.named_parameters())
        self.tensors = tuple(
            MorphTensor(name, (name, 0) in scaling, (name, 1) in scaling)
            for name in full.state_dict()
            if (name, 0) in scaling or (name, 1) in scaling
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
        self._coordinates: dict[tuple[int, str], Coordinates] = {}
        full_shapes = self.shapes(self.full_width)
        self.kernel_sizes = tuple(_kernel_size(full_shapes[t.name]) for t in self.tensors)
        self._full_sizes = [_channel_sizes(full_shapes[t.name]) for t in self.tensors]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def config_at(self, width: int) -> NeuMetaFamilyConfig:
        """The family config of the width-`width` network (everything else as at full width)."""
        return type(self.family_config).from_dict({**self.family_config.to_dict(), "width": width})

    def skeleton(self, width: int) -> NeuMetaFamilyModel:
        """The width-`width` network on the meta device: structure and shapes, no storage."""
        with torch.device("meta"):
            return self.model_class(self.config_at(width))

    def shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """Shapes of all tensors (parameters and buffers) of the width-`width` network."""
        if width not in self._shapes:
            state = self.skeleton(width).state_dict()
            self._shapes[width] = {name: tuple(tensor.shape) for name, tensor in state.items()}
        return self._shapes[width]

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
        count = len(self.tensors)
        centres, noise_scale, context, row_counts, fan_in_ratio = [], [], [], [], []
        for index, (tensor, full) in enumerate(zip(self.tensors, self._full_sizes)):
            c_out, c_in = _channel_sizes(shapes[tensor.name])
            out_centre = (torch.arange(c_out, dtype=torch.float32) + 0.5) / c_out
            in_centre = (torch.arange(c_in, dtype=torch.float32) + 0.5) / c_in
            centres.append(torch.stack(torch.meshgrid(out_centre, in_centre, indexing="ij"), dim=-1).view(-1, 2))
            noise_scale.append([tensor.out_scales / c_out, tensor.in_scales / c_in])
            context.append([index / count, c_out / full[0], c_in / full[1]])
            row_counts.append(c_out * c_in)
            fan_in_ratio.append(full[1] / c_in)
        return Coordinates(
            width=width,
            centres=torch.cat(centres),
            noise_scale=torch.tensor(noise_scale, dtype=torch.float32),
            context=torch.tensor(context, dtype=torch.float32),
            row_counts=tuple(row_counts),
            shapes=tuple(shapes[t.name] for t in self.tensors),
            fan_in_ratio=torch.tensor(fan_in_ratio, dtype=torch.float32),
        )


def _channel_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) channels of a weight; a 1-D tensor (bias, scale) has a single input position."""
    return (shape[0], shape[1]) if len(shape) > 1 else (shape[0], 1)


def _kernel_size(shape: tuple[int, ...]) -> int:
    """Values per coordinate: the product of the kernel dimensions (1 for linear weights and 1-D tensors)."""
    size = 1
    for dim in shape[2:]:
        size *= dim
    return size


def resample_channels(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`tensor` linearly interpolated along its first two axes to `shape`, channel centres aligned
    (channel `i` of `n` sits at `(i + 0.5) / n`, as in the INR's coordinates)."""
    for axis in range(min(2, tensor.dim())):
        old, new = tensor.shape[axis], shape[axis]
        if old == new:
            continue
        position = ((torch.arange(new, device=tensor.device) + 0.5) * (old / new) - 0.5).clamp(0, old - 1)
        lower = position.floor().long()
        upper = (lower + 1).clamp(max=old - 1)
        fraction = (position - lower).to(tensor.dtype).view(-1, *[1] * (tensor.dim() - axis - 1))
        tensor = torch.lerp(tensor.index_select(axis, lower), tensor.index_select(axis, upper), fraction)
    return tensor
