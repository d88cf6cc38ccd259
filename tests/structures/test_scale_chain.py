"""ScaleChain: the paper's per-image resolution rule (short side, longer-side cap; -1 = none)."""
import pytest
from detectron2.config import get_cfg

from autofocus_d2 import add_autofocus_config
from autofocus_d2.structures import ScaleChain, scale_zoom

PAPER = [[480, 512], [800, 1280], [1400, 2000]]


def paper_rule(image_hw, short, cap):
    """The rule as the official test-time iterator states it, written out independently."""
    h, w = image_hw
    if short < 0 and cap < 0:
        return 1.0
    if short < 0:
        return cap / max(h, w)
    zoom = short / min(h, w)
    if cap > 0 and round(zoom * max(h, w)) > cap:
        zoom = cap / max(h, w)
    return zoom


@pytest.mark.parametrize(
    "image_hw, expected",
    [
        ((480, 640), [0.8, 800 / 480, 1400 / 480]),  # 1400 / 480 * 640 = 1866.7 <= 2000
        ((427, 640), [0.8, 800 / 427, 2000 / 640]),
        ((640, 640), [0.75, 1.25, 1400 / 640]),
        ((2000, 1500), [512 / 2000, 800 / 1500, 1400 / 1500]),
    ],
)
def test_paper_chain_zooms_per_image(image_hw, expected):
    chain = ScaleChain(scales=PAPER)
    assert chain.zooms(image_hw) == pytest.approx(expected, rel=1e-9)
    assert chain.zooms(image_hw) == pytest.approx([paper_rule(image_hw, *s) for s in PAPER])


def test_the_issues_examples():
    chain = ScaleChain(scales=PAPER)
    assert [round(z, 3) for z in chain.zooms((427, 640))] == [0.8, 1.874, 3.125]
    # A 2000 x 1500 drone frame: the finest scale is 1867 x 1400 (zoom 0.93), not a 2.9x zoom to
    # about 6000 px a side as with fixed zooms.
    assert chain.image_hw((2000, 1500), 2) == (1867, 1400)


def test_480x640_scale_2_uses_the_short_side():
    # 1400 / 480 * 640 = 1866.7 <= 2000: the shorter-side target holds.
    assert ScaleChain(scales=PAPER).zoom((480, 640), 2) == pytest.approx(1400 / 480)


@pytest.mark.parametrize("image_hw", [(1, 1), (37, 5000), (5000, 37), (999, 1001), (4000, 3000)])
def test_no_constraint_sides(image_hw):
    h, w = image_hw
    assert scale_zoom(image_hw, -1, -1) == 1.0
    assert scale_zoom(image_hw, -1, 512) == pytest.approx(512 / max(h, w))
    assert scale_zoom(image_hw, 600, -1) == pytest.approx(600 / min(h, w))
    chain = ScaleChain(scales=[[-1, 512], [-1, -1]])
    assert chain.image_hw(image_hw, 1) == (h, w)
    assert max(chain.image_hw(image_hw, 0)) == 512


def test_built_from_the_config():
    cfg = get_cfg()
    add_autofocus_config(cfg)
    chain = ScaleChain(cfg)
    assert len(chain) == 3 and chain.scales == [tuple(map(float, s)) for s in PAPER]
    cfg.MODEL.AUTOFOCUS.SCALES = [[512, 768], [-1, -1]]
    assert ScaleChain(cfg).zooms((1000, 2000)) == pytest.approx([0.384, 1.0])


@pytest.mark.parametrize(
    "scales, match",
    [
        ([], "at least one"),
        ([[480, 0]], "-1 .no constraint. or a positive"),
        ([[800, 512]], "cap is below the shorter side"),
        ([[800, 1280], [480, 512]], "coarse to fine"),
        ([[480]], r"\[min, max\]"),
    ],
)
def test_bad_chains_are_rejected(scales, match):
    with pytest.raises(ValueError, match=match):
        ScaleChain(scales=scales)


def test_bad_image_size():
    with pytest.raises(ValueError, match="positive"):
        ScaleChain(scales=PAPER).zooms((0, 10))


def test_the_resized_longer_side_never_exceeds_the_cap():
    # 205 * 480 / 192 = 512.5: Python's round() would give 512 (halves to even) and skip the cap,
    # then the image would be resized to 513 px; the cap applies.
    chain = ScaleChain(scales=[[480, 512]])
    assert max(chain.image_hw((192, 205), 0)) == 512


@pytest.mark.parametrize("short, cap", [(0, 512), (480, -2), (float("nan"), 512)])
def test_bad_scale_sides_raise(short, cap):
    with pytest.raises(ValueError, match="no constraint"):
        scale_zoom((100, 100), short, cap)
