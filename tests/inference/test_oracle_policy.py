"""The oracle chip policy: FocusChips from the ground truth's FocusPixels (the training labels)."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from hypothesis import given, settings
from hypothesis import strategies as st

from autofocus_d2 import add_autofocus_config
from autofocus_d2.inference.chip_policies import (
    OracleChipPolicy,
    build_chip_policy,
    input_gt_boxes,
    oracle_focus_map,
    policy_names,
)
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from autofocus_d2.structures.views import View, zoomed_hw
from autofocus_d2.structures.focus_labels import FOCUS_POSITIVE, focus_pixel_targets

# The 800 x 1200 image of test_pipeline.py: zooms 0.5, 1 and 2 for scales 0, 1, 2.
A = (100.0, 100.0, 400.0, 300.0)  # 245 px: 122 px at scale 0, above IGNORE_MAX (90): negative
B = (600.0, 200.0, 616.0, 216.0)  # 16 px: 8 px at scale 0, a FocusPixel
C = (900.0, 600.0, 908.0, 608.0)  # 8 px: 4 px at scale 0, below SMALL_RANGE min (5): ignored


def oracle_cfg(**overrides):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    af.CHIP_POLICY = "oracle"
    af.SCALES = [[400, 600], [-1, -1], [1600, -1]]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 3
    af.MAX_CHIP_SIDE = 4096
    for key, value in overrides.items():
        node, name = (cfg.MODEL.FOCUS_HEAD, key[5:]) if key.startswith("HEAD_") else (af, key)
        setattr(node, name, value)
    return cfg


def test_oracle_is_a_registered_policy_without_focus_head_pass():
    policy = build_chip_policy(oracle_cfg())
    assert isinstance(policy, OracleChipPolicy)
    assert policy.needs_focus is False
    assert "oracle" in policy_names()
    assert policy.num_scales(3) == 3


def test_hand_made_chips_follow_the_focus_pixels_of_the_ground_truth():
    policy = build_chip_policy(oracle_cfg())
    gt = torch.tensor([A, B, C])
    whole = View(0, 0, (0, 0, 1200, 800), (400, 600))
    chips = policy.chips(next_scale=1, zoom=1.0, image_hw=(800, 1200), parents=[whole],
                         focus_maps=[None], focus_stride=16, gt_boxes=gt)
    # B at scale 0 is (300, 100, 308, 108): cells (row 6, cols 18-19) = (288, 96, 320, 112),
    # enlarged to the 64 px minimum around their centre: (272, 72, 336, 136) -> x2 in original.
    # Only B: A is too large for a FocusPixel, C too small (ignored label, not positive).
    assert chips.tolist() == [[544.0, 144.0, 672.0, 272.0]]

    # Next transition: the chip at zoom 1; B (56, 56, 72, 72) in it spans cells 3-4 both ways,
    # (48, 48, 80, 80) enlarged to 64 px: (32, 32, 96, 96) in the chip -> +(544, 144).
    chip = View(0, 1, (544, 144, 672, 272), (128, 128))
    finer = policy.chips(next_scale=2, zoom=2.0, image_hw=(800, 1200), parents=[chip],
                         focus_maps=[None], focus_stride=16, gt_boxes=gt)
    assert finer.tolist() == [[576.0, 176.0, 640.0, 240.0]]


def test_image_without_objects_gives_no_chips_and_missing_ground_truth_raises():
    policy = build_chip_policy(oracle_cfg())
    whole = View(3, 0, (0, 0, 1200, 800), (400, 600))
    kwargs = dict(next_scale=1, zoom=1.0, image_hw=(800, 1200), parents=[whole], focus_maps=[None],
                  focus_stride=16)
    assert policy.chips(**kwargs, gt_boxes=torch.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError, match="needs the ground truth of image 3"):
        policy.chips(**kwargs)
    with pytest.raises(ValueError, match=r"\(G, 4\).*got shape \(2, 3\)"):
        policy.chips(**kwargs, gt_boxes=torch.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        policy.chips(**kwargs, gt_boxes=torch.tensor([[0.0, 0.0, math.nan, 10.0]]))


def test_pipeline_input_without_ground_truth_raises():
    class Detector:  # enough of FocusDetector for scale 0; the oracle must fail before scale 1
        device, input_channels, focus_stride, size_divisibility = torch.device("cpu"), 3, 16, 32

        def normalize(self, images):
            from detectron2.structures import ImageList

            return ImageList.from_tensors(list(images), 32)

        def detect(self, images, with_focus=False):
            from detectron2.structures import Boxes, Instances

            assert not with_focus  # the oracle needs no focus head pass
            out = []
            for hw in images.image_sizes:
                inst = Instances(hw)
                inst.pred_boxes = Boxes(torch.zeros((0, 4)))
                inst.scores, inst.pred_classes = torch.zeros(0), torch.zeros(0, dtype=torch.long)
                out.append(inst)
            return out, None

    pipeline = build_autofocus_pipeline(oracle_cfg())
    with pytest.raises(ValueError, match="oracle chip policy needs the ground truth"):
        pipeline(Detector(), [{"image": torch.zeros(3, 800, 1200)}])


def test_input_ground_truth_is_given_in_the_image_tensor_frame():
    inst = Instances((400, 600))  # annotations at the dataset's (height, width)
    inst.gt_boxes = Boxes(torch.tensor([[60.0, 40.0, 120.0, 100.0]]))
    assert input_gt_boxes({"image": None}, (800, 1200)) is None
    # Same frame: unchanged; image tensor twice as large: boxes scaled by (2, 2).
    assert input_gt_boxes({"instances": inst}, (400, 600)).tolist() == [[60.0, 40.0, 120.0, 100.0]]
    assert input_gt_boxes({"instances": inst}, (800, 900)).tolist() == [[90.0, 80.0, 180.0, 200.0]]
    with pytest.raises(ValueError, match="no gt_boxes"):
        input_gt_boxes({"instances": Instances((4, 4))}, (4, 4))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"DILATION": [1, 2, 3]}, "MODEL.AUTOFOCUS.DILATION"),
        ({"DILATION": [0]}, "MODEL.AUTOFOCUS.DILATION: 0 is not an integer >= 1"),
        ({"MIN_CHIP_SIZE": [-1.0]}, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE: -1.0"),
        ({"MAX_CHIPS_PER_IMAGE": 0}, "MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE: must be an integer >= 1, got 0"),
        ({"HEAD_SMALL_RANGE": [70.0, 64.0]}, r"MODEL.FOCUS_HEAD.SMALL_RANGE: need 0 <= min <= max, got \[70.0, 64.0\]"),
        ({"HEAD_IGNORE_MAX": 50.0}, r"MODEL.FOCUS_HEAD.IGNORE_MAX: 50.0 is below MODEL.FOCUS_HEAD.SMALL_RANGE max 64"),
    ],
)
def test_policy_config_is_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_chip_policy(oracle_cfg(**overrides))


def _focus_pixel_regions(view, boxes, stride, small_range, ignore_max):
    """Original-frame regions (K, 4) of the positive training-label cells of ``view``, computed
    from focus_pixel_targets directly (not through the policy)."""
    sx, sy = view.factors
    x0, y0 = view.box[:2]
    in_view = (boxes - torch.tensor([x0, y0, x0, y0])) * torch.tensor([sx, sy, sx, sy])
    h, w = view.out_hw
    in_view[:, 0::2] = in_view[:, 0::2].clamp(0, w)
    in_view[:, 1::2] = in_view[:, 1::2].clamp(0, h)
    keep = (in_view[:, 2] > in_view[:, 0]) & (in_view[:, 3] > in_view[:, 1])
    labels = focus_pixel_targets(in_view[keep], image_hw=(h, w), feature_hw=(-(-h // stride), -(-w // stride)),
                                 stride=stride, small_range=small_range, ignore_max=ignore_max)
    rows, cols = (labels == FOCUS_POSITIVE).nonzero(as_tuple=True)
    cells = torch.stack([cols * stride, rows * stride, (cols + 1) * stride, (rows + 1) * stride], 1).float()
    cells[:, 2] = cells[:, 2].clamp(max=w)
    cells[:, 3] = cells[:, 3].clamp(max=h)
    return view.to_original(cells)


@st.composite
def scenes(draw):
    h, w = draw(st.integers(100, 1500)), draw(st.integers(100, 1500))
    boxes = []
    for _ in range(draw(st.integers(0, 8))):
        bw, bh = draw(st.floats(1.0, 150.0)), draw(st.floats(1.0, 150.0))
        x, y = draw(st.floats(-20.0, w - 1.0)), draw(st.floats(-20.0, h - 1.0))
        boxes.append([x, y, x + bw, y + bh])
    zoom = draw(st.floats(0.2, 2.5))
    # A second parent: a chip of the image, as at scales >= 1.
    cx0, cy0 = draw(st.integers(0, w - 50)), draw(st.integers(0, h - 50))
    cx1, cy1 = draw(st.integers(cx0 + 50, w)), draw(st.integers(cy0 + 50, h))
    return (h, w), torch.tensor(boxes).reshape(-1, 4), zoom, (cx0, cy0, cx1, cy1)


@settings(max_examples=60, deadline=None)
@given(scene=scenes(), stride=st.sampled_from([8, 16]), dilation=st.integers(1, 4),
       min_size=st.floats(0.0, 200.0))
def test_chips_cover_every_focus_pixel_of_the_ground_truth(scene, stride, dilation, min_size):
    (h, w), gt, zoom, chip_box = scene
    policy = OracleChipPolicy(dilations=[dilation], min_sizes=[min_size], max_chips=10_000,
                              small_range=[5.0, 64.0], ignore_max=90.0)
    parents = [View(0, 0, (0, 0, w, h), zoomed_hw((0, 0, w, h), zoom)),
               View(0, 0, chip_box, zoomed_hw(chip_box, 2 * zoom))]
    chips = policy.chips(next_scale=1, zoom=2 * zoom, image_hw=(h, w), parents=parents,
                         focus_maps=[None, None], focus_stride=stride, gt_boxes=gt)
    regions = torch.cat([_focus_pixel_regions(p, gt, stride, (5.0, 64.0), 90.0) for p in parents])
    assert (len(chips) == 0) == (len(regions) == 0)
    # Chips are integer pixel boxes inside the image.
    assert torch.equal(chips, chips.round())
    assert bool((chips[:, :2] >= 0).all() and (chips[:, 2] <= w).all() and (chips[:, 3] <= h).all())
    if len(regions):
        tol = 1e-3
        inside = ((regions[:, None, :2] >= chips[None, :, :2] - tol)
                  & (regions[:, None, 2:] <= chips[None, :, 2:] + tol)).all(dim=2)
        assert bool(inside.any(dim=1).all()), regions[~inside.any(dim=1)]
    # The policy's maps are the training labels' positives.
    for p in parents:
        fmap = oracle_focus_map(p, gt, stride=stride, small_range=(5.0, 64.0), ignore_max=90.0)
        assert int(fmap.sum()) == len(_focus_pixel_regions(p, gt, stride, (5.0, 64.0), 90.0))
