"""Benchmark methods: Detectron2's TTA over the scale chain, method names, ground truth in the inputs."""
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from autofocus_d2.benchmark.runner import load_inputs, measure_method
from autofocus_d2.benchmark.suite import available_methods, build_method, check_methods
from autofocus_d2.benchmark.tta_method import ScaleChainTTAMapper
from autofocus_d2.structures import ScaleChain



def test_the_tta_mapper_resizes_to_the_scale_chains_sizes_in_order():
    mapper = ScaleChainTTAMapper(ScaleChain(scales=[[512, 768], [-1, -1]]))
    x = {"image": torch.zeros(3, 700, 900, dtype=torch.uint8), "height": 700, "width": 900}
    out = mapper(x)
    assert [tuple(a["image"].shape[-2:]) for a in out] == [(512, 658), (700, 900)]
    assert all(len(a["transforms"].transforms) >= 1 for a in out)


@pytest.mark.slow
def test_tta_runs_one_pass_per_scale_and_answers_in_the_original_frame(compact_cfg):
    cfg = compact_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    predict = build_method("tta", model, cfg)
    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.integers(0, 256, size=(3, 350, 450), dtype=np.uint8))
    with torch.no_grad():
        out = predict({"image": image, "height": 350, "width": 450, "image_id": 0})
    # Scale 0: shorter side 512 capped at 768 -> 512 x 658; scale 1: the original 350 x 450.
    assert out["autofocus"]["pixels_per_scale"] == [512 * 658, 350 * 450]
    assert [(p.scale, p.pixels) for p in out["detector_passes"]] == [(0, 512 * 658), (1, 350 * 450)]
    # The pipeline's pyramid skips scale 1 on this image (zoom 1 after 1.46: no finer); TTA does not.
    assert out["autofocus"]["pyramid_pixels_per_scale"] == [512 * 658, 0]
    inst = out["instances"]
    assert inst.image_size == (350, 450)
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    if len(inst):
        b = inst.pred_boxes.tensor
        assert float(b[:, 2].max()) <= 450 and float(b[:, 3].max()) <= 350
    assert "inference" not in vars(model)  # the timing wrapper is gone: the class method again


def test_method_names_cover_every_registered_policy_sahi_sizes_and_tta():
    names = available_methods()
    for name in ("single", "pyramid", "grid", "autofocus", "sahi", "sahi@S", "tta", "PyramidChipPolicy"):
        assert name in names
    check_methods(["single", "sahi@512", "sahi", "tta", "GridChipPolicy"])
    with pytest.raises(ValueError, match=r"unknown methods \['sahi@0', 'nope'\]"):
        check_methods(["pyramid", "sahi@0", "nope"])


@pytest.fixture
def tiny_dataset(tmp_path):
    name = "h4_tiny_gt_dataset"
    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(path)
    annos = [
        {"bbox": [10, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
        {"bbox": [0, 0, 60, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 1,
         "segmentation": [[0, 0, 60, 0, 60, 40, 0, 40]]},
        {"bbox": [30, 20, 50, 35], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0,
         "segmentation": [[30, 20, 50, 20, 50, 35, 30, 35]]},
    ]
    DatasetCatalog.register(name, lambda: [
        {"file_name": path, "image_id": 7, "height": 40, "width": 60, "annotations": annos}])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    json_file = str(tmp_path / "coco.json")
    convert_to_coco_json(name, json_file)
    MetadataCatalog.get(name).set(json_file=json_file)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_load_inputs_keeps_the_ground_truth_only_when_asked(compact_cfg, tiny_dataset):
    cfg = compact_cfg()
    (plain,) = load_inputs(cfg, tiny_dataset)
    assert "instances" not in plain and tuple(plain["image"].shape) == (3, 40, 60)
    (x,) = load_inputs(cfg, tiny_dataset, with_ground_truth=True)
    gt = x["instances"]
    assert gt.image_size == (40, 60)
    assert gt.gt_boxes.tensor.tolist() == [[10.0, 5.0, 30.0, 15.0], [30.0, 20.0, 50.0, 35.0]]  # crowd left out
    assert gt.gt_classes.tolist() == [1, 0]


def _perfect_predict(with_masks):
    """Outputs equal to the tiny dataset's two objects (boxes, and the rectangles' masks)."""
    def predict(x):
        inst = Instances((40, 60))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 5.0, 30.0, 15.0], [30.0, 20.0, 50.0, 35.0]]))
        inst.scores = torch.tensor([0.9, 0.8])
        inst.pred_classes = torch.tensor([1, 0])
        if with_masks:
            masks = torch.zeros(2, 40, 60, dtype=torch.bool)
            masks[0, 5:15, 10:30] = True
            masks[1, 20:35, 30:50] = True
            inst.pred_masks = masks
        return {"instances": inst, "detector_passes": [],
                "autofocus": {"pixels_per_scale": [2400], "chips_per_scale": [1],
                              "pyramid_pixels_per_scale": [2400]}}
    return predict


def test_mask_ap_beside_box_ap_when_the_outputs_carry_masks(compact_cfg, tiny_dataset):
    inputs = load_inputs(compact_cfg(), tiny_dataset)
    kwargs = dict(dataset_name=tiny_dataset, device=torch.device("cpu"), warmup=0, progress=False, mask_on=True)
    row = measure_method("perfect", _perfect_predict(True), inputs, **kwargs)
    assert row["evaluated"] == ["bbox", "segm"]
    assert row["AP"] == pytest.approx(100.0) and row["mask_AP"] == pytest.approx(100.0)
    boxes_only = measure_method("boxes", _perfect_predict(False), inputs, **kwargs)
    assert boxes_only["evaluated"] == ["bbox"] and boxes_only["AP"] == pytest.approx(100.0)
    assert boxes_only["mask_AP"] != boxes_only["mask_AP"]  # NaN: no masks to evaluate
    no_mask_on = measure_method("perfect", _perfect_predict(True), inputs, **dict(kwargs, mask_on=False))
    assert no_mask_on["evaluated"] == ["bbox"]


def _benchmark_tool():
    from tools import benchmark

    return benchmark


@pytest.mark.slow
def test_timing_only_needs_no_weights_and_reports_time_without_ap(repo_root, tiny_dataset, tmp_path, capsys):
    tool = _benchmark_tool()
    out = str(tmp_path / "bench")
    rc = tool.main(["--config-file", os.path.join(repo_root, "configs/Synthetic/autofocus_compact_fpn.yaml"),
                    "--dataset", tiny_dataset, "--timing-only", "--methods", "single", "pyramid",
                    "--warmup", "0", "--output", out, "--no-progress",
                    "--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth"),
                    "MODEL.AUTOFOCUS.SCALES", "[[20, 30], [-1, -1]]"])
    assert rc == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["timing_only"] is True and report["weights"] == "(random init: timing only)"
    assert report["sweep"] == [] and [r["method"] for r in report["methods"]] == ["single", "pyramid"]
    single, pyramid = report["methods"]
    assert math.isnan(single["AP"]) and single["evaluated"] == []
    # 40 x 60 image: scale 0 (20, 30) is 20 x 30; the pyramid adds the original 40 x 60. (With the
    # config's chain, scale 0 would zoom this small image by 12.8 and scale 1, zoom 1, be skipped.)
    assert single["pixels_per_image"] == 20 * 30 and pyramid["pixels_per_image"] == 20 * 30 + 40 * 60
    assert single["finer_ms_per_mpix"] is None and pyramid["finer_ms_per_mpix"] > 0
    assert not any("AP" in t["target"] for t in report["targets"])
    assert "## Time split" in open(os.path.join(out, "report.md")).read()
    assert tool.main(["--config-file", os.path.join(repo_root, "configs/Synthetic/autofocus_compact_fpn.yaml"),
                      "--dataset", tiny_dataset, "--methods", "sahi@x", "--output", out]) == 2
    assert "unknown methods ['sahi@x']" in capsys.readouterr().err


def _empty_predict(x):
    out = _perfect_predict(False)(x)
    out["instances"] = out["instances"][:0]
    return out


def test_each_method_keeps_its_coco_results_and_differs_from_the_pyramid_with_an_interval(compact_cfg, tiny_dataset):
    from autofocus_d2.benchmark.comparison import add_ap_differences
    from autofocus_d2.benchmark.runner import measure_methods
    from autofocus_d2.evaluation import load_coco_ground_truth

    inputs = load_inputs(compact_cfg(), tiny_dataset)
    rows, results = measure_methods([("pyramid", _perfect_predict(False)), ("empty", _empty_predict)], inputs,
                                    dataset_name=tiny_dataset, device=torch.device("cpu"), warmup=0, repeats=2,
                                    progress=False)
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in results["pyramid"]] == [
        (7, 1, [10.0, 5.0, 20.0, 10.0]), (7, 0, [30.0, 20.0, 20.0, 15.0])]
    assert results["empty"] == [] and rows[0]["repeats"] == 2 and rows[0]["AP"] == pytest.approx(100.0)
    add_ap_differences(rows, results, load_coco_ground_truth(tiny_dataset), [7], num_samples=20)
    assert rows[0]["AP_diff_vs_pyramid"] == 0.0 and rows[0]["AP_diff_ci95"] == [0.0, 0.0]
    # COCOeval's precision of one true positive is 1 / (1 + eps): 100 up to rounding.
    assert rows[1]["AP_diff_vs_pyramid"] == pytest.approx(-100.0, abs=1e-9)
    assert rows[1]["AP_diff_ci95"] == pytest.approx([-100.0, -100.0], abs=1e-9)


@pytest.mark.slow
def test_a_benchmark_on_other_data_saves_detections_and_warns_instead_of_judging(compact_cfg, repo_root, tiny_dataset, tmp_path, capsys):
    tool = _benchmark_tool()
    out = str(tmp_path / "bench")
    rc = tool.main(["--config-file", os.path.join(repo_root, "configs/Synthetic/autofocus_compact_fpn.yaml"),
                    "--dataset", tiny_dataset, "--methods", "single", "pyramid", "--sweep", "0.5",
                    "--repeats", "2", "--warmup", "0", "--output", out, "--no-progress"])
    assert rc == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["repeats"] == 2 and report["targets_checked"] is False and report["targets"] == []
    assert report["warnings"][0].startswith("only 1 images")
    assert report["detections"] == {m: f"detections/{m}.json" for m in ("single", "pyramid", "autofocus@0.5")}
    single, pyramid = report["methods"]
    with open(os.path.join(out, "detections", "single.json")) as f:
        saved = json.load(f)  # random init: whatever it found, as COCO results
    assert 0 < len(saved) <= compact_cfg().MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE
    assert all(d["image_id"] == 7 and len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in saved)
    assert pyramid["AP_diff_vs_pyramid"] == 0.0 and pyramid["AP_diff_ci95"] == [0.0, 0.0]
    assert len(single["repeat_median_time_s"]) == 2 and len(single["time_ratio_spread"]) == 2
    assert report["sweep"][0]["repeats"] == 1 and "AP_diff_ci95" in report["sweep"][0]
    agreement = report["scale0_agreement"]
    assert set(agreement["ms_per_mpix"]) == {"single", "pyramid", "autofocus@0.5"}
    printed = capsys.readouterr().out
    assert "[WARNING] only 1 images" in printed and "single vs pyramid: AP" in printed and "MISSED" not in printed
