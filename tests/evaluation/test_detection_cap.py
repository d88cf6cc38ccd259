"""Dense scenes: TEST.DETECTIONS_PER_IMAGE is the one cap (views, AutoFocus's final merge, COCO's
maxDets), and images whose predictions reach it are counted and reported once."""
import logging

import torch
from detectron2.config import get_cfg
from detectron2.evaluation import COCOEvaluator

from autofocus_d2 import add_autofocus_config
from autofocus_d2.data import register_coco_datasets, warn_dense_scenes
from autofocus_d2.evaluation import (
    DetectionCapCounter,
    DetectionCapEvaluator,
    build_coco_evaluator,
    evaluation_max_dets,
    final_detection_cap,
)
from autofocus_d2.evaluation import coco as coco_module
from autofocus_d2.evaluation.detection_cap import distinct_detections, results_at_cap
from autofocus_d2.inference.pipeline import build_autofocus_pipeline

CAP_LOGGER = "autofocus_d2.evaluation.detection_cap"


def dense_cfg(cap):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    af.CHIP_POLICY = "single"
    af.SCALES = [[400, 600], [-1, -1]]
    af.FOCUS_THRESHOLD, af.DILATION, af.MIN_CHIP_SIZE = [0.5], [1], [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 2
    af.DETECTIONS_PER_IMAGE = 3  # below the cap: the final merge keeps TEST.DETECTIONS_PER_IMAGE
    cfg.TEST.DETECTIONS_PER_IMAGE = cap
    return cfg


def test_a_planted_dense_image_reaches_the_cap_and_is_reported_once(planted_detector, paint_image, logged):
    cfg = dense_cfg(cap=5)
    assert final_detection_cap(cfg) == 5 and evaluation_max_dets(cfg) == 100
    # 12 separate squares (40 px, 40 px apart) in one image, 2 in the other.
    dense = paint_image((800, 1200), [(0, 80 * i, 80 * j, 80 * i + 40, 80 * j + 40)
                                      for i in range(4) for j in range(3)])
    sparse = paint_image((800, 1200), [(0, 100, 100, 140, 140), (0, 400, 400, 440, 440)])
    model = planted_detector(separate=True)
    with torch.no_grad():
        outputs = build_autofocus_pipeline(cfg)(model, [{"image": dense}, {"image": sparse}])
    assert [len(o["instances"]) for o in outputs] == [5, 2]  # the planted detector found 12 and 2
    counter = DetectionCapCounter(5, "demo.py", min_score=0.5)
    assert [counter.add(o["instances"].scores) for o in outputs] == [True, False]
    messages = logged(CAP_LOGGER)
    for _ in range(3):
        counter.warn()
    assert messages == [counter.message()]
    assert messages[0].startswith("demo.py: 1 of 2 images reached the cap of 5 detections per image "
                                  "(TEST.DETECTIONS_PER_IMAGE) with scores >= 0.5")
    # The evaluator of train_net.py: the same count, one warning in evaluate().
    evaluator = DetectionCapEvaluator(5, 0.5)
    evaluator.reset()
    evaluator.process([{}, {}], outputs)
    assert evaluator.evaluate() is None
    assert len(messages) == 2 and "evaluation: 1 of 2 images reached the cap of 5" in messages[1]
    # No image at the cap, or low-score detections only (a weak model, raw view detections): no warning.
    quiet = DetectionCapCounter(100, min_score=0.05)
    assert not quiet.add([0.9] * 99) and not quiet.add([0.9] * 99 + [0.01] * 101)
    assert quiet.add([0.9] * 100)
    quiet.images_at_cap = 0
    assert quiet.warn() is None and len(messages) == 2


def test_the_coco_evaluation_counts_as_many_detections_as_the_cap(tiny_coco, monkeypatch):
    register_coco_datasets([["wtc_cap_tiny", *tiny_coco]])
    # What build_coco_evaluator passes to Detectron2's COCOEvaluator (its public max_dets_per_image
    # argument; default None: COCO's [1, 10, 100]).
    passed = []

    def recording(*args, **kwargs):
        passed.append(kwargs.get("max_dets_per_image"))
        return COCOEvaluator(*args, **kwargs)

    monkeypatch.setattr(coco_module, "COCOEvaluator", recording)
    assert isinstance(build_coco_evaluator("wtc_cap_tiny"), COCOEvaluator)
    assert isinstance(build_coco_evaluator("wtc_cap_tiny", max_dets=evaluation_max_dets(dense_cfg(300))),
                      COCOEvaluator)
    assert passed == [None, 300]
    assert evaluation_max_dets(dense_cfg(30)) == 100  # never fewer than COCO's 100


def test_register_coco_records_the_densest_image_and_suggests_the_setting(tiny_coco, logged, caplog):
    caplog.set_level(logging.INFO, logger="autofocus_d2.data.own_datasets")  # as the tools' setup_logger
    register_coco_datasets([["wtc_cap_tiny", *tiny_coco]])
    from detectron2.data import MetadataCatalog

    most = MetadataCatalog.get("wtc_cap_tiny").max_objects_per_image
    assert 1 < most < 100
    messages = logged("autofocus_d2.data.own_datasets")
    assert warn_dense_scenes(dense_cfg(100), ["wtc_cap_tiny"]) == []
    names = list(MetadataCatalog.get("wtc_cap_tiny").thing_classes)
    assert messages == [f"--register-coco wtc_cap_tiny: classes {names}, at most {most} objects per image "
                        "(TEST.DETECTIONS_PER_IMAGE: 100)"]
    hints = warn_dense_scenes(dense_cfg(most - 1), ["wtc_cap_tiny"])
    assert messages[2:] == hints and len(hints) == 1
    assert f"wtc_cap_tiny has up to {most} objects per image, more than the cap of {most - 1}" in hints[0]
    assert f"TEST.DETECTIONS_PER_IMAGE {most + most // 2}" in hints[0]


def test_benchmark_results_at_the_cap_give_one_warning_per_method():
    results = {"pyramid": [{"image_id": 1, "score": 0.9}] * 4 + [{"image_id": 2, "score": 0.9}] * 3,
               "autofocus": [{"image_id": 1, "score": 0.9}] * 2 + [{"image_id": 1, "score": 0.01}] * 2}
    messages = results_at_cap(results, 3, 4, min_score=0.05)
    assert len(messages) == 1 and messages[0].startswith("pyramid: 1 of 3 images reached the cap of 4")


def test_soft_nms_duplicates_count_once_towards_the_cap():
    # 60 objects 50 px apart, each kept with 2 decayed duplicates (IoU ~0.8), as Soft-NMS leaves
    # them: 180 detections above the score floor, 60 objects.
    objects = torch.tensor([[50.0 * i, 50.0 * j, 50.0 * i + 40, 50.0 * j + 40] for i in range(10) for j in range(6)])
    boxes = torch.cat([objects, objects + 2, objects - 2])
    scores = torch.cat([torch.full((60,), 0.9), torch.full((60,), 0.3), torch.full((60,), 0.1)])
    assert distinct_detections(scores, boxes, 0.05) == 60
    assert distinct_detections(scores, None, 0.05) == 180  # without boxes every detection counts
    assert distinct_detections(scores, boxes, 0.5) == 60
    counter = DetectionCapCounter(100, min_score=0.05)
    assert not counter.add(scores, boxes) and counter.add(scores)
    # 120 distinct objects: at the cap of 100, with or without their duplicates.
    many = torch.tensor([[50.0 * i, 50.0 * j, 50.0 * i + 40, 50.0 * j + 40] for i in range(12) for j in range(10)])
    assert counter.add(torch.full((240,), 0.5), torch.cat([many, many + 2]))
    # The benchmark's COCO results (XYWH) count the same way.
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    results = {"autofocus": [{"image_id": 1, "score": float(s), "bbox": b.tolist()} for s, b in zip(scores, xywh)]}
    assert results_at_cap(results, 1, 100, min_score=0.05) == []
    assert len(results_at_cap(results, 1, 61, min_score=0.05)) == 0
    assert len(results_at_cap(results, 1, 60, min_score=0.05)) == 1
