"""autofocus_d2.utils.read_image: every PIL mode converted correctly or refused naming the file."""
import numpy as np
import pytest
from detectron2.data.detection_utils import read_image as detectron2_read_image
from PIL import Image

from autofocus_d2.utils import ImageReadError, read_image


def test_16bit_grey_png_is_scaled_to_8_bits_not_clipped(bad_image_files):
    path = bad_image_files["grey16"]
    expected = np.floor((np.arange(48 * 64).reshape(48, 64) * 20) / 257.0 + 0.5).astype(np.uint8)
    for fmt in ("BGR", "RGB"):
        image = read_image(path, format=fmt)
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        for c in range(3):
            assert np.array_equal(image[:, :, c], expected)
    # What Detectron2's reader gives: every pixel above 255 clipped to white.
    assert (detectron2_read_image(path, format="BGR") == 255).mean() > 0.9


def test_32bit_integer_grey_within_16_bits_is_scaled_and_beyond_is_refused(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert read_image(str(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 1, 255]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match=r"big.tif: PIL mode 'I' .* \[0, 70000\]"):
        read_image(str(tmp_path / "big.tif"))


@pytest.mark.parametrize("case, match", [
    ("truncated", r"truncated.jpg: cannot decode the image \(OSError: image file is truncated"),
    ("text", r"text.png: not an image file PIL can identify"),
    ("float", r"float.tif: PIL mode 'F' is not supported"),
])
def test_bad_files_are_refused_naming_the_file_and_the_reason(bad_image_files, case, match):
    with pytest.raises(ImageReadError, match=match):
        read_image(bad_image_files[case])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageReadError, match=r"missing.jpg: no such file"):
        read_image(str(tmp_path / "missing.jpg"))


def test_palette_alpha_and_grey_modes_become_rgb(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # alpha dropped, colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert read_image(str(tmp_path / "rgba.png"), format="RGB")[0, 0].tolist() == [200, 0, 0]
    Image.fromarray(np.full((4, 5), 77, np.uint8), "L").save(tmp_path / "l.png")
    assert read_image(str(tmp_path / "l.png"), format="BGR")[0, 0].tolist() == [77, 77, 77]


def test_the_pixel_cap_replaces_pils_limit(tmp_path):
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "frame.png")
    path = str(tmp_path / "frame.png")
    with pytest.raises(ImageReadError, match=r"frame.png: 200 x 100 = 0.0 megapixels is above the limit "
                                             r"of 0.01 \(INPUT.MAX_IMAGE_MPIX"):
        read_image(path, max_mpix=0.01)
    # PIL's own limit lowered below the image: refused by PIL, read by read_image under its cap,
    # and PIL's setting is left as it was.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 5000
    try:
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)
        assert read_image(path, max_mpix=0.03).shape == (100, 200, 3)
        assert Image.MAX_IMAGE_PIXELS == 5000
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_exif_orientation_is_applied(tmp_path):
    # Stored 30 wide x 20 high with orientation 6 ("rotate 90 clockwise to view"): read 20 x 30.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(str(tmp_path / "rotated.jpg")).shape == (30, 20, 3)
    assert detectron2_read_image(str(tmp_path / "rotated.jpg")).shape == (30, 20, 3)
