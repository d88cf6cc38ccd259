"""area_downscale (the cheap scale 0) against crop_and_resize (antialiased bilinear)."""
import pytest
import torch
import torch.nn.functional as F

from autofocus_d2.structures.views import area_downscale, crop_and_resize


def field_image(hw=(1500, 2000), seed=0):
    """Smooth colour field (bicubic from 15 x 20 random values) with 60 flat squares of 4-60 px."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    image = F.interpolate(torch.rand(1, 3, 15, 20, generator=g) * 255, size=hw, mode="bicubic",
                          align_corners=False)[0].clamp(0, 255)
    for _ in range(60):
        s = int(torch.randint(4, 60, (1,), generator=g))
        x, y = int(torch.randint(0, w - s, (1,), generator=g)), int(torch.randint(0, h - s, (1,), generator=g))
        image[:, y : y + s, x : x + s] = torch.rand(3, 1, 1, generator=g) * 255
    return image.round()


# Tolerance (grey levels of 0-255): mean |difference| <= 0.25 and 99th percentile <= 3 (measured
# 0.08-0.11 and 0.2-2.4 at these sizes); the two filters differ most on sharp edges.
@pytest.mark.parametrize("box,out_hw", [((0, 0, 2000, 1500), (512, 683)), ((0, 0, 2000, 1500), (300, 400)),
                                        ((100, 50, 1901, 1403), (700, 933)), ((0, 0, 2000, 1500), (400, 533))])
def test_within_tolerance_of_the_antialiased_resize(box, out_hw):
    image = field_image()
    ref, fast = crop_and_resize(image, box, out_hw), area_downscale(image, box, out_hw)
    assert fast.shape == ref.shape == (3, *out_hw) and fast.dtype == torch.float32
    diff = (ref - fast).abs().flatten()
    assert diff.mean() <= 0.25
    assert diff.kthvalue(int(0.99 * diff.numel())).values <= 3.0


def test_objects_stay_where_the_antialiased_resize_puts_them():
    image = torch.zeros(3, 1500, 2000)
    image[:, 701:741, 1203:1243] = 255.0  # a 40 px square, off any pooling grid
    for out_hw in [(512, 683), (300, 400)]:
        centres = []
        for fn in (crop_and_resize, area_downscale):
            r = fn(image, (0, 0, 2000, 1500), out_hw)[0]
            ys, xs = torch.meshgrid(torch.arange(out_hw[0]).float(), torch.arange(out_hw[1]).float(), indexing="ij")
            centres.append(torch.stack([(r * xs).sum(), (r * ys).sum()]) / r.sum())
        assert torch.allclose(centres[0], centres[1], atol=0.05)  # output pixels


def test_small_factors_and_uint8():
    image = field_image((300, 400))
    # Shrinking by less than 2: the antialiased resize itself.
    assert torch.equal(area_downscale(image, (0, 0, 400, 300), (200, 267)), crop_and_resize(image, (0, 0, 400, 300), (200, 267)))
    # A uint8 image is averaged in float: the same result as its float copy.
    as_uint8 = image.to(torch.uint8)
    assert torch.allclose(area_downscale(as_uint8, (0, 0, 400, 300), (100, 133)),
                          area_downscale(as_uint8.float(), (0, 0, 400, 300), (100, 133)))


def test_tile_views_keeps_a_short_box_whole_and_tiles_a_long_one_within_max_side():
    from autofocus_d2.structures import tile_views

    whole = tile_views(3, 1, (10, 20, 410, 320), 2.0, max_side=800, overlap=64)
    assert [(v.image_index, v.scale, v.box, v.out_hw) for v in whole] == [(3, 1, (10, 20, 410, 320), (600, 800))]
    tiles = tile_views(0, 1, (0, 0, 1000, 300), 2.0, max_side=800, overlap=64)
    assert len(tiles) > 1 and all(max(v.out_hw) <= 800 for v in tiles)
    xs = sorted((v.box[0], v.box[2]) for v in tiles)
    assert xs[0][0] == 0 and xs[-1][1] == 1000
    # neighbours overlap by at least 64 px of the scale (32 original pixels at zoom 2)
    assert all(b[0] <= a[1] - 32 for a, b in zip(xs, xs[1:]))
