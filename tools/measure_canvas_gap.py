#!/usr/bin/env python
"""Does a chip's detection change when a neighbour shares its canvas? Measured per gap width.

    python tools/measure_canvas_gap.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \
        --weights output/model_final.pth --images 10 --gaps 0 16 32 64 128

For each image, chips of ``--chip`` pixels (at the original resolution, the finest scale of the
compact chain) are cut around ground-truth objects. Each chip runs alone (its own padded pass) and
then on a canvas beside another chip of the same image, ``gap`` zero pixels apart (as
:mod:`autofocus_d2.inference.chip_canvas` packs them, mapped back with its ``chip_instances``). Per
gap: how far the chip's detections of score >= ``--score`` moved (1 - IoU of the best same-class
match, score change) and how many appeared or vanished. Prints a table and writes JSON to
``--output``.
"""
import argparse
import json
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

import autofocus_d2  # noqa: F401  (registers the model and datasets)
from autofocus_d2.config import load_autofocus_config
from autofocus_d2.inference.chip_canvas import (
    CanvasPlan,
    Placement,
    canvas_alignment,
    canvas_batch,
    canvas_proposal_budget,
    chip_instances,
    compose_canvas,
)


def chip_boxes(annotations, image_hw, side, limit):
    """Up to ``limit`` chips (x0, y0, x1, y1) of ``side`` px centred on the annotated objects."""
    h, w = image_hw
    chips = []
    for a in annotations[:limit]:
        x, y, bw, bh = a["bbox"]
        cx, cy = x + bw / 2, y + bh / 2
        x0 = int(min(max(0, cx - side / 2), w - side))
        y0 = int(min(max(0, cy - side / 2), h - side))
        chips.append((x0, y0, x0 + side, y0 + side))
    return chips


def compare(alone, packed, score):
    """Movement of ``alone``'s detections (score >= ``score``) in ``packed``: list of (1 - IoU,
    |score change|) and counts of vanished and appeared detections."""
    a, p = alone[alone.scores >= score], packed[packed.scores >= score * 0.5]
    moves, vanished = [], 0
    iou = pairwise_iou(a.pred_boxes, p.pred_boxes) if len(a) and len(p) else torch.zeros(len(a), len(p))
    same = a.pred_classes[:, None] == p.pred_classes[None, :]
    iou = iou * same
    for i in range(len(a)):
        if iou.shape[1] == 0 or iou[i].max() < 0.5:
            vanished += 1
            continue
        j = int(iou[i].argmax())
        moves.append((1 - float(iou[i, j]), abs(float(a.scores[i] - p.scores[j]))))
    strong = packed[packed.scores >= score]
    appeared = 0
    if len(strong):
        back = pairwise_iou(strong.pred_boxes, alone[alone.scores >= score * 0.5].pred_boxes) if len(alone) else None
        for i in range(len(strong)):
            if back is None or back.shape[1] == 0 or back[i].max() < 0.5:
                appeared += 1
    return moves, vanished, appeared


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", default="autofocus_synth_val")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--chips-per-image", type=int, default=6)
    p.add_argument("--chip", type=int, default=256, help="chip side, pixels")
    p.add_argument("--gaps", type=int, nargs="+", default=[0, 16, 32, 64, 128])
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument("--empty-neighbour", action="store_true",
                   help="the neighbour is an all-zero chip: what the canvas itself changes, without a neighbour's content")
    p.add_argument("--output", default="output/canvas_gap.json")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    cfg = load_autofocus_config(args.config_file, args.opts + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(args.weights)
    align = canvas_alignment(model.size_divisibility, model.focus_stride)
    raw = cfg.MODEL.AUTOFOCUS.RAW_SCORE_THRESH if cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS == "raw" else None
    options = {} if raw is None else {"raw_score_thresh": raw}
    af = cfg.MODEL.AUTOFOCUS

    def budget(chip_pixels):  # the pipeline's proposal budget: per chip alone, summed on a canvas
        n = canvas_proposal_budget(chip_pixels, af.PROPOSALS_PER_MPIX, af.MIN_PROPOSALS)
        return {} if n is None else {"max_proposals": n}

    stats = {g: {"moves": [], "vanished": 0, "appeared": 0, "detections": 0} for g in args.gaps}
    dicts = DatasetCatalog.get(args.dataset)[: args.images]
    for n, d in enumerate(dicts):
        image = torch.as_tensor(utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT).copy()).permute(2, 0, 1).float()
        boxes = chip_boxes(d.get("annotations", []), image.shape[-2:], args.chip, args.chips_per_image)
        crops = [model.normalize([image[:, y0:y1, x0:x1]]).tensor[0, :, : y1 - y0, : x1 - x0] for x0, y0, x1, y1 in boxes]
        with torch.no_grad():
            alone = [model.detect(model.normalize([image[:, y0:y1, x0:x1]]), with_focus=False, **options,
                                  **budget([(y1 - y0) * (x1 - x0)]))[0][0]
                     for x0, y0, x1, y1 in boxes]
            for i in range(len(crops)):
                j = (i + 1) % len(crops)
                if i == j:
                    continue
                hws = [tuple(crops[i].shape[-2:]), tuple(crops[j].shape[-2:])]
                for g in args.gaps:
                    x = -(-(hws[0][1] + g) // align) * align
                    shape = (-(-max(hws[0][0], hws[1][0]) // align) * align, -(-(x + hws[1][1]) // align) * align)
                    plan = CanvasPlan([shape], [Placement(0, 0, 0), Placement(0, x, 0)], [[0, 1]])
                    neighbour = torch.zeros_like(crops[j]) if args.empty_neighbour else crops[j]
                    canvas = compose_canvas([crops[i], neighbour], [(0, 0), (x, 0)], shape)
                    dets = model.detect(canvas_batch(canvas, 0), with_focus=False, **options,
                                        **budget([h * w for h, w in hws]))[0][0]
                    mine = chip_instances(dets, [0, 1], plan, hws, g)[0]
                    moves, vanished, appeared = compare(alone[i], mine, args.score)
                    s = stats[g]
                    s["moves"] += moves
                    s["vanished"] += vanished
                    s["appeared"] += appeared
                    s["detections"] += int((alone[i].scores >= args.score).sum())
        print(f"[gap] image {n + 1}/{len(dicts)}", flush=True)
    table = []
    for g in args.gaps:
        s = stats[g]
        ious = sorted(m[0] for m in s["moves"])
        dscores = sorted(m[1] for m in s["moves"])
        row = {
            "gap_px": g,
            "detections": s["detections"],
            "vanished": s["vanished"],
            "appeared": s["appeared"],
            "median_1_minus_iou": ious[len(ious) // 2] if ious else float("nan"),
            "max_1_minus_iou": ious[-1] if ious else float("nan"),
            "median_score_change": dscores[len(dscores) // 2] if dscores else float("nan"),
            "max_score_change": dscores[-1] if dscores else float("nan"),
        }
        table.append(row)
        print(json.dumps(row))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"weights": args.weights, "chip_px": args.chip, "score": args.score, "rows": table}, f, indent=1)


if __name__ == "__main__":
    main()
