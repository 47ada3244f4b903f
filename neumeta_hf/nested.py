"""The nested stage: the trained base network made into a nested network whose first w channels are a good
width-w network at every width, before the hypernetwork learns over it.

* `importance_order(model)`: every scaling channel group sorted by the L1 norm of the weights that produce its
  channels, largest first, the same order applied to every member: the function is unchanged and the first w
  channels are the w most important (the warm start of Once-for-All; the importance of Li et al., 2017).
* `NestedNetwork`: the ordered network's tensors, shared by every width (width w reads the first channels of each
  group, as a slimmable network does), plus `WidthAffine`: a scale and a shift per trained width and channel on
  each layer producing a group's channels (`affine_sites`: a residual stream has several), before its
  activation (where BatchNorm's affine sits, one per width as in slimmable networks). Both fold into the
  producing weights and biases, so every width is a plain network.
* `train_nested`: the sandwich rule -- each step the full width, the smallest and `random_widths` others of the
  trained widths (or of every width of the range, as US-Nets draw them) -- every width distilled from a fixed
  teacher (the base network) or in place from the full width, AdamW with a cosine schedule.

A width outside the trained ones has no affine of its own: `NestedNetwork.network_at` interpolates the two
nearest rows channel by channel (what a table can do; the hypernetwork adds a generated correction). A stage
trained with BatchNorm is folded once trained (`NestedNetwork.folded`): each trained width's statistics go into
its row, and the widths between trained ones get rows of their own, because a width's statistics are not its
neighbours' interpolated: predicted from the full width's statistics without running them, or measured where the
stage ran every width.
"""

import contextlib
import copy
import functools
import json
import math
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import PreTrainedModel

from .folding import fold_batch_norm
from .progress import progress_bar
from .families.modeling_common import ChannelSlice
from .pruning import (
    calibrate_batch_norm, first_channels, has_batch_norm, mixed_layers, nested_weights, unlisted_buffers,
)
from .publishing import save_network
from .targets import (
    config_at_width, layer_widths, network_class, network_width, reorder_channels, target, target_config, task_for,
)

AFFINE_FILE = "width_affine.safetensors"


@torch.no_grad()
def importance_order(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` whose scaling channel groups are sorted by importance (the L1 norm of each channel's
    producing weights), largest first, in every member: the same function, its first w channels the most
    important ones."""
    ordered = copy.deepcopy(model)
    kind = target(model.config.model_type)
    state = dict(ordered.named_parameters()) | dict(ordered.named_buffers())
    # Importance is read from the unordered model (a row's L1 norm does not depend on the order of its inputs);
    # with BatchNorm, from its folded copy: statistics and affine scale what a channel contributes.
    reference = fold_batch_norm(model) if has_batch_norm(model) else model
    reference_state, reference_groups = _tensors_of(reference), {g.name: g for g in kind.channel_groups(reference)}
    for group in kind.channel_groups(ordered):
        if not group.scales:
            continue
        filters = kind.filters(reference, reference_groups[group.name], reference_state)
        importance = sum(weight.abs().flatten(1).sum(1) for weight in filters)
        reorder_channels(state, group, importance.argsort(descending=True, stable=True))
    return ordered


@dataclass(frozen=True)
class AffineSite:
    """Where one table of per-width scales and shifts acts: on the outputs of `layer` (a module name), one of the
    layers producing scaling group `group`'s channels (`size` of them in the network it was read from; the
    layer's tensors along its outputs: `producers`). A group written by one layer has one site, named after the
    group; a residual stream, written by several layers (each followed by a BatchNorm of its own, whose
    statistics differ from width to width), one per layer, named `group@layer`."""

    name: str
    group: str
    layer: str
    size: int
    producers: tuple[ChannelSlice, ...]


_SITES: "weakref.WeakKeyDictionary[nn.Module, list[AffineSite]]" = weakref.WeakKeyDictionary()


def affine_sites(network: PreTrainedModel) -> list[AffineSite]:
    """Every site of `network`'s scaling groups (`AffineSite`), in group order, then producing-layer order; read
    once per network (a network's structure does not change; training folds into the same skeletons each step)."""
    if network not in _SITES:
        kind = target(network.config.model_type)
        structure = _tensors_of(network)
        sites = []
        for group in (g for g in kind.channel_groups(network) if g.scales):
            size = group.members[0].length(structure[group.members[0].tensor].shape)
            producers = kind.producers(network, group, structure)
            layers = list(dict.fromkeys(m.tensor.rpartition(".")[0] for m in producers if m.tensor.endswith(".weight")))
            for layer in layers:
                name = group.name if len(layers) == 1 else f"{group.name}@{layer}"
                own = tuple(m for m in producers if m.tensor.rpartition(".")[0] == layer)
                sites.append(AffineSite(name, group.name, layer, size, own))
        _SITES[network] = sites
    return _SITES[network]


def site_size(network: PreTrainedModel, site_name: str) -> int:
    """How many channels site `site_name` (its scaling group) has in `network`."""
    return next(site.size for site in affine_sites(network) if site.name == site_name)


def fold_scale_and_shift(skeleton: PreTrainedModel, tensors: dict, values) -> dict[str, torch.Tensor]:
    """`tensors` of the network `skeleton` describes (its structure; any device) with a scale and a shift per
    channel of each site (`affine_sites`) folded into the layer that sets the site's outputs, as if applied to
    them: the producing layer -- weights scaled along their output axis, biases scaled, then shifted -- or, in a
    network with BatchNorm, the BatchNorm after it (a private BatchNorm affine per width). `values(site_name,
    size)` gives (scale, shift), each [size]; layers not in `tensors` are left out. Returns a new dict,
    differentiable."""
    batch_norm = has_batch_norm(skeleton)
    tensors = dict(tensors)
    for site in affine_sites(skeleton):
        scale, shift = values(site.name, site.size)
        if batch_norm:  # one BatchNorm after each producing layer, as `NestedNetwork` checks
            norm = _norm_after(site.layer)
            layers = [ChannelSlice(f"{norm}.weight", 0), ChannelSlice(f"{norm}.bias", 0)]
        else:
            layers = site.producers
        for member in layers:
            if member.tensor not in tensors:
                continue
            tensor = tensors[member.tensor]
            view = [1] * tensor.dim()
            view[member.axis] = site.size
            tensor = tensor * scale.view(view)
            tensors[member.tensor] = tensor + shift if member.tensor.endswith(".bias") else tensor
    return tensors


def _norm_after(layer: str) -> str:
    """The BatchNorm module after producing convolution `layer`: the families' conv + BatchNorm pairs
    (`ConvNorm`) name them `X.conv` and `X.norm`, which `fold_batch_norm` relies on too."""
    return layer.removesuffix("conv") + "norm"


def _norm_layers(network, group, structure) -> list[str]:
    """The BatchNorm layers among a channel group's members, by module name."""
    layers = {m.tensor.rpartition(".")[0] for m in group.members if m.tensor in structure}
    return sorted(name for name in layers if isinstance(network.get_submodule(name), _BatchNorm))


def _deviation(network, norm: str, size: int) -> torch.Tensor:
    """The standard deviation BatchNorm layer `norm` of `network` divides its first `size` channels by."""
    layer = network.get_submodule(norm)
    return (layer.running_var[:size] + layer.eps).sqrt()


def _tensors_of(network) -> dict[str, torch.Tensor]:
    """Every parameter (tied ones under each name) and buffer of `network`, by name."""
    return dict(network.named_parameters(remove_duplicate=False)) | dict(network.named_buffers())


def _key(group_name: str) -> str:
    return group_name.replace(".", "_")  # module names may not hold dots


class WidthAffine(nn.Module):
    """A scale (stored as its logarithm) and a shift per width and channel of every site of a network (each
    layer producing a scaling group's channels, `affine_sites`), applied to its outputs; zero is the identity.
    Rows: the trained widths (`widths`) and any widths whose rows were filled when the stage was folded instead
    (`predicted`, between trained ones: see `NestedNetwork.folded`). The full width has none of its own (it is
    the shared network itself, the one saved as a plain network)."""

    def __init__(self, site_sizes: dict[str, int], widths: list[int], full_width: int, predicted: Sequence[int] = ()):
        super().__init__()
        self.full_width = full_width
        self.widths = sorted(w for w in set(widths) if w != full_width)
        self.predicted = sorted(set(predicted) - set(self.widths))
        if any(w >= full_width for w in self.predicted):
            raise ValueError(f"predicted widths {self.predicted} must lie below the full width {full_width}")
        self.rows = sorted(self.widths + self.predicted)
        zeros = {_key(n): torch.zeros(len(self.rows), size) for n, size in site_sizes.items()}
        self.log_scale = nn.ParameterDict({key: nn.Parameter(table) for key, table in zeros.items()})
        self.shift = nn.ParameterDict({key: nn.Parameter(table.clone()) for key, table in zeros.items()})

    def values(self, site: str, width: int, size: int, size_at=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of a site's first `size` channels at `width`: its own row, the identity at the full
        width (and beyond), else the two nearest rows interpolated channel by channel (`interpolated`;
        `size_at(w)` is the site's size at width w; below the narrowest row, its row)."""
        rows = {w: row for row, w in enumerate(self.rows)}
        log_scale, shift = self.log_scale[_key(site)], self.shift[_key(site)]
        identity = log_scale.new_zeros(size), shift.new_zeros(size)

        def row(w):
            return identity if w >= self.full_width else (log_scale[rows[w], :size], shift[rows[w], :size])

        if width >= self.full_width or width in rows:
            values = row(width)
        elif not self.rows or width < self.rows[0]:
            values = row(self.rows[0]) if self.rows else identity
        else:
            below = max(w for w in self.rows if w < width)
            above = min([w for w in self.rows if w > width] + [self.full_width])
            fraction = (width - below) / (above - below)
            known = size_at(below) if size_at else size
            values = tuple(interpolated(low, high, fraction, known) for low, high in zip(row(below), row(above)))
        return values[0].exp(), values[1]


def interpolated(low: torch.Tensor, high: torch.Tensor, fraction: float, known: int) -> torch.Tensor:
    """A width's per-channel values between those of a narrower width (`low`, its first `known` channels) and a
    wider one (`high`, cut to the width's channels) at `fraction` of the way: channels only the wider width has
    take its values."""
    return torch.lerp(torch.cat([low[:known], high[known:]]), high, fraction)


class NestedNetwork(nn.Module):
    """Shared full-width tensors (`network`) and per-width scales and shifts (`affine`): width w is the first
    channels of every scaling group, with width w's affine folded into each producing layer's weights and biases
    (or, with BatchNorm, into the BatchNorm after it). Where a width is taken, a stock model also takes a list of
    widths, one per layer (mix'n'match, `mixed_layers`)."""

    def __init__(self, network: PreTrainedModel, widths: list[int], predicted: Sequence[int] = ()):
        super().__init__()
        self.network = network
        self.kind = target(network.config.model_type)
        state = _tensors_of(network)
        self.groups = [g for g in self.kind.channel_groups(network) if g.scales]
        self.sites = affine_sites(network)
        self.affine = WidthAffine({s.name: s.size for s in self.sites}, widths, self.full_width, predicted)
        self._layer_of = {m.tensor: layer for layer, g in enumerate(self.groups) for m in g.members}
        # With BatchNorm, each width's scale and shift act on the affine of the BatchNorm after each producing
        # layer (a private BatchNorm per width, as in slimmable networks) and training normalises by batch
        # statistics; `folded` then turns the stage into the plain form, whose per-width scales and shifts need no
        # statistics. Refused now, not when the trained stage is folded: a network where that does not hold.
        self.batch_norm = has_batch_norm(network)
        for group in self.groups if self.batch_norm else ():
            self._check_batch_norm_sites(group, state)
        self._skeletons: dict[int, PreTrainedModel] = {}

    @property
    def full_width(self) -> int:
        return network_width(self.network.config)

    def skeleton(self, width: int) -> PreTrainedModel:
        """The width-`width` network's structure on the meta device (for `functional_call`)."""
        if width not in self._skeletons:
            with torch.device("meta"):
                config = config_at_width(self.network.config, width)
                self._skeletons[width] = network_class(config)(config).eval()
        return self._skeletons[width]

    def width_tensors(self, width: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """Every tensor of the width-`width` network, differentiable: the shared tensors' first channels with
        the width's scale and shift folded in (`fold_scale_and_shift`); for one width per layer, each layer's
        from its width, zero-padded to the widest."""
        if not isinstance(width, int):
            widths = self._layer_widths(width)
            return mixed_layers({w: self.width_tensors(w) for w in set(widths)}, self._layer_of, widths)
        skeleton = self.skeleton(width)
        return fold_scale_and_shift(
            skeleton, nested_weights(self.network, skeleton), lambda site, size: self.site_values(site, width, size)
        )

    def site_values(self, site_name: str, width: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of site `site_name`'s first `size` channels at `width`, as the width runs with them."""
        return self.affine.values(site_name, width, size, lambda w: self.site_size(site_name, w))

    def _layer_widths(self, widths) -> list[int]:
        widths = layer_widths(self.network.config.model_type, widths, len(self.groups))
        if not all(isinstance(w, int) and 0 < w <= self.full_width for w in widths):
            raise ValueError(f"each width must be an integer from 1 to the full width {self.full_width}, got {widths}")
        return widths

    def site_size(self, site_name: str, width: int) -> int:
        """How many channels site `site_name` (its scaling group) has at `width`."""
        return site_size(self.skeleton(width), site_name)

    def forward(self, width: int | Sequence[int], *args, **kwargs):
        skeleton = self.skeleton(width if isinstance(width, int) else max(width))
        # BatchNorm trains on batch statistics (the running ones, views of the shared buffers, are recomputed
        # per width by `folded`); other layers keep eval behaviour, as the stage always ran them.
        skeleton.train(self.training and self.batch_norm)
        tensors = self.width_tensors(width) | unlisted_buffers(self.network, skeleton)
        return functional_call(skeleton, tensors, args, kwargs)

    @torch.no_grad()
    def network_at(self, width: int | Sequence[int], calibration: list[torch.Tensor] | None = None) -> PreTrainedModel:
        """The standalone width-`width` network in eval mode (a trained width's own affine, else interpolated).
        With BatchNorm, its statistics are computed from `calibration`, batches of inputs (required)."""
        config = config_at_width(self.network.config, width if isinstance(width, int) else max(width))
        network = network_class(config)(config).to(self.network.device)
        network.load_state_dict({name: t.detach().clone() for name, t in self.width_tensors(width).items()})
        if self.batch_norm:
            if calibration is None:
                raise ValueError("a nested network with BatchNorm needs calibration= batches for its statistics; "
                                 "use .folded(batches) for one that needs none")  # fmt: skip
            calibrate_batch_norm(network, calibration)
        return network.eval()

    @torch.no_grad()
    def folded(self, calibration: list[torch.Tensor], untrained_statistics: str = "predicted") -> "NestedNetwork":
        """This stage without BatchNorm: every trained width's statistics computed from `calibration` (batches of
        inputs; US-Nets' calibration, done once here) and folded with its affine into the producing layers, as a
        plain nested network whose per-width scales and shifts compute each width exactly. Every width between
        the narrowest trained one and the full one that was not trained gets a row too, with its neighbours'
        affine interpolated (as the stage ran it) and, by `untrained_statistics`, its statistics "predicted"
        without running it (`_predict_rows`: the width stays unseen by any data) or "measured" from `calibration`
        like a trained width's (its calibrated network: where the stage drew every width, `train_nested`'s
        `every_width`, the network it trained)."""
        if untrained_statistics not in ("predicted", "measured"):
            raise ValueError(f"untrained_statistics must be 'predicted' or 'measured', got {untrained_statistics!r}")
        full = self.network_at(self.full_width, calibration)
        low = self.affine.widths[0] if self.affine.widths else self.full_width
        between = [w for w in range(low, self.full_width) if w not in self.affine.widths]
        folded = NestedNetwork(fold_batch_norm(full), self.affine.widths, between).to(self.network.device)
        calibrated = self.affine.widths + (between if untrained_statistics == "measured" else [])
        for width in calibrated:
            row = folded.affine.rows.index(width)
            network = self.network_at(width, calibration)
            plain = fold_batch_norm(network)
            for site in self.sites:  # the same sites as the folded stage's: producing layers keep their names
                conv, norm = site.layer, _norm_after(site.layer)
                size = network.get_submodule(norm).num_features
                scale, _ = self.site_values(site.name, width, size)
                # Width w's folded filter is the shared one's times scale * sigma_full / sigma_w (BatchNorm's weight
                # cancels, so a near-zero one divides nothing); its bias follows from the two folded biases.
                ratio = scale * _deviation(full, norm, size) / _deviation(network, norm, size)
                shift = plain.get_submodule(conv).bias - ratio * folded.network.get_submodule(conv).bias[:size]
                key = _key(site.name)
                folded.affine.log_scale[key][row, :size] = ratio.log()
                folded.affine.shift[key][row, :size] = shift
        if untrained_statistics == "predicted":
            folded._predict_rows(calibration)
        return folded.eval()

    @torch.no_grad()
    def _predict_rows(self, calibration: list[torch.Tensor]):
        """Fill the rows of `affine.predicted` -- widths between trained ones -- of this folded stage without
        running those widths. A folded row is a width's affine and its statistics in one; the stage trained an
        untrained width with its neighbours' affine interpolated, but its statistics are not theirs interpolated:
        they depend on which channels the width adds (on the U-Net, width 17 lost 5 mIoU that way). So the two
        trained neighbours' rows are taken apart into affine and statistics, the affine interpolated as the stage
        did, and the statistics interpolated plus what that interpolation misses of statistics predicted for
        every width from the full network alone: each layer's shared filters applied to the full width's inputs
        to that layer, cut to the channels the width reads (`_layer_statistics`). Exact where a layer's inputs do
        not depend on the width (the first). It costs about one calibration pass per width, and stores one row
        per width."""
        if not self.affine.predicted:
            return
        anchors = [*self.affine.widths, self.full_width]
        measured = {}
        for width in anchors:
            measured |= self._layer_statistics([width], calibration, own_inputs=True)
        from_full = self._layer_statistics(range(anchors[0], self.full_width + 1), calibration, own_inputs=False)
        for width in self.affine.predicted:
            low, high = max(w for w in anchors if w < width), min(w for w in anchors if w > width)
            row = self.affine.rows.index(width)
            for site in self.sites:
                size = self.site_size(site.name, width)
                log_ratio, shift = self._predicted_row(site.name, width, low, high, measured, from_full)
                self.affine.log_scale[_key(site.name)][row, :size] = log_ratio
                self.affine.shift[_key(site.name)][row, :size] = shift

    def _predicted_row(self, site: str, width: int, low: int, high: int, measured: dict, from_full: dict):
        """(log scale, shift) of `site` at `width` between the trained widths `low` and `high` (`_predict_rows`).

        Width w's BatchNorm, with the stage's scale s_w and shift t_w on the shared affine (gamma, beta), folds to
        the row r_w = s_w gamma / d_w, shift_w = s_w beta + t_w - r_w m_w, where m_w and d_w are the mean and
        deviation of the shared layer's outputs (`measured`); at the full width s = 1, t = 0, r = 1 and shift = 0,
        so gamma = d_full and beta = m_full."""
        size, known, fraction = self.site_size(site, width), self.site_size(site, low), (width - low) / (high - low)
        beta, log_gamma = measured[(self.full_width, site)]

        def stage_affine(w):  # (log s_w, t_w) of a trained width, from its row and its statistics
            row_scale, row_shift = self.site_values(site, w, self.site_size(site, w))
            mean, log_deviation = measured[(w, site)]
            log_s = row_scale.double().log() + log_deviation - log_gamma[: len(mean)]
            return log_s, row_shift.double() + row_scale.double() * mean - log_s.exp() * beta[: len(mean)]

        def lerp_neighbours(low_value, high_value):
            return interpolated(low_value, high_value[:size], fraction, known)

        log_s, t = map(lerp_neighbours, stage_affine(low), stage_affine(high))
        mean, log_deviation = (  # the neighbours' interpolated, plus what interpolating the guesses misses
            lerp_neighbours(at_low, at_high) + guess - lerp_neighbours(guess_low, guess_high)
            for at_low, at_high, guess_low, guess, guess_high in zip(
                *(measured[(w, site)] for w in (low, high)), *(from_full[(w, site)] for w in (low, width, high))
            )
        )
        log_ratio = log_s + log_gamma[:size] - log_deviation
        return log_ratio, log_s.exp() * beta[:size] + t - log_ratio.exp() * mean

    def _layer_statistics(self, widths, calibration, own_inputs: bool) -> dict[tuple[int, str], tuple]:
        """Per (width, site name): the per-channel mean and log standard deviation, over `calibration`, of the
        site's producing layer at that width with the shared tensors only (its first channels, no per-width
        scale or shift), applied to what the layer receives in the width's own network (`own_inputs`: one
        width) or in the full network, cut to the channels the width reads."""
        network = self.network_at(widths[0]) if own_inputs else self.network
        sums, hooks = {}, []

        def accumulate(key, layer, channels, module, args):
            inputs = args[0] if channels is None else args[0].index_select(1, channels)
            outputs = layer(inputs).double().movedim(1, 0).flatten(1)  # channels first (convolutions, or [N, C])
            count, total, squares = sums.get(key, (0, 0.0, 0.0))
            sums[key] = count + outputs.shape[1], total + outputs.sum(1), squares + outputs.square().sum(1)

        try:
            for width in widths:
                shared = first_channels(self.network, width)
                for site in self.sites:
                    channels = None if own_inputs else _input_channels(self.network, shared, site.layer)
                    hook = functools.partial(accumulate, (width, site.name), shared.get_submodule(site.layer), channels)
                    hooks.append(network.get_submodule(site.layer).register_forward_pre_hook(hook))
            for inputs in calibration:
                network(inputs.to(self.network.device))
        finally:
            for hook in hooks:
                hook.remove()
        statistics = {}
        for key, (count, total, squares) in sums.items():
            mean = total / count
            # The plain variance, where BatchNorm's running one averages unbiased batch variances plus eps: the
            # difference cancels in `_predict_rows`, which uses these on both sides of each row.
            statistics[key] = mean, 0.5 * (squares / count - mean.square()).clamp_min(1e-12).log()
        return statistics

    def _check_batch_norm_sites(self, group, state):
        """Refuse a BatchNorm network whose group `group` the stage cannot give private statistics per width:
        each of its producing layers must be a plain convolution (what `_predict_rows` reads statistics of: input
        channels on its weight's axis 1, outputs channels first) followed by a BatchNorm of its own, and the
        group may hold no other BatchNorm."""
        network, family = self.network, self.network.config.model_type
        layers = [site.layer for site in self.sites if site.group == group.name]
        for layer in layers:
            module = network.get_submodule(layer)
            plain = type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.groups == 1
            if not (plain and layer.endswith(".conv")):
                raise ValueError(f"channel group {group.name!r} of {family} is produced by {type(module).__name__} "
                                 f"{layer!r}: a BatchNorm nested stage needs a plain convolution there (groups=1, named "
                                 "X.conv beside its BatchNorm X.norm); "
                                 "use nested.enabled=false")  # fmt: skip
        unpaired = set(_norm_layers(network, group, state)) ^ {_norm_after(layer) for layer in layers}
        if unpaired:
            raise ValueError(f"channel group {group.name!r} of {family}: BatchNorm {sorted(unpaired)} does not follow "
                             "exactly one of the group's producing convolutions (X.conv, then X.norm), so no width's "
                             "statistics can be folded there; use nested.enabled=false")  # fmt: skip

    def save_pretrained(self, directory):
        """The shared network -- the full width, a plain network that loads as one (with its model code and
        processor, `publishing.save_network`) -- and, beside it, the narrower widths' affine table (`AFFINE_FILE`)."""
        save_network(self.network, directory)
        tensors = {f"log_scale.{k}": v.detach() for k, v in self.affine.log_scale.items()}
        tensors |= {f"shift.{k}": v.detach() for k, v in self.affine.shift.items()}
        widths, predicted = (",".join(map(str, w)) for w in (self.affine.widths, self.affine.predicted))
        save_file(tensors, Path(directory) / AFFINE_FILE, metadata={"widths": widths, "predicted": predicted})

    @classmethod
    def from_pretrained(cls, directory) -> "NestedNetwork":
        """What `save_pretrained` wrote into `directory`."""
        values = json.loads((Path(directory) / "config.json").read_text())
        network = network_class(target_config(values["model_type"], values)).from_pretrained(directory)
        with safe_open(Path(directory) / AFFINE_FILE, framework="pt") as stored:
            nested = cls(network, _stored_widths(stored), _stored_widths(stored, "predicted"))
            with torch.no_grad():
                for key in nested.affine.log_scale:
                    nested.affine.log_scale[key].copy_(stored.get_tensor(f"log_scale.{key}"))
                    nested.affine.shift[key].copy_(stored.get_tensor(f"shift.{key}"))
        return nested.eval()


def train_nested(
    nested: NestedNetwork,
    teacher: PreTrainedModel | None,
    dataset,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    random_widths: int = 2,
    temperature: float = 1.0,
    seed: int = 0,
    autocast=contextlib.nullcontext,
    every_width: bool = False,
    label_weight: float = 0.0,
    mix_layers: bool = False,
) -> list[float]:
    """Train `nested` with the sandwich rule over its trained widths, every width distilled from `teacher` at
    `temperature` (the task's distillation loss), on `dataset` (the task's inputs, and `labels` for in-place
    distillation); returns the loss per step. `teacher` None: in-place distillation (US-Nets), the full width
    learns the labels and the other widths its predictions of the same step. `autocast`: a context for the
    forward passes (mixed precision, e.g. `Accelerator.autocast`). `every_width`: the random widths are drawn
    from every width between the smallest trained one and the full one (an untrained width runs with its
    neighbours' interpolated scales and shifts), not only from the trained widths. `label_weight` (with a
    teacher): the full width also learns the labels, with this weight beside its distillation. `mix_layers` (stock
    models, whose layers' widths are independent): the last random width of each step is one width per layer,
    each drawn on its own, so that mixed networks (mix'n'match) are trained too."""
    if label_weight and teacher is None:
        raise ValueError("label_weight is for a stage with a teacher: in place, the full width learns the labels only")
    if mix_layers and not random_widths:
        raise ValueError("mix_layers replaces the last random width of each step: it needs random_widths >= 1")
    task = task_for(nested.network.config, type(nested.network))
    widths = sorted({*nested.affine.widths, nested.full_width})  # the full width has no affine row
    drawn = list(range(widths[0], widths[-1] + 1)) if every_width else widths
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=generator)  # fmt: skip
    steps = math.ceil(epochs * len(loader))
    optimizer = torch.optim.AdamW(nested.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    device = next(nested.parameters()).device
    if teacher is not None:  # run under no_grad, not frozen: a later stage may be cut from the same network
        teacher = teacher.to(device).eval()
    nested.train()
    losses = []
    progress = progress_bar(total=steps, desc="nested stage", unit="step")
    while len(losses) < steps:
        for batch in loader:
            inputs = batch[task.input_name].to(device)
            shared = task.shared_inputs(nested.network.config, inputs, generator)
            narrower = [widths[0]] + [rng.choice(drawn) for _ in range(random_widths)]
            if mix_layers:
                narrower[-1] = [rng.choice(drawn) for _ in nested.groups]
            with autocast():
                full = nested(widths[-1], inputs, **shared)
                if teacher is None:
                    loss, target = task.loss(full, batch["labels"].to(device)), detached(full)
                else:
                    with torch.no_grad():
                        target = teacher(inputs, **shared)
                    loss = task.distillation(full, target, temperature)
                    if label_weight:
                        loss = loss + label_weight * task.loss(full, batch["labels"].to(device))
                loss = loss + sum(
                    task.distillation(nested(width, inputs, **shared), target, temperature) for width in narrower
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"nested stage: the loss became {losses[-1]} at step {len(losses)}; "
                                         f"lower the learning rate (now {learning_rate})")  # fmt: skip
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if len(losses) == steps:
                break
    progress.close()
    nested.eval()
    return losses


def trained_widths(directory) -> list[int]:
    """The widths below the full one that the nested stage saved in `directory` has a table row for."""
    with safe_open(Path(directory) / AFFINE_FILE, framework="pt") as stored:
        return _stored_widths(stored)


def _stored_widths(stored, kind: str = "widths") -> list[int]:
    """A table file's trained widths (`kind` "widths") or predicted ones ("predicted"; none in older files)."""
    return [int(w) for w in stored.metadata().get(kind, "").split(",") if w]


def _input_channels(network: PreTrainedModel, narrower: PreTrainedModel, layer: str) -> torch.Tensor:
    """Which input channels of `network`'s module `layer` (its weight's axis 1) the same module of `narrower`
    reads, in its order: the cut `nested_weights` makes, applied to a weight holding each channel's index."""
    weight = network.get_submodule(layer).weight
    index = torch.arange(weight.shape[1], device=weight.device).view(1, -1, *[1] * (weight.dim() - 2))
    cut = nested_weights(network, narrower, {f"{layer}.weight": index.expand(weight.shape)})[f"{layer}.weight"]
    return cut[0].reshape(cut.shape[1], -1)[:, 0]


def detached(output):
    """A model output with every tensor cut from the graph: a teacher that is not trained through."""
    return type(output)(**{key: value.detach() if torch.is_tensor(value) else value for key, value in output.items()})
