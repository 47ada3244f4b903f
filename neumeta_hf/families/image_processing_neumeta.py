"""The image processor saved with every family network: the standard ViT processor (resize, rescale to [0, 1],
normalise) that also brings any PIL image to the channel count the network was trained on, and turns a
segmentation network's per-pixel scores into class maps (what the image-segmentation pipeline calls)."""

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

    def post_process_semantic_segmentation(self, outputs, target_sizes=None):
        """One `[H, W]` map of class indices per image: the argmax of `outputs.logits` (`[N, classes, h, w]`),
        first resized bilinearly to `target_sizes[i]` (height, width) when given, e.g. the original image's size."""
        # torch is loaded whenever there are logits; importing it here keeps this file's imports to transformers.
        import torch.nn.functional as F

        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for {len(logits)} images")
        maps = []
        for scores, (height, width) in zip(logits, target_sizes):
            resized = F.interpolate(scores[None], size=(int(height), int(width)), mode="bilinear", align_corners=False)
            maps.append(resized[0].argmax(dim=0))
        return maps
