"""The image processor saved with every family network: the standard ViT processor (resize, rescale to [0, 1],
normalise) that also brings any PIL image to the channel count the network was trained on."""

from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil


class NeuMetaImageProcessor(ViTImageProcessorPil):
    # The image-classification pipeline converts every PIL image to RGB; grayscale networks need it back in "L".
    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if len(self.image_mean) == 1 and hasattr(image, "convert") and image.mode != "L":
            image = image.convert("L")
        return super().process_image(
            image, do_convert_rgb=len(self.image_mean) == 3, input_data_format=input_data_format, **kwargs
        )

    @classmethod
    def for_config(cls, config):
        """The processor matching a family config's input shape and normalisation."""
        return cls(
            size={"height": config.image_size, "width": config.image_size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )
