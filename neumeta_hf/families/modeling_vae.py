import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vae import NeuMetaVAEConfig
from .modeling_common import ChannelGroup, NeuMetaFamilyModel


@dataclass
class NeuMetaVAEOutput(ModelOutput):
    """Output of `NeuMetaVAEModel.forward`. `loss` is the negative ELBO in nats per image (batch mean),
    `reconstruction_loss + kl`; `logits` are the reconstruction's per-pixel Bernoulli logits `[N, C, H, W]`."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    posterior_mean: torch.Tensor | None = None
    posterior_logvar: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    kl: torch.Tensor | None = None


class VAEEncoder(nn.Module):
    """Image -> `[N, 2 latent, 1, 1]`: the posterior's mean and log-variance."""

    def __init__(self, config: NeuMetaVAEConfig, c1: int, c2: int):
        super().__init__()
        self.conv1 = nn.Conv2d(config.num_channels, c1, 4, 2, 1)
        self.conv2 = nn.Conv2d(c1, c2, 4, 2, 1)
        # A conv whose kernel covers the whole bottom map: the fully connected layer, one kernel per input channel.
        self.posterior = nn.Conv2d(c2, 2 * config.latent_size, config.bottom_size)

    def forward(self, x):
        return self.posterior(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class VAEDecoder(nn.Module):
    """Latent `[N, latent, 1, 1]` -> per-pixel logits `[N, C, H, W]`, mirroring the encoder."""

    def __init__(self, config: NeuMetaVAEConfig, c1: int, c2: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(config.latent_size, c2, config.bottom_size)
        self.conv2 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.conv3 = nn.ConvTranspose2d(c1, config.num_channels, 4, 2, 1)

    def forward(self, z):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(z)))))


class NeuMetaVAEModel(NeuMetaFamilyModel):
    config_class = NeuMetaVAEConfig
    task = "unconditional-image-generation"

    def __init__(self, config: NeuMetaVAEConfig):
        super().__init__(config)
        # With morph "last" only the decoder's last hidden layer follows `width`; the others keep full-width sizes.
        enc1, enc2 = config.morphed(config.full_width), config.morphed(2 * config.full_width)
        dec1 = config.morphed(2 * config.full_width)
        self.encoder = VAEEncoder(config, enc1, enc2)
        self.decoder = VAEDecoder(config, config.scaled(config.full_width), dec1)
        self.post_init()

    def forward(self, pixel_values, labels=None, latent_noise=None, **kwargs):
        """Negative ELBO of `pixel_values` (in [0, 1], the Bernoulli targets; `labels` unused) with one latent
        sample z = mean + std * `latent_noise`: `latent_noise` `[N, latent]` when given, else standard normal in
        training mode and zero in eval mode (decoding the posterior mean, so eval outputs are deterministic)."""
        mean, logvar = self.posterior(pixel_values)
        if latent_noise is None:
            latent_noise = torch.randn_like(mean) if self.training else torch.zeros_like(mean)
        logits = self.decode(mean + torch.exp(0.5 * logvar) * latent_noise)
        reconstruction = F.binary_cross_entropy_with_logits(logits, pixel_values, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)  # KL(q(z|x) || N(0, I)), analytic
        return NeuMetaVAEOutput(
            loss=(reconstruction + kl).mean(),
            logits=logits,
            posterior_mean=mean,
            posterior_logvar=logvar,
            reconstruction_loss=reconstruction.mean(),
            kl=kl.mean(),
        )

    def posterior(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance `[N, latent]` of the Gaussian posterior q(z | pixel_values)."""
        return self.encoder(pixel_values).flatten(1).chunk(2, dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-pixel Bernoulli logits `[N, C, H, W]` of latents `[N, latent]`."""
        return self.decoder(latents[:, :, None, None])

    @torch.no_grad()
    def generate_images(self, num_images: int, generator: torch.Generator | None = None, return_pil: bool = False):
        """Bernoulli means `[N, C, H, W]` in (0, 1) of latents drawn from the prior N(0, I) with `generator` (on the
        model's device), or, with `return_pil`, a list of PIL images ("L" for one channel)."""
        latents = torch.randn(
            num_images, self.config.latent_size, generator=generator, device=self.device, dtype=self.dtype
        )
        images = torch.sigmoid(self.decode(latents))
        if not return_pil:
            return images
        # Only here, and inside try: transformers refuses to load remote code that imports a missing package
        # anywhere outside a try block, and loading and running the model must not need Pillow.
        try:
            from PIL import Image
        except ImportError as error:
            raise ImportError("generate_images(return_pil=True) needs Pillow: pip install pillow") from error

        pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in pixels]

    def channel_groups(self) -> list[ChannelGroup]:
        """In network order; with morph "last" only "dec2" scales. The latent and the image channels are in no
        group. Transposed conv weights are `[in, out, kH, kW]`: their output channels lie along axis 1."""
        all_scale = self.config.morph == "all"
        return [
            ChannelGroup.of("enc1", self._out_members("encoder.conv1") + (("encoder.conv2.weight", 1),), all_scale),
            ChannelGroup.of("enc2", self._out_members("encoder.conv2") + (("encoder.posterior.weight", 1),), all_scale),
            ChannelGroup.of("dec1", _transposed_out("decoder.conv1") + (("decoder.conv2.weight", 0),), all_scale),
            ChannelGroup.of("dec2", _transposed_out("decoder.conv2") + (("decoder.conv3.weight", 0),), True),
        ]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.ConvTranspose2d):
            # He initialisation over the terms one output pixel sums: input channels x (kernel / stride)^2 taps, or
            # the latent's channels alone for the layer reading the 1x1 latent map. (torch's own fan-in would
            # count axis 1, which holds a transposed conv's outputs.)
            reads_latent = module is self.decoder.conv1
            taps = 1 if reads_latent else math.prod(k // s for k, s in zip(module.kernel_size, module.stride))
            init.normal_(module.weight, std=math.sqrt(2.0 / (module.in_channels * taps)))
            init.zeros_(module.bias)


def _transposed_out(prefix: str) -> tuple[tuple[str, int], ...]:
    """The output-channel slices of a transposed conv: weight axis 1 and the bias."""
    return (f"{prefix}.weight", 1), (f"{prefix}.bias", 0)
