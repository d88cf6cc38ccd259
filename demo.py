#!/usr/bin/env python
"""Run an AutoFocus model on images and draw what it found and where it looked.

Like Detectron2's demo/demo.py:

    python demo.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \\
        --input datasets/autofocus_synth/val/images/ --output output/demo_pictures \\
        --show-chips --opts MODEL.WEIGHTS output/demo/model_final.pth

or with the weights alone (a checkpoint of train_net.py records its config and class names):

    python demo.py --weights output/demo/model_final.pth --input image.jpg --output out/

For each image it prints the detections, the chips per scale, the pixels processed (and their
share of the full image pyramid's) and the time, and with --output writes to that folder:

    <name>.json              the detections with score >= --confidence-threshold: boxes XYWH in
                             original pixels, scores, category ids and names (docs/predict.md)
    <name>_detections.png    those detections drawn
    <name>_chips.png         (--show-chips) the regions processed at every scale, one colour each
                             (a whole-image chip: a band inside the image border)
    <name>_focus_s<k>.png    (--show-chips) the FocusPixel map predicted at scale k, for every scale
                             that predicted one, with its colour bar

CPU or CUDA: the config's MODEL.DEVICE, e.g. --opts MODEL.DEVICE cuda.
"""
import argparse
import glob
import json
import os
import sys
import time

import autofocus_d2  # noqa: F401,I001  (first: it imports Detectron2 without its known warnings)
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from PIL import Image

from autofocus_d2.checkpoint import load_weights
from autofocus_d2.data import add_register_coco_argument, register_coco_datasets
from autofocus_d2.evaluation import DetectionCapCounter, detection_cap, score_floor
from autofocus_d2.model_metadata import load_tool_config
from autofocus_d2.prediction import image_detections
from autofocus_d2.utils.quiet_logs import quiet_logs
from autofocus_d2.utils import ImageReadError, add_colorbar, draw_chips, draw_detections, focus_heatmap, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", metavar="FILE",
                   help="path to the config file (default: the one recorded in the weights by train_net.py)")
    p.add_argument("--weights", metavar="FILE", help="checkpoint to run (same as --opts MODEL.WEIGHTS FILE)")
    p.add_argument("--input", nargs="+", required=True,
                   help="image files, glob patterns ('imgs/*.jpg') or folders")
    p.add_argument("--output", help="folder for the pictures (created); without it only prints")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="minimum score of the detections kept and drawn")
    p.add_argument("--show-chips", action="store_true",
                   help="also draw the chips of every scale and the FocusPixel maps")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS x.pth MODEL.DEVICE cuda")
    return add_register_coco_argument(p)


def setup_cfg(args):
    # As Detectron2's demo: the threshold is applied by the ROI heads (to every view, before focus
    # stacking; with hard NMS the detections kept above it are the same as thresholding after).
    opts = list(args.opts) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", args.confidence_threshold]
    try:
        cfg = load_tool_config(args.config_file, opts, args.weights)
    except ValueError as e:  # no config at all, or one that contradicts the weights
        raise SystemExit(f"error: {e}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; "
                         "run on the CPU with --opts MODEL.DEVICE cpu")
    return cfg


def expand_inputs(patterns):
    """Image paths of the --input arguments: files, glob patterns and folders (their images)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in pattern for c in "*?["):
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise SystemExit(f"error: --input {pattern!r} is not a file, folder or glob pattern")
        if not found:
            raise SystemExit(f"error: --input {pattern!r} matches no image")
        paths.extend(found)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise SystemExit(f"error: several inputs are named {duplicates}: their pictures would "
                         "overwrite each other in --output; pass them in separate runs")
    return paths


class AutoFocusPredictor:
    """DefaultPredictor for AutoFocusRCNN that also returns the pipeline's details: takes one
    image (H, W, C) in cfg.INPUT.FORMAT and returns the model's output dict for it, with
    ``autofocus`` and ``autofocus_details``, every box in the frame of the test-resized image
    (the image itself when INPUT.MIN_SIZE_TEST is 0, as in the AutoFocus configs)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = build_model(cfg)
        if getattr(self.model, "pipeline", None) is None:
            raise SystemExit(f"error: {cfg.MODEL.META_ARCHITECTURE} has no AutoFocus pipeline; "
                             "use a config with META_ARCHITECTURE AutoFocusRCNN")
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            load_weights(self.model, cfg.MODEL.WEIGHTS)  # weights that do not fit are an error
        else:
            print("warning: MODEL.WEIGHTS is empty: the model has random weights", file=sys.stderr)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def resize(self, image: np.ndarray) -> np.ndarray:
        return self.aug.get_transform(image).apply_image(image)

    def __call__(self, image: np.ndarray):
        # uint8, as read: the pipeline makes it float on the model's device (a quarter of the bytes
        # until then: 0.3 GB instead of 1.3 GB for a 12000 x 9000 frame).
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model.autofocus_inference([{"image": tensor}], with_details=True)[0]


def to_rgb(image: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "BGR":
        return np.ascontiguousarray(image[:, :, ::-1])
    if fmt == "RGB":
        return image
    raise SystemExit(f"error: demo.py draws INPUT.FORMAT BGR or RGB images, not {fmt!r}")


def save(rgb: np.ndarray, path: str) -> None:
    Image.fromarray(rgb).save(path)


def megapixels(n: float) -> str:
    return f"{n / 1e6:.2f} MP"


def main(argv=None):
    quiet_logs()
    args = get_parser().parse_args(argv)
    register_coco_datasets(args.register_coco)  # class names come from DATASETS.TEST[0]'s metadata
    cfg = setup_cfg(args)
    paths = expand_inputs(args.input)
    predictor = AutoFocusPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    # Dense scenes: images whose predictions reach TEST.DETECTIONS_PER_IMAGE, said once at the end.
    capped = DetectionCapCounter(detection_cap(cfg), "demo.py", score_floor(cfg))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    device = torch.device(cfg.MODEL.DEVICE)

    def process(path):
        original = read_image(path, format=cfg.INPUT.FORMAT, max_mpix=cfg.INPUT.MAX_IMAGE_MPIX)
        image = predictor.resize(original)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        output = predictor(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start

        instances = output["instances"].to("cpu")
        capped.add(instances.scores, instances.pred_boxes.tensor)
        instances = instances[instances.scores >= args.confidence_threshold]
        stats = output["autofocus"]
        pixels, pyramid = sum(stats["pixels_per_scale"]), sum(stats["pyramid_pixels_per_scale"])
        print(f"{path}: {len(instances)} detections in {seconds:.2f} s; chips per scale "
              f"{stats['chips_per_scale']}; pixels {megapixels(pixels)} = {pixels / pyramid:.2f} "
              f"of the pyramid's {megapixels(pyramid)}"
              + (f"; scales skipped (no finer than the last) {stats['skipped_scales']}"
                 if stats.get("skipped_scales") else ""))
        if not args.output:
            return
        rgb = to_rgb(image, cfg.INPUT.FORMAT)
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        record = image_detections(path, detector_postprocess(instances, *original.shape[:2]),
                                  *original.shape[:2], metadata.get("thing_classes", None))
        with open(stem + ".json", "w") as f:
            json.dump(record, f, indent=1)
        save(draw_detections(rgb, instances, metadata, args.confidence_threshold), stem + "_detections.png")
        if args.show_chips:
            save(draw_chips(rgb, stats["chip_boxes_per_scale"]), stem + "_chips.png")
            details = output["autofocus_details"]
            for k, (views, maps) in enumerate(zip(details["views_per_scale"],
                                                  details["focus_maps_per_scale"])):
                if any(m is not None for m in maps):
                    save(add_colorbar(focus_heatmap(rgb, views, maps, predictor.model.focus_stride)),
                         f"{stem}_focus_s{k}.png")

    # A bad file (unreadable, of an unsupported mode, too large, rejected by the model) is
    # reported with its name and reason; the other files are still processed.
    failed = []
    for path in paths:
        try:
            process(path)
        except (ImageReadError, ValueError, RuntimeError, OSError, MemoryError) as e:
            reason = str(e).removeprefix(f"{path}: ")  # an ImageReadError names the file itself
            if not isinstance(e, ImageReadError):
                reason = f"{type(e).__name__}: {reason}"
            print(f"error: {path}: {reason}", file=sys.stderr)
            failed.append((path, reason))
    if capped.message():
        print(f"warning: {capped.message()}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(paths)} images failed:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
