"""NeuMetaModel: a hypernetwork that generates a working family network of any width in its range."""

import functools
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch.func import functional_call
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import SAFE_WEIGHTS_NAME, ModelOutput, logging

from .configuration_neumeta import MAX_WIDTH, NeuMetaConfig, as_integer, check_num_samples
from .folding import fold_batch_norm
from .inr import FourierFeatures, NeuMetaINR, WidthAffineINR
from .morph import Coordinates, MorphSpec, leading_channels, resample_channels
from .nested import WidthAffine, affine_sites, fold_scale_and_shift, site_size
from .progress import progress_bar
from .pruning import mixed_layers
from .publishing import (
    attach_card, base_card_license, load_preprocessor, looks_like_hub_id, push_hypernetwork, sampled_network_card,
)
from .smoothing import smooth_channels
from .targets import (
    architecture_class, discover_layout, is_known, layer_widths, multiply_accumulates, target, task_for,
)
from .tasks import PICTURES

logger = logging.get_logger(__name__)

HIDDEN_SIZES = (256, 128, 64, 32, 16, 8)  # from_base_model's choices of INR width, the paper's first


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity (integer tensors never do)."""
    return [name for name, tensor in tensors.items() if not tensor.isfinite().all()]


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as transformers configs write it ("bfloat16")."""
    return str(dtype).removeprefix("torch.")


def build_inr(spec: MorphSpec, config: NeuMetaConfig, hidden_size: int) -> NeuMetaINR:
    """The INR that `config` describes for the tensors of `spec`, `hidden_size` wide."""
    return NeuMetaINR(
        spec.kernel_sizes,
        hidden_size=hidden_size,
        num_layers=config.num_layers,
        num_frequencies=config.num_frequencies,
        size_frequencies=config.size_frequencies,
        residual_scale=config.residual_scale,
        shared_trunk=config.shared_trunk,
        affine_sites=len(affine_sites(spec.meta_network(spec.full_width))) if config.width_affine else 0,
    )


def fitting_hidden_size(config: NeuMetaConfig, base_parameters: int) -> int:
    """The widest of `HIDDEN_SIZES` whose INR has at most `base_parameters` parameters (else the narrowest): a
    hypernetwork is no larger than the network it generates unless asked to be (hidden_size=...)."""
    spec = MorphSpec(config.family_config_object(), config.fold_fixed_axes)
    for hidden_size in HIDDEN_SIZES:
        with torch.device("meta"):  # shapes only: nothing allocated
            size = sum(p.numel() for p in build_inr(spec, config, hidden_size).parameters())
        if size <= base_parameters:
            break
    if hidden_size != config.hidden_size:
        logger.info("INR hidden_size %d: at most the base network's %s parameters (pass hidden_size= for another)",
                    hidden_size, f"{base_parameters:,}")  # fmt: skip
    return hidden_size

_MIN_TARGET_RMS = 0.01
# Multiply-adds above which averaging shows a progress bar: a few seconds on a CPU.
_PROGRESS_WORK = 1e11
# Rows per INR call in gradient-free generation (NeuMetaModel._inr_rows). Big enough that every matrix product
# is a large one (64k x hidden x hidden: per-call overhead negligible, on a GPU too); small enough that one
# chunk's activations stay under 1 GB whatever the generated network's width: 4 KB a row at hidden size 256,
# 10 KB with 768-value rows (fold_fixed_axes on ViT-B), so 0.25-0.7 GB.
CHUNK_ROWS = 2**16


@dataclass
class NeuMetaOutput(ModelOutput):
    """Output of `NeuMetaModel.forward`: the generated network's loss and logits, its whole output (whatever its
    task returns, e.g. a VAE's posterior) and its generated tensors."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    network_output: ModelOutput | None = None
    weights: dict[str, torch.Tensor] | None = None


def _memory_size(device: torch.device) -> int | None:
    """Total memory of `device` in bytes (the machine's physical memory for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or not these names
        return None


class NeuMetaModel(PreTrainedModel):
    """An implicit neural representation of a family of networks, plus the frozen parts they share.

    Holds the INR and the full-width base network (BatchNorm folded, channels permuted): its generated tensors
    serve as reconstruction targets, its other tensors are copied into every sampled network. Build one with
    `from_base_model`, train it (training/train.py), then `sample_model(width)`.
    """

    config_class = NeuMetaConfig
    main_input_name = "pixel_values"
    base_model_prefix = "neumeta"

    def __init__(self, config: NeuMetaConfig):
        super().__init__(config)
        self.spec = MorphSpec(config.family_config_object(), config.fold_fixed_axes)
        self.base_network = self.spec.model_class(self.spec.family_config)
        self.base_network.requires_grad_(False)
        self.inr = build_inr(self.spec, config, config.hidden_size)
        # With width_affine: the nested stage's per-width scales and shifts (`adopt_width_affine`), frozen; the
        # INR generates a correction to them, so that a trained width starts as the stage made it and an unseen
        # one between its two trained neighbours.
        self.affine_sites = affine_sites(self.spec.meta_network(self.spec.full_width)) if config.width_affine else []
        self.width_affine_table = self._build_width_affine_table() if config.width_affine else None
        # Per generated tensor: the size of one unit of the INR's raw output (see calibrate_output_scale).
        self.register_buffer("output_scale", torch.ones(len(self.spec.tensors)))
        # What the base came with to feed it (a stock model's image processor or tokenizer): saved beside the
        # hypernetwork and every sampled network.
        self.preprocessor = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, NeuMetaINR):
            for weight in (module.position_weight, module.context_weight, module.hidden_weight, module.output_weight):
                init.normal_(weight, std=(2.0 / weight.shape[-2]) ** 0.5)  # He, per head
            # A random embedding per tensor; zero biases elsewhere.
            init.normal_(module.input_bias, std=0.1)
            init.zeros_(module.hidden_bias)
            init.zeros_(module.output_bias)
            init.constant_(module.residual_scale, self.config.residual_scale)
        elif isinstance(module, WidthAffineINR):
            for weight in (module.input_weight, module.hidden_weight):
                init.normal_(weight, std=(2.0 / weight.shape[0]) ** 0.5)
            init.normal_(module.group_embedding, std=0.1)
            init.zeros_(module.hidden_bias)
            init.zeros_(module.output_weight)  # no correction: the table's scales and shifts
            init.zeros_(module.output_bias)
        elif isinstance(module, FourierFeatures):
            # Non-persistent buffers: from_pretrained builds on the meta device and never loads them.
            init.copy_(module.frequencies, FourierFeatures.values(len(module.frequencies)))
        elif isinstance(module, NeuMetaModel):
            init.ones_(module.output_scale)
        elif any(module is m for m in self.base_network.modules()):
            self.base_network._init_weights(module)

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_base_model(
        cls,
        base_model: PreTrainedModel | str | os.PathLike,
        width_range: tuple[int, int] | None = None,
        morph: str = "all",
        smooth: bool = True,
        preprocessor=None,
        **config_overrides,
    ) -> "NeuMetaModel":
        """A hypernetwork around a trained full-width network: one of neumeta-hf's families, or a stock
        transformers model whose `model_type` has a width rule (`neumeta_hf.targets.WIDTH_RULES`: ViT, DeiT,
        BERT, RoBERTa, DistilBERT, Llama, Mistral, Qwen2/3, Gemma, GPT-2), whose feed-forward width then varies.

        `base_model` is the network, or a local directory or Hub id to load it from (its class from its
        config); a stock model's image processor or tokenizer found there travels with the hypernetwork and
        every network sampled from it, unless `preprocessor` gives another.

        Folds BatchNorm, permutes hidden channels for smoothness (`smooth=True`, checked to keep the
        function), stores the result as frozen weights and reconstruction targets, and scales the INR's
        outputs so that, untrained, it generates tensors with the base network's magnitudes at every width.
        `config_overrides` are any other `NeuMetaConfig` fields (`hidden_size`, `train_widths`, ...).
        """
        if isinstance(base_model, (str, os.PathLike)):
            source = os.fspath(base_model)
            base_config = AutoConfig.from_pretrained(source)
            kind = target(base_config.model_type) if is_known(base_config.model_type) else None  # None: stock
            model_class = kind.network_class(base_config) if kind else architecture_class(base_config)
            base_model = model_class.from_pretrained(source)
            if preprocessor is None and not (kind and kind.needs_remote_code):
                preprocessor = load_preprocessor(source)
        if any(tensor.is_meta for tensor in base_model.state_dict().values()):
            raise ValueError("the base network is on the meta device (shapes without weights): load it with "
                             "from_pretrained, or give it weights (to_empty, then load_state_dict) first")  # fmt: skip
        damaged = non_finite_tensors(base_model.state_dict())
        if damaged:
            raise ValueError(f"the base network's {', '.join(damaged)} contain NaN or infinite values: it cannot be "
                             "morphed (its function is undefined); check how it was trained or saved")  # fmt: skip
        layout = None
        if not is_known(base_model.config.model_type):
            layout = discover_layout(base_model)
            target(base_model.config.model_type)  # none fits: the error that lists what is supported
        base = fold_batch_norm(base_model)
        config = NeuMetaConfig(
            family=base.config.model_type,
            # The dtype its weights are in (a model cast in memory may say none): what sampled networks are stored in.
            family_config=target(base.config.model_type).base_config_values(base) | {"dtype": dtype_name(base.dtype)},
            width_range=list(width_range) if width_range is not None else None,
            morph=morph,
            # A Hub id only: a local path means nothing elsewhere (and would be published with the config).
            **{"trained_steps": 0, "base_model": base_model.name_or_path if looks_like_hub_id(base_model.name_or_path) else None,
               "license": base_card_license(base_model.name_or_path), "width_layout": layout, **config_overrides},
        )
        if "hidden_size" not in config_overrides:
            config.hidden_size = fitting_hidden_size(config, base.num_parameters())
        model = cls(config)
        if smooth and config.anchor_channels == "first":
            raise ValueError(
                'anchor_channels="first" anchors width w on the base\'s first w channels, in the order they were '
                "trained (a slimmable network's); the smoothing permutation would reorder them: pass smooth=False"
            )
        if smooth:
            config.smoothing = smooth_channels(base, model.spec.groups)
            logger.info(
                "Channel permutation: total variation %.4g -> %.4g",
                config.smoothing["total_variation_before"],
                config.smoothing["total_variation_after"],
            )
        model.base_network.load_state_dict(base.state_dict(), strict=True)
        model.calibrate_output_scale()
        model.preprocessor = preprocessor
        return model

    @torch.no_grad()
    def calibrate_output_scale(self):
        """Scale each tensor's raw INR output so that one unit is the RMS of its target tensor.

        With `base_anchor`, the INR's output layer then starts at zero: the untrained hypernetwork generates
        the base network resampled to each width. Without it, the untrained INR's full-width generation
        has the targets' RMS.
        """
        self.output_scale.fill_(1.0)
        coordinates = self.spec.coordinates(self.config.full_width, self.output_scale.device)
        raw = self._inr_rows(coordinates, coordinates.positions())  # in chunks: calibration runs without gradients
        raw = raw.split(coordinates.row_counts)
        targets = self.reconstruction_targets()
        for index, (name, kernel) in enumerate(zip(self.spec.names, self.spec.kernel_sizes)):
            # An all-zero target (e.g. untrained biases) still needs a non-zero scale to be learnable.
            target_rms = targets[name].pow(2).mean().sqrt().clamp_min(_MIN_TARGET_RMS)
            self.output_scale[index] = target_rms / raw[index][:, :kernel].pow(2).mean().sqrt().clamp_min(1e-12)
        if self.config.base_anchor:
            self.inr.output_weight.zero_()
            self.inr.output_bias.zero_()

    # -------------------------------------------------------------------------------------------- generation

    def check_width(self, width) -> int:
        """`width` as an int; TypeError/ValueError for non-integers and widths below 1, a warning outside the
        trained range (the network is then extrapolated)."""
        low, high = self.config.width_range
        width = as_integer(width, "width", f" (trained range {low}-{high})")
        if width < 1:
            raise ValueError(f"width must be at least 1 (trained range {low}-{high}), got {width}")
        if width > MAX_WIDTH:
            raise ValueError(f"width {width:,} is beyond any network that could exist (at most {MAX_WIDTH:,}); the "
                             f"trained range is {low}-{high}")  # fmt: skip
        if not low <= width <= high:
            warnings.warn(f"width {width} is outside the trained range {low}-{high}: the network is extrapolated")
        return width

    @torch.no_grad()
    def generate_weights(
        self,
        width: int,
        num_samples: int = 1,
        noise: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The generated tensors of the width-`width` network, by name.

        With `num_samples > 1`, the average of one noise-free generation and `num_samples - 1` with uniform
        coordinate noise of amplitude `noise` (default: `config.coordinate_noise`), drawn from `generator`.
        The full width is always generated once, without noise. `num_samples` below 1 is a ValueError, a width
        whose generation cannot fit in the device's memory a MemoryError (estimated before generating), and
        non-finite results a RuntimeError naming the tensors (a damaged hypernetwork).
        """
        return self._averaged_weights(self.check_width(width), num_samples, noise, generator)

    def _averaged_weights(self, width: int, num_samples, noise, generator) -> dict[str, torch.Tensor]:
        """`generate_weights` for a checked width (sample_model checks it itself)."""
        num_samples = check_num_samples(num_samples)
        if width == self.config.full_width:
            # Training fits the full width exactly, without noise: jittered copies would only blur it.
            num_samples = 1
        noise = self.config.coordinate_noise if noise is None else noise
        weights = self._generate(width, num_samples, noise, generator, first_noise_free=True)
        damaged = non_finite_tensors(weights)
        if damaged:
            raise RuntimeError(
                f"generated tensors {', '.join(damaged)} of width {width} contain NaN or infinite values: the "
                "hypernetwork's weights are damaged (a diverged training run or a corrupt checkpoint)"
            )
        return weights

    def generate(self, width: int, noise: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """One generation of the width-`width` tensors with coordinate noise `noise`, differentiable (for
        training; `generate_weights` is the inference path)."""
        return self._generate(width, 1, noise, generator, first_noise_free=False)

    def _generate(self, width, num_samples, noise, generator=None, first_noise_free=True):
        device = self.output_scale.device
        memory, work = self.generation_cost(width, chunked=not torch.is_grad_enabled())
        limit = _memory_size(device)
        if limit is not None and memory > limit:
            raise MemoryError(
                f"width {width} needs about {memory / 1e9:.1f} GB, more than the {limit / 1e9:.1f} GB of memory "
                f"of {device}; choose a smaller width"
            )
        coordinates = self.spec.coordinates(width, device)
        total = None
        samples = range(num_samples)
        if num_samples > 1 and num_samples * work > _PROGRESS_WORK:
            samples = progress_bar(samples, desc=f"averaging width {width}", unit="sample", leave=False)
        # One generation at a time: memory stays that of a single sample, whatever num_samples is.
        for sample in samples:
            sample_noise = 0.0 if (sample == 0 and first_noise_free) else noise
            jitter = coordinates.draw_jitter(sample_noise, generator)
            raw = self._inr_rows(coordinates, coordinates.positions(jitter))
            weights = self._unpack(raw, coordinates, jitter)
            if total is None:
                total = weights
            else:
                for name, tensor in weights.items():
                    total[name] = total[name].add_(tensor) if not torch.is_grad_enabled() else total[name] + tensor
        total = {name: tensor / num_samples for name, tensor in total.items()} if num_samples > 1 else total
        return self._fold_width_affine(total, width) if self.inr.width_affine is not None else total

    def parameter_counts(self) -> dict[str, int]:
        """What this hypernetwork holds besides the base network it reads, against the full-width network it
        generates: the INR's parameters, and (with `config.width_affine`) the nested stage's table of per-width
        scales and shifts, one row per trained width or width filled when the stage was folded."""
        table = self.width_affine_table
        return {
            "inr_parameters": sum(p.numel() for p in self.inr.parameters()),
            "width_table_parameters": sum(p.numel() for p in table.parameters()) if table is not None else 0,
            "width_table_rows": len(table.rows) if table is not None else 0,
            "full_network_parameters": sum(p.numel() for p in self.spec.skeleton(self.config.full_width).parameters()),
        }

    def _build_width_affine_table(self) -> WidthAffine:
        sizes = {site.name: site.size for site in self.affine_sites}  # read from the full-width network
        table = WidthAffine(sizes, self.config.train_widths, self.config.full_width, self.config.predicted_widths or [])
        return table.requires_grad_(False)

    def _site_size(self, site_name: str, width: int) -> int:
        """How many channels a site of the per-width scales and shifts (its scaling group) has at `width`."""
        return site_size(self.spec.meta_network(width), site_name)

    def width_affine_values(self, site: str, width: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of a site's first `size` channels at `width` (`config.width_affine`; the sites are
        `nested.affine_sites`): the nested stage's (its table's row, or its two nearest rows interpolated),
        corrected by the generated log scale and shift."""
        scale, shift = self.width_affine_table.values(site, width, size, lambda w: self._site_size(site, w))
        correction = self._width_affine_rows(*self._width_affine_coordinates([(site, width, size)]))
        return scale * correction[:, 0].exp(), shift + correction[:, 1]

    def _width_affine_coordinates(self, blocks: list[tuple[str, int, int]]) -> tuple[torch.Tensor, ...]:
        """Every channel of every (site, width, size) block, stacked: its site's index, its position over the
        site's full-width size and its width."""
        names = [site.name for site in self.affine_sites]
        full_sizes = {site.name: site.size for site in self.affine_sites}  # read from the full-width network
        sites, positions, widths = [], [], []
        for site, width, size in blocks:
            positions.append(torch.arange(size) / full_sizes[site])
            sites += [names.index(site)] * size
            widths += [width] * size
        device = self.output_scale.device
        return torch.tensor(sites, device=device), torch.cat(positions).to(device), torch.tensor(widths, device=device)

    def _width_affine_rows(self, sites, positions, widths) -> torch.Tensor:
        """[rows, 2]: the generated log-scale and shift corrections at those coordinates, tapered linearly from
        the smallest width of the range to nothing at the full width (which stays the network the hypernetwork
        was built around)."""
        low, full = self.config.width_range[0], self.config.full_width
        taper = (full - widths).float() / max(1, full - low)
        return self.inr.width_affine(sites, positions, widths.float() / full) * taper[:, None]

    @torch.no_grad()
    def adopt_width_affine(self, nested):
        """Take the per-width scales and shifts of a nested stage (`nested.NestedNetwork`, whose shared network
        this hypernetwork was built around) as the table the generated corrections apply to: its trained widths'
        rows, and the rows it filled for widths between them when folded (`config.predicted_widths` follows)."""
        if self.width_affine_table is None:
            raise ValueError("adopt_width_affine needs a hypernetwork built with width_affine=True")
        if nested.affine.widths != self.width_affine_table.widths:
            raise ValueError(
                f"the nested stage was trained at widths {nested.affine.widths}, the hypernetwork's train_widths are "
                f"{self.width_affine_table.widths} (less the full width): build it with the stage's widths"
            )
        if nested.affine.predicted != self.width_affine_table.predicted:  # rows the stage filled when folded
            self.config.predicted_widths = list(nested.affine.predicted)
            self.width_affine_table = self._build_width_affine_table().to(self.output_scale)
        self.width_affine_table.load_state_dict(nested.affine.state_dict())

    def _fold_width_affine(self, weights: dict, width: int) -> dict:
        values = lambda site, size: self.width_affine_values(site, width, size)  # noqa: E731
        return fold_scale_and_shift(self.spec.meta_network(width), weights, values)

    def _inr_rows(self, coordinates: Coordinates, positions: torch.Tensor) -> torch.Tensor:
        """The INR's raw output for every row of `coordinates` (at `positions`), as `_unpack` takes it.

        With gradients (training) the INR runs on all rows at once. Without, it runs on at most `CHUNK_ROWS`
        rows at a time, cut at tensor boundaries and inside large tensors, each chunk written into one
        preallocated `[rows, max kernel size]` result: the memory is that of the outputs plus one chunk's
        activations, whatever the width.
        """
        context, row_counts = coordinates.context, coordinates.row_counts
        if torch.is_grad_enabled():
            return self.inr(positions, context, row_counts)
        raw = positions.new_empty(len(positions), max(self.spec.kernel_sizes))
        ends = torch.tensor(row_counts).cumsum(0).tolist()  # where each tensor's rows end
        for start in range(0, len(positions), CHUNK_ROWS):
            end = min(start + CHUNK_ROWS, len(positions))
            # The chunk's tensors: from the first that ends after `start` to the first that ends at or after `end`.
            first = next(t for t, stop in enumerate(ends) if stop > start)
            last = next(t for t, stop in enumerate(ends) if stop >= end)
            counts = tuple(min(end, ends[t]) - max(start, ends[t] - row_counts[t]) for t in range(first, last + 1))
            rows = self.inr(positions[start:end], context[first : last + 1], counts, first_tensor=first)
            raw[start:end] = rows[:, : raw.shape[1]]
        return raw

    def fingerprint(self) -> str:
        """A hash of every stored tensor (INR and base weights, by name, dtype and bytes): what a sweep records,
        so that its figures are shown and published only beside the hypernetwork they were measured on."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def generation_cost(self, width: int, chunked: bool = False) -> tuple[int, int]:
        """(bytes of memory, multiply-adds) of one generation at `width`, estimated from its INR row count
        without building anything, so that an absurd width is refused at once rather than in the allocator.
        `chunked`: the INR runs `CHUNK_ROWS` rows at a time (generation without gradients, see `_inr_rows`)."""
        rows = self.spec.row_count(width)
        hidden, layers = self.config.hidden_size, self.config.num_layers
        features, outputs = self.inr.position_weight.shape[1], self.inr.output_weight.shape[-1]
        work = rows * hidden * (features + layers * hidden + outputs)
        # Measured peak on CPU (activations, coordinates, outputs), within 20% across families and INR sizes.
        per_row = 4 * (3 * hidden + features + 3 * outputs) + 64
        if not chunked:
            return rows * per_row, work
        # Activations for one chunk; for every row its coordinates (96 bytes while built and jittered) and four
        # float32 copies of its values: raw rows, generated tensors, one temporary, the running sum of
        # num_samples > 1. Measured peaks on CPU: 30-115% of it (30-45% for ViT-B, folded or not; up to 115% for
        # generations of a few MB, where the allocator's overhead counts).
        values = rows * max(self.spec.kernel_sizes)
        return min(rows, CHUNK_ROWS) * per_row + rows * 96 + values * 4 * 4, work

    def _unpack(self, raw: torch.Tensor, coordinates: Coordinates, jitter=None) -> dict[str, torch.Tensor]:
        """Raw INR rows -> tensors: scaled and multiplied by (full-width fan-in / fan-in) ** fan_in_power, plus,
        when `base_anchor` is set, the base tensor at this width: resampled at the same (jittered) channel
        positions and scaled alike (`anchor_channels="resampled"`), or its first channels as they are ("first")."""
        fan_in_scales = coordinates.fan_in_ratio**self.config.fan_in_power
        pieces = raw.split(coordinates.row_counts)
        targets = self.reconstruction_targets() if self.config.base_anchor else {}
        weights = {}
        for index, (tensor_spec, piece, kernel, shape) in enumerate(
            zip(self.spec.tensors, pieces, self.spec.kernel_sizes, coordinates.shapes)
        ):
            tensor = tensor_spec.from_rows(piece[:, :kernel], shape) * self.output_scale[index]
            target = targets.get(tensor_spec.name)
            if target is None:
                tensor = tensor * fan_in_scales[index]
            else:
                segments = tuple(zip(self.spec.full_segments[index], coordinates.segments[index]))
                if self.config.anchor_channels == "first":
                    tensor = tensor * fan_in_scales[index] + leading_channels(target, shape, segments)
                else:
                    offsets = coordinates.axis_jitter(jitter, index)
                    tensor = (tensor + resample_channels(target, shape, offsets, segments)) * fan_in_scales[index]
            weights[tensor_spec.name] = tensor.to(self.output_scale.dtype)  # the hypernetwork's dtype
        return weights

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """The base network's tensors that every width shares (all but the generated ones), for
        `functional_call`: parameters and every buffer, non-persistent ones included (e.g. Llama's rotary
        frequencies), which a network on the meta device does not have."""
        generated = set(self.spec.names)
        tensors = dict(self.base_network.named_parameters()) | dict(self.base_network.named_buffers())
        return {name: tensor for name, tensor in tensors.items() if name not in generated}

    def reconstruction_targets(self) -> dict[str, torch.Tensor]:
        """The permuted base network's values of the generated tensors (what width `full_width` should give)."""
        state = self.base_network.state_dict()
        return {name: state[name] for name in self.spec.names}

    def forward(
        self,
        inputs: torch.Tensor | None = None,
        width: int | None = None,
        labels: torch.Tensor | None = None,
        noise: float | None = None,
        generator: torch.Generator | None = None,
        **network_inputs,
    ) -> NeuMetaOutput:
        """Run a batch of `inputs` (pixel values, or a language model's token ids: the network's first argument,
        also accepted by its own name, `pixel_values=` / `input_ids=`, as the network takes it) through the
        width-`width` network built from freshly generated tensors.

        Differentiable end to end: one backward pass reaches the INR; the frozen tensors take no gradient.
        Coordinate noise (default `config.coordinate_noise` in training mode, none in eval mode) is applied.
        `network_inputs` go to the network's forward as they are (e.g. a VAE's posterior noise).
        """
        input_name = task_for(self.spec.family_config, self.spec.model_class).input_name
        if inputs is None:
            inputs = network_inputs.pop(input_name, None)
        if inputs is None or width is None:
            raise TypeError(f"forward needs the inputs (first, or as {input_name}=) and width=, e.g. "
                            f"hyper({input_name}=batch, width={self.config.width_range[0]})")  # fmt: skip
        width = self.check_width(width)
        if noise is None:
            noise = self.config.coordinate_noise if self.training else 0.0
        weights = self.generate(width, noise, generator)
        outputs = functional_call(
            self.spec.meta_network(width),
            {**self.frozen_tensors(), **weights},
            (inputs,),
            {"labels": labels, **network_inputs},
        )
        return NeuMetaOutput(loss=outputs.loss, logits=outputs.logits, network_output=outputs, weights=weights)

    @torch.no_grad()
    def sample_model(
        self, width: int | None = None, num_samples: int | None = None, seed: int = 0, widths: list[int] | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> PreTrainedModel:
        """A standalone network of width `width` in eval mode; same arguments, bit-identical weights.

        For a family it is the family's network: its config carries `width`, the labels and the input
        normalisation, and `save_pretrained` writes an image processor beside it, so the saved directory works
        with `pipeline("image-classification")`. For a stock transformers model it is an instance of the base
        model's own class whose config has the feed-forward width (`intermediate_size`) set to `width`; saved,
        it needs no remote code. Both write a model card naming the hypernetwork and the width.

        `widths` instead of `width` (stock models): one feed-forward width per layer (MatFormer's mix'n'match).
        The network's `intermediate_size` is then the largest of them and each narrower layer's extra hidden
        units are zero, which computes exactly the mixed network (at the widest layer's cost: stock configs
        have one width for all layers); `config.neumeta_layer_widths` records the widths.
        `num_samples` defaults to `config.num_samples`; errors are those of `generate_weights`.

        `dtype` is what the network is stored in; by default the base network's (a bfloat16 base gives bfloat16
        networks), or the hypernetwork's own where it was loaded in a narrower one (`from_pretrained(...,
        dtype=torch.bfloat16)`). Weights are generated in the hypernetwork's dtype, then cast.
        """
        if (width is None) == (widths is None):
            raise TypeError("sample_model takes either width or widths (one per layer)")
        dtype = self._sampled_dtype(dtype)
        num_samples = self.config.num_samples if num_samples is None else num_samples
        if widths is None:
            width = self.check_width(width)
            weights = self._averaged_weights(width, num_samples, None, self._generator(seed))
        else:
            widths = self._check_layer_widths(widths)
            width = max(widths)
            weights = self._mixed_weights(widths, num_samples, seed)
        generated = set(self.spec.names)
        state = {
            name: tensor.detach().clone()
            for name, tensor in self.base_network.state_dict().items()
            if name not in generated
        }
        network = self.spec.skeleton(width)
        network.load_state_dict(state | weights, strict=True, assign=True)
        # A network built on the meta device has no non-persistent buffers (Llama's rotary frequencies) and,
        # loaded by assignment, no longer shares tied tensors (GPT-2's embeddings and output layer).
        for name, buffer in self.base_network.named_buffers():
            if name not in state and name not in generated:
                module, _, leaf = name.rpartition(".")
                network.get_submodule(module).register_buffer(leaf, buffer.clone(), persistent=False)
        network.tie_weights()
        if widths is not None:
            network.config.neumeta_layer_widths = widths
        network.to(dtype).config.dtype = dtype_name(dtype)
        network.preprocessor = self.preprocessor  # saved beside it (`publishing.save_preprocessor`)
        # Rendered by save_pretrained / push_to_hub (`publishing.attach_card` again replaces it with a card that has
        # measured metrics). It shows the pictures a local hypernetwork directory holds, copied beside it.
        source = Path(self.name_or_path) if self.name_or_path else None
        pictures = {name: source / name for name in PICTURES if source is not None and (source / name).is_file()}
        card = functools.partial(
            sampled_network_card, network, hypernetwork=self.name_or_path or None, pictures=list(pictures),
            license=self.config.license,
        )
        attach_card(network, card, pictures)
        return network.eval()

    def _sampled_dtype(self, dtype: torch.dtype | str | None) -> torch.dtype:
        """`sample_model`'s `dtype`: as given (a torch dtype or its name), else the hypernetwork's own when below
        float32, else the base network's (`family_config["dtype"]`, float32 when a config saved before it was
        recorded has none)."""
        if dtype is None:
            base = self.config.family_config.get("dtype") or "float32"
            return self.dtype if self.dtype.itemsize < 4 else getattr(torch, base)
        chosen = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(chosen, torch.dtype) or not chosen.is_floating_point:
            raise ValueError(
                f"dtype must be a floating-point torch dtype or its name (bfloat16, float16, float32), got {dtype!r}"
            )
        return chosen

    def width_for_budget(self, max_parameters: int | None = None, max_macs: int | None = None) -> int:
        """The widest width of the trained range whose network fits the budget: at most `max_parameters`
        parameters and at most `max_macs` multiply-accumulates per example (`targets.multiply_accumulates`: one
        image, or one token of a text model). A ValueError names the smallest network's figures when none fits."""
        budgets = {"max_parameters": max_parameters, "max_macs": max_macs}
        if all(value is None for value in budgets.values()):
            raise TypeError("width_for_budget needs max_parameters, max_macs or both")
        measures = {  # from meta networks: structure, no storage
            "max_parameters": lambda width: sum(p.numel() for p in self.spec.skeleton(width).parameters()),
            "max_macs": lambda width: multiply_accumulates(self.spec.skeleton(width)),
        }
        measures = {name: measure for name, measure in measures.items() if budgets[name] is not None}

        def fits(width):
            return all(measure(width) <= budgets[name] for name, measure in measures.items())

        low, high = self.config.width_range
        if not fits(low):
            figures = ", ".join(f"{name}={budgets[name]:,}" for name in measures)
            sizes = ", ".join(f"{measure(low):,} {name.removeprefix('max_')}" for name, measure in measures.items())
            raise ValueError(f"{figures}: the smallest network of the trained range (width {low}) has {sizes}")
        while low < high:  # parameters and MACs grow with the width: bisect for the widest that fits
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        return low

    def _generator(self, seed: int) -> torch.Generator:
        seed = as_integer(seed, "seed", " from 0 to 2**64 - 1 (the coordinate noise's random generator)")
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got {seed}")
        return torch.Generator(self.output_scale.device).manual_seed(seed)

    def _check_layer_widths(self, widths) -> list[int]:
        layers = len(self.spec.scaling_groups)
        return [self.check_width(width) for width in layer_widths(self.config.family, widths, layers)]

    def _mixed_weights(self, widths: list[int], num_samples: int, seed: int) -> dict[str, torch.Tensor]:
        """Each layer's tensors generated at that layer's width, zero-padded to the widest layer's shapes."""
        generated = {w: self._averaged_weights(w, num_samples, None, self._generator(seed)) for w in set(widths)}
        # In a stock model every generated tensor follows exactly one group: its layer's hidden units.
        layer_of = {tensor.name: (tensor.out_groups or tensor.in_groups)[0] for tensor in self.spec.tensors}
        return mixed_layers(generated, layer_of, widths)

    def push_to_hub(
        self,
        repo_id: str,
        sweep: dict | None = None,
        sweep_plot: str | None = None,
        training: dict | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token=None,
        pictures: list[str] | None = None,
        allow_untrained: bool = False,
    ):
        """Upload config, weights, model card (with the sweep table when given), the sweep plot and `pictures`
        (files named as in `tasks.PICTURES`, from `evaluation.write_pictures`) in one commit
        (`publishing.push_hypernetwork`). A failed upload raises and changes nothing locally; an untrained
        hypernetwork (`config.trained_steps` 0) is refused unless `allow_untrained`."""
        return push_hypernetwork(
            self, repo_id, sweep=sweep, sweep_plot=sweep_plot, training=training, commit_message=commit_message,
            private=private, token=token, pictures=pictures, allow_untrained=allow_untrained,
        )  # fmt: skip

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the base's preprocessor (image processor or tokenizer).

        Written into a sibling directory first and moved into place file by file once complete, so that a failed
        write (a full disk) leaves what `save_directory` held before intact, and says so, with the size needed."""
        if not kwargs.get("is_main_process", True) or kwargs.get("push_to_hub"):  # the Hub repo is named after it
            return super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            super().save_pretrained(partial, *args, **kwargs)
            if self.preprocessor is not None:
                self.preprocessor.save_pretrained(partial)
        except (OSError, SafetensorError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            size = sum(tensor.numel() * tensor.element_size() for tensor in self.state_dict().values())
            kept = "what it held before is intact" if target.exists() else "nothing was written there"
            raise OSError(f"saving the hypernetwork to {target} failed ({error}); {kept}. It needs about "
                          f"{size / 1e6:.1f} MB free on that disk") from error  # fmt: skip
        target.mkdir(parents=True, exist_ok=True)
        for path in partial.iterdir():
            os.replace(path, target / path.name)
        partial.rmdir()

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that a damaged checkpoint is an error naming the file or the
        tensors: truncated or corrupt, with NaN or infinite values, or not matching the config (missing,
        unexpected or differently shaped tensors), never silently re-initialised."""
        wants_info = kwargs.pop("output_loading_info", False)
        source = os.fspath(pretrained_model_name_or_path)
        try:
            source.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8, kept by the file system's surrogate escapes
            raise OSError(f"the path {os.fsencode(source)!r} is not valid UTF-8, which safetensors needs; rename it") from None
        weights = (
            os.path.join(source, kwargs.get("subfolder", ""), SAFE_WEIGHTS_NAME)
            if os.path.isdir(source)
            else f"{SAFE_WEIGHTS_NAME} of {source}"
        )
        # Let transformers report every mismatch instead of stopping at its generic error, then refuse.
        kwargs["ignore_mismatched_sizes"] = True
        try:
            if os.path.isfile(weights):
                _refuse_non_float_tensors(weights)
            model, info = super().from_pretrained(source, *args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(f"{weights} is truncated or corrupt ({error}); save or download it again") from error
        problems = {
            kind: sorted(str(key[0] if isinstance(key, tuple) else key) for key in keys)
            for kind, keys in info.items()
            if keys and kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        if model.width_affine_table is not None and problems.get("missing_keys") == _table_keys(model):
            # Saved before the hypernetwork kept the nested stage's table: its INR generated the whole scales and
            # shifts, which a table of identities (zero log scales and shifts) keeps as they were.
            with torch.no_grad():
                for table in model.width_affine_table.parameters():
                    table.zero_()
            del problems["missing_keys"]
        if problems:
            details = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in problems.items())
            raise ValueError(
                f"The checkpoint does not match its config ({details}). It was saved with a different "
                "configuration or is damaged; load it with the config.json it was saved with."
            )
        damaged = non_finite_tensors(model.state_dict())
        if damaged:
            raise ValueError(f"{weights} is damaged: tensors {', '.join(damaged)} contain NaN or infinite values")
        model.base_network.requires_grad_(False)
        if model.width_affine_table is not None:
            model.width_affine_table.requires_grad_(False)
        if not target(model.config.family).needs_remote_code:  # a family's processor follows from its config
            model.preprocessor = load_preprocessor(source)
        return (model, info) if wants_info else model


def _table_keys(model: NeuMetaModel) -> list[str]:
    return sorted(f"width_affine_table.{name}" for name, _ in model.width_affine_table.named_parameters())


def _refuse_non_float_tensors(weights: str):
    """Every tensor of a hypernetwork is floating point; an integer or boolean one (which from_pretrained would
    cast without a word) means the file was written by something else or damaged."""
    with safe_open(weights, "pt") as stored:
        dtypes = {name: stored.get_slice(name).get_dtype() for name in stored.keys()}  # noqa: SIM118 (not a dict)
    wrong = {name: dtype for name, dtype in dtypes.items() if not dtype.startswith(("F", "BF"))}
    if wrong:
        listed = ", ".join(f"{name} ({dtype})" for name, dtype in sorted(wrong.items()))
        raise ValueError(f"{weights} holds non-floating-point tensors where weights belong: {listed}; it was not "
                         "written by NeuMetaModel.save_pretrained or is damaged: save or download it again")  # fmt: skip
