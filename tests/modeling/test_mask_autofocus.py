"""Mask R-CNN and Keypoint R-CNN AutoFocus models (random weights) through the whole pipeline."""
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model

from autofocus_d2 import model_zoo
from autofocus_d2.data.synthetic import register_synthetic_datasets
from autofocus_d2.evaluation import build_coco_evaluator


def mask_cfg(policy="autofocus"):
    cfg = model_zoo.get_config("Synthetic/autofocus_compact_mask_fpn.yaml")
    af = cfg.MODEL.AUTOFOCUS
    af.CHIP_POLICY = policy
    af.SCALES = [[256, 384], [-1, -1]]
    af.GRID_TILE_SIZE = 256
    # A small proposal budget keeps the raw per-view detections (and their masks) few on the CPU.
    af.PROPOSALS_PER_MPIX, af.MIN_PROPOSALS = 0.0, 60
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 60
    return cfg


def check_in_original_frame(instances, hw):
    """Boxes inside the (H, W) image, and every mask pixel inside its own box (1 px tolerance)."""
    h, w = hw
    boxes = instances.pred_boxes.tensor
    assert boxes.shape[1] == 4 and (boxes[:, :2] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    masks = instances.pred_masks
    assert masks.dtype == torch.bool and masks.shape == (len(instances), h, w)
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    inside = (
        (xs >= boxes[:, 0, None, None].floor() - 1) & (xs <= boxes[:, 2, None, None].ceil())
        & (ys >= boxes[:, 1, None, None].floor() - 1) & (ys <= boxes[:, 3, None, None].ceil())
    )
    assert not (masks & ~inside).any()


@pytest.mark.slow
def test_mask_rcnn_autofocus_eval_with_coco_bbox_and_segm(tmp_path):
    prefix = f"masktest_{uuid.uuid4().hex[:8]}"
    register_synthetic_datasets(str(tmp_path), prefix=prefix)
    name = f"{prefix}_tiny"
    dicts = DatasetCatalog.get(name)[:2]
    assert all(len(a["segmentation"][0]) >= 6 for d in dicts for a in d["annotations"])
    cfg = mask_cfg()
    cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD = [0.0]  # random weights: every cell is a FocusPixel
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    evaluator = build_coco_evaluator(name, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    for d in dicts:
        image = utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "image_id": d["image_id"],
                   "height": d["height"], "width": d["width"], "file_name": d["file_name"]}]
        with torch.no_grad():
            outputs = model(inputs)
        instances = outputs[0]["instances"]
        assert len(instances) > 0
        assert outputs[0]["autofocus"]["chips_per_scale"][1] >= 1  # a chip of scale 1 was run
        check_in_original_frame(instances, (d["height"], d["width"]))
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert 0.0 <= results[task]["AP"] <= 100.0


def test_keypoint_rcnn_autofocus_outputs_in_the_original_frame():
    cfg = mask_cfg(policy="grid")
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 4
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (32, 32)
    cfg.INPUT.SNIPER.ENABLED = False  # no keypoint chip training: only inference is tested
    cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS = "raw"  # the paper's merge (the mask test: filtered)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(1)
    image = (torch.rand(3, 400, 600) * 255).round()
    with torch.no_grad():
        out = model([{"image": image}])[0]
    assert out["autofocus"]["chips_per_scale"][1] == 6  # 2 x 3 grid tiles at scale 1
    inst = out["instances"]
    n = len(inst)
    assert n > 0 and set(inst.get_fields()) == {
        "pred_boxes", "scores", "pred_classes", "pred_keypoints", "pred_keypoint_heatmaps"
    }
    assert inst.pred_keypoints.shape == (n, 4, 3)
    assert inst.pred_keypoint_heatmaps.shape[:2] == (n, 4)
    # Detectron2's keypoint head puts each keypoint inside its box: in the original frame too.
    boxes, points = inst.pred_boxes.tensor, inst.pred_keypoints[..., :2]
    assert (points >= boxes[:, None, :2] - 1).all() and (points <= boxes[:, None, 2:] + 1).all()
    assert (boxes[:, 2] <= 600).all() and (boxes[:, 3] <= 400).all()
    # Scaled with the requested output size, as Detectron2's detector_postprocess does.
    with torch.no_grad():
        half = model([{"image": image, "height": 200, "width": 300}])[0]["instances"]
    assert torch.allclose(half.pred_keypoints[..., :2], points / 2, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_rcnn_autofocus_on_cuda():
    cfg = mask_cfg(policy="grid")
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = (torch.rand(3, 300, 500) * 255).round()
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    assert inst.pred_masks.device.type == "cuda"
    check_in_original_frame(inst.to("cpu"), (300, 500))


def test_sniper_mapper_moves_polygons_into_the_chip_keeping_holes(tmp_path):
    from PIL import Image

    from autofocus_d2.data import SNIPERDatasetMapper
    from autofocus_d2.data.synthetic_shapes import shape_polygons

    path = str(tmp_path / "img.png")
    Image.new("RGB", (600, 400)).save(path)
    ring = {"bbox": [150, 100, 60, 60], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
            "segmentation": shape_polygons("ring", (150, 100, 60, 60))}
    record = {
        "file_name": path, "height": 400, "width": 600, "image_id": 1, "annotations": [ring],
        "sniper_chip": [100.0, 50.0, 356.0, 306.0], "sniper_scale": 0, "sniper_zoom": 0.5,
        "sniper_valid_range": [-1.0, -1.0], "sniper_negative": False,
    }
    mapper = SNIPERDatasetMapper(is_train=True, image_format="RGB", chip_size=128, use_instance_mask=True)
    inst = mapper(record)["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[25.0, 25.0, 55.0, 55.0]]
    # (vertex - chip origin) * zoom: the outer ellipse's rightmost vertex (210, 130) -> (55, 40).
    polygon = inst.gt_masks.polygons[0][0]
    assert polygon[:2].tolist() == [55.0, 40.0]
    mask = inst.gt_masks.crop_and_resize(inst.gt_boxes.tensor, 30)[0]  # 1 px cells of the box
    assert mask[15, 15] == 0 and mask[15, 1] == 1  # the hole stays a hole; the rim is filled
    assert "segmentation" in record["annotations"][0]  # the record is untouched
    no_masks = SNIPERDatasetMapper(is_train=True, image_format="RGB", chip_size=128)(record)
    assert not no_masks["instances"].has("gt_masks")
