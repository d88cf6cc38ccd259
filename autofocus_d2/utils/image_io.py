"""Reading image files: the one reader of demo.py, the SNIPER data loader, negative-chip mining and
the benchmark's inputs.

Detectron2's ``read_image`` converts every PIL mode with ``Image.convert("RGB")``, which clips 16-bit
pixels at 255: a 16-bit grey PNG becomes an all-white image without a word. Here each PIL mode is
either converted correctly or refused with an :class:`ImageReadError` naming the file and the mode;
a file that cannot be decoded (truncated, not an image) names the file; and PIL's decompression-bomb
limit is replaced by an explicit cap in megapixels (``INPUT.MAX_IMAGE_MPIX``).
"""
import warnings
from typing import Optional

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DEFAULT_MAX_IMAGE_MPIX

__all__ = ["ImageReadError", "read_image", "to_8bit"]


# PIL modes of 8 bits per channel: ``Image.convert`` maps them to RGB / L without loss of range.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
# PIL modes of one unsigned 16-bit channel (PNG, TIFF); "I" (32-bit) is accepted when its values fit.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# The EXIF tag of the camera's orientation (1: as stored).
EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """An image file that cannot be read as an 8-bit image; the message names the file."""


def to_8bit(image: Image.Image, path: str) -> Image.Image:
    """
    ``image`` as a PIL image of 8 bits per channel. 8-bit modes are returned as they are (the caller
    converts them); one-channel 16-bit images (modes ``I;16*``, and ``I`` with values in [0, 65535],
    as PIL opens some 16-bit PNGs) are scaled linearly from [0, 65535] to [0, 255] (value / 257,
    rounded) into mode ``L``. Other modes (32-bit float ``F``, ``I`` outside [0, 65535], ...) have
    no known pixel range and raise :class:`ImageReadError` naming ``path`` and the mode.
    """
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        return image
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"{path}: PIL mode 'I' (32-bit integer) with values in [{values.min()}, {values.max()}], "
                "outside the 16-bit range [0, 65535]: convert it to 8 bits per channel first"
            )
        scaled = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    raise ImageReadError(
        f"{path}: PIL mode {mode!r} is not supported (pixel range unknown); convert the image to 8 "
        f"bits per channel (one of {', '.join(EIGHT_BIT_MODES)}) or 16-bit grey first"
    )


def read_image(path: str, format: Optional[str] = "BGR", max_mpix: float = DEFAULT_MAX_IMAGE_MPIX) -> np.ndarray:
    """
    Read an image file as Detectron2's ``read_image`` does (EXIF orientation applied, channels in
    ``format``: "BGR", "RGB", "L", ... of ``convert_PIL_to_numpy``), with every PIL mode handled
    by :func:`to_8bit`.

    Args:
        path: the file.
        format: the channel format of the result (``cfg.INPUT.FORMAT``).
        max_mpix: the largest image read, in megapixels (width x height / 1e6). Replaces PIL's
            decompression-bomb limit (which refuses above 178.9 MP): raise it to read larger frames.

    Returns:
        (H, W, C) uint8 array (C = 3 for BGR / RGB, 1 for L).

    Raises:
        ImageReadError: naming ``path``: missing or not an image, larger than ``max_mpix``,
            truncated or undecodable, or of a PIL mode without a known 8-bit conversion.
    """
    if not max_mpix > 0:
        raise ValueError(f"max_mpix must be > 0 megapixels, got {max_mpix}")
    saved = Image.MAX_IMAGE_PIXELS
    try:
        # PIL's own limit is checked on open; ours replaces it (restored right after the open).
        Image.MAX_IMAGE_PIXELS = None
        image = Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can identify") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open the image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with image:
        w, h = image.size
        if w * h > max_mpix * 1e6:
            raise ImageReadError(
                f"{path}: {w} x {h} = {w * h / 1e6:.1f} megapixels is above the limit of {max_mpix:g} "
                "(INPUT.MAX_IMAGE_MPIX, a guard against decompression bombs); raise it to read this "
                "image, e.g. --opts INPUT.MAX_IMAGE_MPIX 400"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # else exif_transpose copies
                    image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
        image = to_8bit(image, path)
        return convert_PIL_to_numpy(image, format)
