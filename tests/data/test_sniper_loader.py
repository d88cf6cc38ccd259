"""SNIPER training data (autofocus_d2.data): chip records from dataset dicts (positive chips per
training scale, FocusPixel chips, a very large image), the mapper that cuts, zooms and marks
ignored boxes, the epoch sampler of positive and negative chips, and the train loader.

Negative chips (the chips file, mining, the tool) are tested in test_negative_chips.py, which
imports ``loader_cfg`` from here; both use conftest.py's ``two_image_dataset``.
"""
import itertools
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

import autofocus_d2
from autofocus_d2.data import (
    ChipEpochSampler,
    SNIPERDatasetMapper,
    build_sniper_train_loader,
    positive_chips,
    sniper_chip_records,
)
from autofocus_d2.data import chip_sampler
from autofocus_d2.data.sniper_loader import chip_transform


SCALES = [[300.0, 500.0], [600.0, 1000.0]]


def _anno(xyxy, category=0, **extra):
    x0, y0, x1, y1 = xyxy
    return {"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": category, **extra}


def _dataset_dict(file_name="a.png", image_id=7):
    return {
        "file_name": file_name, "height": 600, "width": 1000, "image_id": image_id,
        "annotations": [
            _anno([10, 10, 40, 40], 1),  # size 30
            _anno([700, 400, 900, 550], 2),  # size 173
            _anno([300, 300, 500, 500], 3, iscrowd=1),  # crowd: never a chip
        ],
    }


def _cfg(**sniper):
    cfg = get_cfg()
    autofocus_d2.add_autofocus_config(cfg)
    cfg.INPUT.SNIPER.SCALES = SCALES
    cfg.INPUT.SNIPER.VALID_RANGES = [[100.0, -1.0], [-1.0, 80.0]]
    cfg.INPUT.SNIPER.CHIP_SIZE = 256
    for k, v in sniper.items():
        setattr(cfg.INPUT.SNIPER, k, v)
    return cfg


# ---------------------------------------------------------------------------------------------
# Chip records
# ---------------------------------------------------------------------------------------------


def test_chip_records_from_a_dataset_dict():
    d = _dataset_dict()
    negatives = {"version": 1, "scales": SCALES,
                 "chips": {"7": [[500, 0, 756, 256, 1]], "99": [[0, 0, 10, 10, 0]]}}
    records, num_positive = sniper_chip_records(_cfg(), [d], negative_chips=negatives)
    assert num_positive == 2 and len(records) == 3
    # Scale 0 (zoom 0.5, 256-px chips = 512 original px) holds the large box, at the grid
    # position (224, 32) of the scale; scale 1 (zoom 1) the small one. Crowd boxes make no chip.
    expected = [
        ([448.0, 64.0, 960.0, 576.0], 0, 0.5, [100.0, -1.0], False),
        ([0.0, 0.0, 256.0, 256.0], 1, 1.0, [-1.0, 80.0], False),
        ([500.0, 0.0, 756.0, 256.0], 1, 1.0, [-1.0, 80.0], True),
    ]
    for r, (chip, scale, zoom, vr, neg) in zip(records, expected):
        assert r["sniper_chip"] == chip and r["sniper_scale"] == scale
        assert r["sniper_zoom"] == zoom and r["sniper_valid_range"] == vr
        assert r["sniper_negative"] is neg
        # The zoom step to the next training scale (FocusPixel labels, SMALL_MIN_FRAME next_scale):
        # 1.0 / 0.5 from scale 0, and 1 at the finest scale.
        assert r["sniper_zoom_step"] == (2.0 if scale == 0 else 1.0)
        assert r["file_name"] == "a.png" and r["image_id"] == 7
        assert r["annotations"] is d["annotations"]  # shallow copy
    assert not any(k.startswith("sniper_") for k in d)

    same, n = sniper_chip_records(
        [d], scales=SCALES, valid_ranges=[[100, -1], [-1, 80]], chip_size=256, chip_stride=32
    )
    assert n == 2 and same == records[:2]


def test_chip_records_reject_bad_input():
    with pytest.raises(ValueError, match="outside image"):
        sniper_chip_records(_cfg(), [_dataset_dict()],
                            negative_chips={"version": 1, "scales": SCALES,
                                            "chips": {"7": [[900, 0, 1200, 256, 1]]}})
    with pytest.raises(ValueError, match="training scales"):
        sniper_chip_records(_cfg(), [_dataset_dict()],
                            negative_chips={"version": 1, "scales": SCALES[:1], "chips": {}})
    d = _dataset_dict()
    del d["height"]
    with pytest.raises(ValueError, match="height"):
        sniper_chip_records(_cfg(), [d])


# ---------------------------------------------------------------------------------------------
# Mapper
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def white_box_image(tmp_path):
    """400 x 600 black PNG with a white rectangle at [150, 100, 190, 160]."""
    pixels = np.zeros((400, 600, 3), dtype=np.uint8)
    pixels[100:160, 150:190] = 255
    path = str(tmp_path / "img.png")
    Image.fromarray(pixels).save(path)
    return path


def _mapper_record(path, chip=(100.0, 50.0, 356.0, 306.0), zoom=0.5):
    return {
        "file_name": path, "height": 400, "width": 600, "image_id": 3,
        "annotations": [
            _anno([150, 100, 190, 160], 1),  # inside the chip, size 49: valid
            _anno([200, 150, 300, 250], 2),  # inside, size 100: out of the range -> ignored
            _anno([330, 60, 370, 90], 3),  # size 35 but cut by the chip's right edge -> ignored
            _anno([500, 300, 550, 350], 4),  # outside the chip: dropped
        ],
        "sniper_chip": list(chip), "sniper_scale": 1, "sniper_zoom": zoom,
        "sniper_valid_range": [-1.0, 50.0], "sniper_negative": False,
    }


def test_mapper_cuts_zooms_and_marks_ignored_boxes(white_box_image):
    mapper = SNIPERDatasetMapper(is_train=True, image_format="RGB", chip_size=128)
    record = _mapper_record(white_box_image)
    out = mapper(record)
    assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (128, 128)
    assert out["file_name"] == white_box_image and out["image_id"] == 3 and out["sniper_scale"] == 1
    assert out["focus_zoom_step"] == 1.0  # a record without a step: the paper's label rule
    assert mapper({**record, "sniper_zoom_step": 2.5})["focus_zoom_step"] == 2.5
    inst = out["instances"]
    # (box - chip origin) * zoom, clipped to the chip.
    expected = torch.tensor([[25.0, 25, 45, 55], [50, 50, 100, 100], [115, 5, 128, 20]])
    assert torch.allclose(inst.gt_boxes.tensor, expected, atol=1e-4)
    assert inst.gt_classes.tolist() == [1, 2, 3]
    assert inst.gt_ignore.tolist() == [False, True, True]
    image = out["image"].float()
    assert image[:, 26:54, 26:44].min() > 200  # the white rectangle landed on its box
    assert image[:, 60:, :].max() < 30 and image[:, :, 50:].max() < 30
    assert record["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS  # the record is untouched


def test_mapper_flip(white_box_image):
    mapper = SNIPERDatasetMapper(is_train=True, image_format="RGB", chip_size=128,
                                 augmentations=[T.RandomFlip(prob=1.0)])
    out = mapper(_mapper_record(white_box_image))
    assert torch.allclose(out["instances"].gt_boxes.tensor[0], torch.tensor([83.0, 25, 103, 55]))
    assert out["image"][:, 26:54, 84:102].float().min() > 200
    # Not in training: no augmentation.
    eval_mapper = SNIPERDatasetMapper(is_train=False, image_format="RGB", chip_size=128,
                                      augmentations=[T.RandomFlip(prob=1.0)])
    box = eval_mapper(_mapper_record(white_box_image))["instances"].gt_boxes.tensor[0]
    assert torch.allclose(box, torch.tensor([25.0, 25, 45, 55]))


def test_mapper_from_config():
    cfg = _cfg()
    assert SNIPERDatasetMapper.from_config(cfg)["augmentations"][0].horizontal  # Detectron2 default
    cfg.INPUT.RANDOM_FLIP = "none"
    kwargs = SNIPERDatasetMapper.from_config(cfg)
    assert kwargs["augmentations"] == [] and kwargs["chip_size"] == 256
    cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(ValueError, match="KEYPOINT_ON"):
        SNIPERDatasetMapper(cfg)


@pytest.mark.parametrize("zoom", [3.0, 4 / 3, 0.7])
def test_mapper_output_never_exceeds_the_chip(white_box_image, zoom):
    boxes = torch.tensor([[150.0, 100, 190, 160], [583, 390, 599, 399], [3.3, 370.2, 10.1, 399.7]])
    chips = positive_chips(boxes, image_hw=(400, 600), zoom=zoom, chip_size=128, valid_range=(-1, -1))
    mapper = SNIPERDatasetMapper(is_train=False, image_format="RGB", chip_size=128)
    for chip in chips.tolist():
        out = mapper(_mapper_record(white_box_image, chip=chip, zoom=zoom))
        full = [min(128, round(600 * zoom)), min(128, round(400 * zoom))]
        assert [out["width"], out["height"]] == full
        assert tuple(out["image"].shape[1:]) == (out["height"], out["width"])
        # The chip maps onto the whole output image (within the rounding of the sizes).
        mapped = chip_transform(chip, zoom, (400, 600)).apply_box(np.array([chip]))[0]
        assert np.allclose(mapped, [0, 0, out["width"], out["height"]], atol=1.5)


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


def _epochs(sampler, n):
    size = sampler.num_positive + sampler.negatives_in_epoch
    stream = list(itertools.islice(iter(sampler), size * n))
    return [stream[i * size : (i + 1) * size] for i in range(n)]


def test_sampler_epochs():
    sampler = ChipEpochSampler(10, 7, 0.25, seed=3)
    assert sampler.negatives_in_epoch == 3  # round(2.5) = 3
    seen = set()
    for epoch in _epochs(sampler, 6):
        assert sorted(i for i in epoch if i < 10) == list(range(10))
        negatives = [i for i in epoch if i >= 10]
        assert len(set(negatives)) == 3 and all(10 <= i < 17 for i in negatives)
        seen |= set(negatives)
    assert len(seen) > 3  # drawn anew each epoch
    assert _epochs(ChipEpochSampler(10, 7, 0.25, seed=3), 6) == _epochs(sampler, 6)
    assert _epochs(ChipEpochSampler(10, 7, 0.25, seed=4), 2) != _epochs(sampler, 2)

    capped = ChipEpochSampler(4, 3, 5.0, seed=0)
    assert all(sorted(e) == list(range(7)) for e in _epochs(capped, 3))
    ordered = _epochs(ChipEpochSampler(4, 10, 0.5, shuffle=False, seed=0), 2)
    for epoch in ordered:
        assert epoch[:4] == [0, 1, 2, 3] and epoch[4] < epoch[5] and len(epoch) == 6
    assert _epochs(ChipEpochSampler(3, 0, 1.0, seed=0), 1)[0] != []
    with pytest.raises(ValueError, match="num_positive"):
        ChipEpochSampler(0, 5, 0.2)


def test_sampler_is_sharded_across_ranks(monkeypatch):
    whole = list(itertools.islice(iter(ChipEpochSampler(5, 4, 0.4, seed=1)), 40))
    monkeypatch.setattr(chip_sampler.comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(chip_sampler.comm, "get_rank", lambda r=rank: r)
        shards.append(list(itertools.islice(iter(ChipEpochSampler(5, 4, 0.4, seed=1)), 20)))
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------


def loader_cfg(name, **sniper):
    sniper = {"SCALES": [[150, 200], [300, 400]], "VALID_RANGES": [[100, -1], [-1, 100]],
              "CHIP_SIZE": 128, **sniper}
    cfg = _cfg(**sniper)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "SNIPERRPN"
    cfg.MODEL.ROI_HEADS.NAME = "SNIPERStandardROIHeads"
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def test_build_sniper_train_loader_yields_chip_batches(two_image_dataset, tmp_path):
    path = str(tmp_path / "neg.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "scales": [[150, 200], [300, 400]],
                   "chips": {"0": [[272, 172, 400, 300, 1]]}}, f)
    cfg = loader_cfg(two_image_dataset, NEGATIVE_CHIPS_FILE=path, NEGATIVES_PER_EPOCH=1.0)
    loader = build_sniper_train_loader(cfg)
    batches = list(itertools.islice(iter(loader), 3))
    assert [len(b) for b in batches] == [2, 2, 2]
    for d in itertools.chain(*batches):
        assert d["image"].shape[0] == 3 and max(d["image"].shape[1:]) <= 128
        inst = d["instances"]
        assert len(inst.gt_ignore) == len(inst) and inst.gt_ignore.dtype == torch.bool
        assert (inst.gt_boxes.tensor[:, 2:] <= torch.tensor([d["width"], d["height"]])).all()
        assert d["sniper_scale"] in (0, 1)


def test_build_sniper_train_loader_takes_the_dataset_given_instead_of_datasets_train(two_image_dataset):
    """LazyConfig's ``dataloader.train.dataset``: those images are cut into chips, not
    DATASETS.TRAIN's."""
    dicts = DatasetCatalog.get(two_image_dataset)
    cfg = loader_cfg("no_such_dataset_registered")  # DATASETS.TRAIN not read when a dataset is given
    one = [dicts[0]]
    loader = build_sniper_train_loader(cfg, dataset=one)
    batch = next(iter(loader))
    assert {d["image_id"] for d in batch} == {dicts[0]["image_id"]}
    with pytest.raises(ValueError, match="no positive SNIPER chip in dataloader.train.dataset"):
        build_sniper_train_loader(loader_cfg(two_image_dataset, VALID_RANGES=[[500, -1], [500, -1]]),
                                  dataset=one)


@pytest.mark.slow  # a very large image through the loader (about 4 s)
def test_a_very_large_training_image_trains_as_chips(tmp_path):
    # 6000 x 6000 px with three small objects and one large one: at the original resolution and at
    # longer side 512, every network input is a chip of at most CHIP_SIZE (+1) px a side.
    pixels = np.zeros((6000, 6000, 3), dtype=np.uint8)
    boxes = [[100, 200, 130, 240], [3000, 3000, 3040, 3020], [5900, 5950, 5990, 5999], [1000, 4000, 2500, 5200]]
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = 255
    path = str(tmp_path / "huge.jpg")
    Image.fromarray(pixels).save(path, quality=80)
    d = {"file_name": path, "height": 6000, "width": 6000, "image_id": 9,
         "annotations": [_anno(b, 1) for b in boxes]}
    records, num_positive = sniper_chip_records(
        [d], scales=[[-1, 512], [-1, -1]], valid_ranges=[[200, -1], [-1, 100]], chip_size=512)
    assert num_positive == len(records) == 4  # one chip at 512 px, three around the small objects
    mapper = SNIPERDatasetMapper(is_train=True, image_format="RGB", chip_size=512)
    for record in records:
        out = mapper(record)
        assert max(out["image"].shape[-2:]) <= 513, out["image"].shape
        valid = ~out["instances"].gt_ignore
        assert int(valid.sum()) >= 1  # every positive chip trains at least one box


def test_focus_chips_hold_every_focus_pixel_object_of_the_coarse_scales():
    """INPUT.SNIPER.FOCUS_CHIPS: a small object far from the large one gets a scale-0 chip of its
    own (the focus head trains where it is); without the key only the large object's chip exists."""
    from autofocus_d2.data.sniper_chips import chips_holding

    d = {"file_name": "a.png", "height": 1000, "width": 1500, "image_id": 1, "annotations": [
        _anno([100, 100, 200, 200], 0), _anno([1300, 800, 1310, 810], 1), _anno([1400, 20, 1402, 22], 1)]}
    kw = dict(scales=[[512, 768], [-1, -1]], valid_ranges=[[40, -1], [-1, 160]], chip_size=512, chip_stride=32)
    plain, _ = sniper_chip_records([d], **kw)
    focus, n = sniper_chip_records([d], focus_range=([5.0, 64.0], "next_scale"), **kw)
    scale0 = lambda recs: torch.tensor([r["sniper_chip"] for r in recs if r["sniper_scale"] == 0])
    boxes = torch.tensor([[100.0, 100, 200, 200], [1300, 800, 1310, 810], [1400, 20, 1402, 22]])
    assert chips_holding(boxes, scale0(plain)).tolist() == [True, False, False]
    # The 10 px object (5.1 px at zoom 0.512) is a FocusPixel object; the 2 px one (1 px at scale 0,
    # 2 px at scale 1: below 5 at the next scale too) is not, and gets no chip.
    assert chips_holding(boxes, scale0(focus)).tolist() == [True, True, False]
    assert n == len(focus) == len(plain) + 1
    # The new chip keeps scale 0's valid range: the small object is ignored by the detector there.
    extra = [r for r in focus if r not in plain][0]
    assert extra["sniper_valid_range"] == [40.0, -1.0] and extra["sniper_scale"] == 0
    # The last scale gets no FocusPixel chips (its maps are never used).
    assert [r for r in focus if r["sniper_scale"] == 1] == [r for r in plain if r["sniper_scale"] == 1]
