from .configuration_common import NeuMetaFamilyConfig


class NeuMetaVAEConfig(NeuMetaFamilyConfig):
    """Convolutional VAE for binarised images (Bernoulli pixels): an encoder of two stride-2 4x4 convs at `width`
    and 2 `width` channels and a conv over the whole bottom map giving the Gaussian posterior's mean and
    log-variance (`latent_size` each); a decoder mirroring it with transposed convs (the latent to a 2 `width`
    bottom map, then 2x upsampling to `width` channels and to per-pixel logits). Default input 1x28x28 (bottom map
    7x7), latent size 16; full width 32.

    `morph="last"` lets only the decoder's last hidden layer follow `width` (the NeuMeta paper morphs the
    decoder's last layers); `morph="all"` scales every hidden layer, encoder and decoder, by width / 32.
    `num_classes` is unused. Pixels enter in [0, 1] (the likelihood's targets), so the image processor's
    normalisation defaults to mean 0, std 1.
    """

    model_type = "neumeta-vae"
    full_width = 32

    latent_size: int = 16
    image_size: int = 28

    def __post_init__(self, **kwargs):
        # Two stride-2 convs halve the map twice, and the decoder must give back exactly the input's size.
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"neumeta-vae: image_size must be a positive multiple of 4, got {self.image_size}")
        if isinstance(self.latent_size, bool) or not isinstance(self.latent_size, int) or self.latent_size < 1:
            raise ValueError(f"neumeta-vae: latent_size must be a positive integer, got {self.latent_size!r}")
        if self.image_mean is None:
            self.image_mean = [0.0] * self.num_channels
        if self.image_std is None:
            self.image_std = [1.0] * self.num_channels
        super().__post_init__(**kwargs)

    @property
    def bottom_size(self) -> int:
        """Side of the encoder's last feature map (and the decoder's first)."""
        return self.image_size // 4
