"""tools/predict.py and autofocus_d2.prediction: sharding, outputs, resume, fingerprint, failures,
several processes, and the merged COCO results against Detectron2's own evaluation."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autofocus_d2 import model_zoo
from autofocus_d2.config import load_autofocus_config
from autofocus_d2.data import SYNTHETIC_CATEGORIES, register_coco_datasets
from autofocus_d2.evaluation import build_coco_evaluator
from autofocus_d2.prediction import (
    PredictOptions,
    collect_inputs,
    model_fingerprint,
    predict,
    shard_indices,
)
from autofocus_d2.utils.distributed import launch_starts_cpu_processes
from autofocus_d2.model_zoo import get_config_file

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")
MASK_CONFIG = get_config_file("Synthetic/autofocus_compact_mask_fpn.yaml")
# A shorter scale chain than the config's (512 then full resolution) keeps CPU time low.
SMALL_CHAIN = ["MODEL.AUTOFOCUS.SCALES", "[[256, 384], [512, 768]]"]


def _load_tool():
    from tools import predict

    return predict


def _random_init_checkpoint(folder, config_name: str) -> str:
    """A random-init model saved as a checkpoint; the FocusPixel bias makes a few chips."""
    torch.manual_seed(0)
    model = model_zoo.get(config_name, device="cpu")
    model.focus_head.predictor.bias.data = torch.tensor([2.0, -2.0])
    DetectionCheckpointer(model, str(folder)).save("random_init")
    return str(folder / "random_init.pth")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _random_init_checkpoint(tmp_path_factory.mktemp("weights"), "Synthetic/autofocus_compact_fpn.yaml")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The tiny split's first 4 images, two of them in a subfolder."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    files = [d["file_name"] for d in DatasetCatalog.get("autofocus_synth_tiny")[:4]]
    for i, f in enumerate(files):
        shutil.copy(f, folder / ("sub" if i % 2 else ".") / f"img{i}.jpg")
    return folder


def options(inputs, output, weights, *extra_opts, **kwargs) -> PredictOptions:
    return PredictOptions(config_file=CONFIG, inputs=[str(i) for i in inputs], output=str(output),
                          opts=["MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", 0, *SMALL_CHAIN, *extra_opts],
                          log_period=0.0, **kwargs)


def assert_same_predictions(a, b, atol=1e-3):
    """Two {path: bytes} output sets hold the same images, the same records and instances; box
    coordinates and scores may differ by float summation order (processes with other thread counts
    than the reference run: ~1e-4 px seen), nothing else may."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = json.loads(a[name]), json.loads(b[name])
        xi, yi = x.pop("instances"), y.pop("instances")
        assert x == y, name
        assert len(xi) == len(yi), name
        for p, q in zip(xi, yi):
            assert p["category_id"] == q["category_id"] and p.get("category_name") == q.get("category_name")
            assert abs(p["score"] - q["score"]) <= atol, (name, p, q)
            assert all(abs(u - v) <= atol for u, v in zip(p["bbox"], q["bbox"])), (name, p, q)


def outputs_of(folder):
    """{relative path: bytes} of every per-image output under folder/predictions."""
    root = os.path.join(folder, "predictions")
    found = {}
    for base, _, files in os.walk(root):
        for f in files:
            path = os.path.join(base, f)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


# ---------------------------------------------------------------------------------- sharding / inputs
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_items", [0, 1, 2, 7, 10])
def test_shards_cover_every_input_exactly_once(world_size, num_items):
    shards = [shard_indices(num_items, world_size, r) for r in range(world_size)]
    assert sorted(i for s in shards for i in s) == list(range(num_items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard_indices(num_items, world_size, r) for r in range(world_size)]  # deterministic


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match="rank must be in"):
        shard_indices(5, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_indices(5, 0, 0)


def test_inputs_from_folders_globs_list_files_and_datasets(image_folder, tmp_path):
    from_folder = collect_inputs([str(image_folder)])
    assert [i.key for i in from_folder] == ["img0.jpg", "img2.jpg", "sub/img1.jpg", "sub/img3.jpg"]
    assert [i.image_id for i in from_folder] == [0, 1, 2, 3]
    from_glob = collect_inputs([str(image_folder / "**" / "img[13].jpg")])
    assert [i.key for i in from_glob] == ["img1.jpg", "img3.jpg"]  # relative to their common folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{image_folder}/img0.jpg\n\n{image_folder}/sub/img3.jpg\nmissing.jpg\n")
    from_list = collect_inputs([str(listing)])
    assert [os.path.basename(i.file_name) for i in from_list] == ["img0.jpg", "img3.jpg", "missing.jpg"]
    # A path given twice is predicted once.
    assert len(collect_inputs([str(image_folder), str(image_folder / "img0.jpg")])) == 4
    dataset = collect_inputs(["autofocus_synth_tiny"])
    dicts = DatasetCatalog.get("autofocus_synth_tiny")
    assert [(i.file_name, i.image_id) for i in dataset] == [(d["file_name"], d["image_id"]) for d in dicts]
    with pytest.raises(ValueError, match="not an image file, a folder"):
        collect_inputs([str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match="matches no image"):
        collect_inputs([str(tmp_path / "*.png")])


def test_fingerprint_follows_the_weights_content_and_the_config(weights, tmp_path):
    cfg = load_autofocus_config(CONFIG, ["MODEL.WEIGHTS", weights])
    copy = str(tmp_path / "copy.pth")
    shutil.copy(weights, copy)
    assert model_fingerprint(cfg) == model_fingerprint(load_autofocus_config(CONFIG, ["MODEL.WEIGHTS", copy]))
    other_config = load_autofocus_config(CONFIG, ["MODEL.WEIGHTS", weights, "MODEL.AUTOFOCUS.DILATION", [1]])
    assert model_fingerprint(other_config) != model_fingerprint(cfg)
    # What does not decide the predictions does not count: the data loader, the device.
    assert model_fingerprint(cfg) == model_fingerprint(load_autofocus_config(
        CONFIG, ["MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", 7, "MODEL.DEVICE", "cuda", "SEED", 3]))
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert model_fingerprint(load_autofocus_config(CONFIG, ["MODEL.WEIGHTS", copy])) != model_fingerprint(cfg)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        model_fingerprint(load_autofocus_config(CONFIG))


# ---------------------------------------------------------------------------------- one process
@pytest.mark.slow
def test_outputs_resume_and_fingerprint(image_folder, weights, tmp_path):
    out = tmp_path / "out"
    summary = predict(options([image_folder], out, weights))
    assert summary["predicted"] == 4 and summary["failed"] == 0 and summary["skipped_complete"] == 0
    first = outputs_of(out)
    assert sorted(first) == ["img0.jpg.json", "img2.jpg.json", "sub/img1.jpg.json", "sub/img3.jpg.json"]
    record = json.loads(first["img0.jpg.json"])
    w, h = Image.open(image_folder / "img0.jpg").size
    assert (record["width"], record["height"]) == (w, h)
    assert record["instances"], "the random-init model gives detections"
    for d in record["instances"]:
        x, y, bw, bh = d["bbox"]
        assert 0 <= x and 0 <= y and bw >= 0 and bh >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
        assert d["category_name"] == SYNTHETIC_CATEGORIES[d["category_id"]]
    stats = record["autofocus"]
    assert stats["chips_per_scale"][0] == 1 and len(stats["chip_boxes_per_scale"][1]) == stats["chips_per_scale"][1]
    assert sum(stats["pixels_per_scale"]) < sum(stats["pyramid_pixels_per_scale"])
    assert summary["pixels"] == sum(sum(json.loads(b)["autofocus"]["pixels_per_scale"]) for b in first.values())
    log = (out / "log.txt").read_text()
    assert "[####################] 4/4 (100%)" in log and "\r" not in log
    assert "images/s" in log and "of the pyramid's" in log and "0 failed" in log
    assert not [f for f in os.listdir(out / "predictions") if f.endswith(".tmp")]

    # Resume: the complete outputs are skipped (not rewritten), a truncated and a missing one redone.
    truncated, missing = out / "predictions" / "img2.jpg.json", out / "predictions" / "sub" / "img3.jpg.json"
    truncated.write_bytes(first["img2.jpg.json"][:100])
    missing.unlink()
    untouched = out / "predictions" / "img0.jpg.json"
    stamp = untouched.stat().st_mtime_ns
    summary = predict(options([image_folder], out, weights))
    assert (summary["predicted"], summary["skipped_complete"]) == (2, 2)
    assert untouched.stat().st_mtime_ns == stamp
    assert outputs_of(out) == first

    # Another config: every output redone, with the new fingerprint.
    summary = predict(options([image_folder], out, weights, "MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE", 5,
                              "TEST.DETECTIONS_PER_IMAGE", 5))
    assert (summary["predicted"], summary["skipped_complete"]) == (4, 0)
    redone = {k: json.loads(v) for k, v in outputs_of(out).items()}
    assert {r["fingerprint"] for r in redone.values()} == {summary["fingerprint"]} != {record["fingerprint"]}
    assert all(len(r["instances"]) <= 5 for r in redone.values())
    # --overwrite redoes complete outputs too.
    summary = predict(options([image_folder], out, weights, "MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE", 5,
                              "TEST.DETECTIONS_PER_IMAGE", 5,
                              overwrite=True))
    assert (summary["predicted"], summary["skipped_complete"]) == (4, 0)


def test_bad_files_are_listed_and_the_exit_status_says_so(image_folder, weights, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(image_folder, folder)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    jpeg = (folder / "img0.jpg").read_bytes()
    (folder / "sub" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    out = tmp_path / "out"
    tool = _load_tool()
    status = tool.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out),
                        "--num-workers", "0", "--opts", "MODEL.WEIGHTS", weights, *SMALL_CHAIN])
    assert status == 1
    failures = json.loads((out / "failures.json").read_text())
    assert [f["key"] for f in failures] == ["broken.jpg", "empty.png", "sub/truncated.jpg"]
    assert all("cannot read the image" in f["reason"] for f in failures)
    assert sorted(outputs_of(out)) == ["img0.jpg.json", "img2.jpg.json", "sub/img1.jpg.json", "sub/img3.jpg.json"]
    assert "3 input(s) failed" in capsys.readouterr().err
    # Only the good images: status 0, and the failures file of this run is empty.
    for bad in ("broken.jpg", "empty.png", "sub/truncated.jpg"):
        (folder / bad).unlink()
    assert tool.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out),
                      "--num-workers", "0", "--opts", "MODEL.WEIGHTS", weights, *SMALL_CHAIN]) == 0
    assert json.loads((out / "failures.json").read_text()) == []


def test_usage_errors_exit_with_status_2(image_folder, tmp_path, capsys):
    tool = _load_tool()
    assert tool.main(["--config-file", CONFIG, "--input", str(image_folder), "--output", str(tmp_path)]) == 2
    assert "MODEL.WEIGHTS is empty" in capsys.readouterr().err
    if not launch_starts_cpu_processes() and not torch.cuda.is_available():
        assert tool.main(["--config-file", CONFIG, "--input", str(image_folder), "--output", str(tmp_path),
                          "--num-gpus", "2", "--opts", "MODEL.WEIGHTS", "x.pth"]) == 2
        assert "starts them only with CUDA" in capsys.readouterr().err


def test_masks_are_written_as_rle(tmp_path):
    mask_weights = _random_init_checkpoint(tmp_path, "Synthetic/autofocus_compact_mask_fpn.yaml")
    image = tmp_path / "one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8)).save(image)
    opts = options([image], tmp_path / "out", mask_weights)
    opts.config_file = MASK_CONFIG
    assert predict(opts)["predicted"] == 1
    record = json.loads((tmp_path / "out" / "predictions" / "one.png.json").read_text())
    assert record["instances"]
    for d in record["instances"]:
        assert d["segmentation"]["size"] == [200, 260] and isinstance(d["segmentation"]["counts"], str)


# ---------------------------------------------------------------------------------- COCO results
def _detectron2_evaluation(cfg, weights, dataset_name, output_dir):
    """inference_on_dataset with Detectron2's COCOEvaluator: what train_net.py --eval-only runs."""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    evaluator = build_coco_evaluator(dataset_name, str(output_dir), distributed=False)
    return inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), evaluator)


def _pycocotools_ap(json_file, results_file) -> float:
    gt = COCO(json_file)
    coco_eval = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats[0] * 100


@pytest.mark.slow
def test_merged_coco_results_give_detectron2s_ap(tiny_coco, weights, tmp_path):
    """The merged results of the tiny split are the very detections of Detectron2's evaluation,
    and on a ground truth where the random-init model scores (its own confident detections, as a
    registered COCO dataset) they give Detectron2's AP through pycocotools."""
    results_file = tmp_path / "results.json"
    opts = options(["autofocus_synth_tiny"], tmp_path / "out", weights, coco_results=str(results_file))
    assert predict(opts)["coco_results"]["images"] == 6
    cfg = load_autofocus_config(CONFIG, opts.opts)
    _detectron2_evaluation(cfg, weights, "autofocus_synth_tiny", tmp_path / "eval")
    ours = json.loads(results_file.read_text())
    theirs = json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text())
    key = lambda r: (r["image_id"], -r["score"], r["bbox"])  # noqa: E731
    assert ours and sorted(ours, key=key) == sorted(theirs, key=key)

    tiny_json, _ = tiny_coco
    pseudo = json.loads(open(tiny_json).read())
    pseudo["annotations"] = [
        {"id": n + 1, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
         "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
        for n, r in enumerate(r for r in theirs if r["score"] >= 0.5)
    ]
    pseudo_json = tmp_path / "pseudo.json"
    pseudo_json.write_text(json.dumps(pseudo))
    register_coco_datasets([("predict_test_pseudo_gt", str(pseudo_json), MetadataCatalog.get("autofocus_synth_tiny").image_root)])
    pseudo_results = tmp_path / "pseudo_results.json"
    opts = options(["predict_test_pseudo_gt"], tmp_path / "out_pseudo", weights, coco_results=str(pseudo_results))
    predict(opts)
    expected = _detectron2_evaluation(cfg, weights, "predict_test_pseudo_gt", tmp_path / "eval_pseudo")
    assert expected["bbox"]["AP"] > 10  # not a comparison of two zeros
    assert _pycocotools_ap(str(pseudo_json), pseudo_results) == pytest.approx(expected["bbox"]["AP"], abs=1e-9)


# ---------------------------------------------------------------------------------- two processes
@pytest.mark.skipif(not launch_starts_cpu_processes() and not torch.cuda.is_available(),
                    reason="this Detectron2's launch() starts several processes only with CUDA (0.6); "
                           "upstream main uses gloo on the CPU")
def test_two_processes_write_the_outputs_of_one(repo_root, image_folder, weights, tmp_path):
    one = tmp_path / "one"
    predict(options([image_folder], one, weights))
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "predict.py"), "--config-file", CONFIG, "--input", str(image_folder), "--output", str(two),
         "--num-gpus", "2", "--num-workers", "0", "--log-period", "0", "--coco-results",
         "--opts", *map(str, options([], two, weights).opts)],
        capture_output=True, text=True, cwd=repo_root, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_predictions(outputs_of(two), outputs_of(one))
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    # Each process logged its own progress: its half of the 4 images.
    assert "2/2 (100%)" in (two / "log.txt").read_text()
    assert "2/2 (100%)" in (two / "log.txt.rank1").read_text()
    assert len(json.loads((two / "coco_instances_results.json").read_text())) == sum(
        len(json.loads(b)["instances"]) for b in outputs_of(one).values())
