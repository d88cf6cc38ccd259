"""Fixtures shared by the test folders."""
import numpy as np
import pytest
from PIL import Image


def write_bad_image_files(folder):
    """Image files of every kind a reader must handle or refuse, in ``folder``; returns
    {case: path}. "grey16": a 16-bit grey PNG (48 x 64) whose pixel (r, c) is (64 r + c) * 20;
    "truncated": the first half of a JPEG; "text": a text file named .png; "float": a 32-bit float
    TIFF; "good": an 8-bit RGB JPEG (48 x 64)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {case: str(folder / name) for case, name in [
        ("grey16", "grey16.png"), ("truncated", "truncated.jpg"), ("text", "text.png"),
        ("float", "float.tif"), ("good", "good.jpg")]}
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)).save(paths["grey16"])
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths["good"], quality=95)
    data = open(paths["good"], "rb").read()
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    with open(paths["text"], "w") as f:
        f.write("not an image\n")
    Image.fromarray(rng.random((48, 64)).astype(np.float32)).save(paths["float"])
    return paths


@pytest.fixture
def bad_image_files(tmp_path):
    return write_bad_image_files(tmp_path / "images")
