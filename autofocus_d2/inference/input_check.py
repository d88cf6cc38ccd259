"""The check of one input image where it enters the model: dtype, channels, finite pixels."""
import logging
import math
from typing import Optional, Set

import torch

__all__ = ["prepare_image"]

logger = logging.getLogger(__name__)


def prepare_image(
    image: torch.Tensor,
    channels: int,
    index: int,
    device: Optional[torch.device] = None,
    *,
    name: Optional[str] = None,
    warned: Optional[Set[str]] = None,
) -> torch.Tensor:
    """Check one input image (C, H, W) and return it with ``channels`` channels on ``device``:
    uint8 as it is (a quarter of the bytes of float32; the pipeline converts each view's crop, see
    :func:`crop_and_resize`, so a 12000 x 9000 frame takes 0.3 GB instead of 1.3 GB), any floating
    dtype as float32.

    Pixels are values in [0, 255] in the model's INPUT.FORMAT channel order, as Detectron2 reads
    them: uint8, or a floating dtype. Any other dtype (uint16, int32, bool, ...) raises ValueError
    naming it. A floating image costs one reduction (min and max): a NaN or inf pixel raises
    ValueError naming the input; all values within [0, 1] (and some above 0) log a warning, once per
    ``warned`` set (the caller's; every time without one), since such an image looks black to the
    model. A 1-channel (grayscale) image is repeated to 3 channels and a 4th (alpha) channel is
    dropped when the model expects 3; anything else raises ValueError naming the image and shape.

    Args:
        name: how errors name the input (e.g. its file name); default "input <index>".
        warned: keys of the warnings already logged, updated in place.
    """
    what = f"input {index}" + (f" ({name})" if name else "")
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what}: 'image' must be a (C, H, W) tensor, got {shape}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ValueError(
            f"{what}: image dtype {image.dtype} cannot be interpreted as pixel values; the model "
            "expects uint8 or a floating dtype with values in [0, 255] (Detectron2's convention). "
            "Scale 16-bit or other integer images to 8 bits first "
            "(autofocus_d2.utils.read_image does it for image files)"
        )
    c, h, w = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"{what}: the image is empty (shape {tuple(image.shape)})")
    if c != channels:
        if c == 1 and channels == 3:
            image = image.expand(3, h, w)
        elif c == 4 and channels == 3:
            image = image[:3]
        else:
            raise ValueError(
                f"{what}: image has {c} channels, the model expects {channels} "
                "(MODEL.PIXEL_MEAN); 1 (grayscale) and 4 (alpha dropped) are also accepted for 3"
            )
    if device is not None:
        image = image.to(device, non_blocking=True)
    if image.is_floating_point():
        image = image.float()
        lo, hi = (float(v) for v in torch.aminmax(image))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"{what}: the image has NaN or inf pixels (min {lo}, max {hi}); every pixel must be "
                "a finite value in [0, 255]"
            )
        if 0.0 <= lo and 0.0 < hi <= 1.0 and (warned is None or "unit_range" not in warned):
            if warned is not None:
                warned.add("unit_range")
            logger.warning(
                f"{what}: every pixel of this float image lies in [0, 1] (max {hi:.3g}); the model "
                "expects values in [0, 255] and sees it as nearly black: multiply by 255 if it is "
                "scaled to [0, 1]. (Shown once.)"
            )
    return image
