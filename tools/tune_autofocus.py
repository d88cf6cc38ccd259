#!/usr/bin/env python
"""Tune AutoFocus's FocusChip setting on a validation split: fewest pixels within a tolerance of the pyramid's AP.

    python tools/tune_autofocus.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \\
        --dataset autofocus_synth_val --tolerance 0.5 --output output/tune \\
        --opts MODEL.WEIGHTS output/demo/train/model_final.pth

1. Runs the detector once per image on every scale of the chain (the pyramid's views, with
   FocusPixel maps) and stores each view's detections.
2. Re-stacks every (threshold, dilation, minimum chip) of the grid offline (seconds each) and
   compares it with the pyramid by a paired bootstrap over images (95% interval of the AP
   difference).
3. Picks the setting with the fewest pixels whose interval's lower bound is at least -tolerance
   (else the point difference; else the most accurate one: the report says which).
4. Confirms the pick with one real run of the pipeline and writes <output>/tuned.yaml (a config
   fragment with the figures), tune.json and tune.md.
"""
import argparse
import json
import os
import sys
import time

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import autofocus_d2  # noqa: F401  (registers the model, heads and datasets)
from autofocus_d2.benchmark.runner import load_inputs
from autofocus_d2.analysis import objects_in_holes, size_holes
from autofocus_d2.evaluation.coco import load_coco_ground_truth
from autofocus_d2.data import add_register_coco_argument, tool_config_and_dataset
from autofocus_d2.inference.chip_policies import build_chip_policy
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from autofocus_d2.tuning import ChipSetting, config_fragment, confirm_setting, setting_grid, tune_chip_settings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", default=None, help="registered dataset with annotations (default: DATASETS.TEST[0])")
    p.add_argument("--max-images", type=int, default=None, help="first N images (default all)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="AP points the pick may lose against the pyramid (by the 95%% interval)")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--dilations", nargs="+", type=int, default=[3, 5])
    p.add_argument("--min-chip-sizes", nargs="+", type=float, default=[64.0, 96.0, 128.0])
    p.add_argument("--bootstrap-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-confirm", action="store_true", help="skip the real run of the pick")
    p.add_argument("--with-oracle", action="store_true",
                   help="also re-stack the oracle policy (FocusPixels from the ground truth) as a reference row")
    p.add_argument("--output", default="output/tune")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs (last on the command line)")
    return add_register_coco_argument(p).parse_args(argv)


def oracle_cfg(cfg):
    c = cfg.clone()
    c.defrost()
    c.MODEL.AUTOFOCUS.CHIP_POLICY = "oracle"
    return c


def hole_report(pipeline, coco_gt, inputs) -> dict:
    """The object sizes no scale keeps for the inputs' image sizes (valid ranges and the
    small-and-covered rule, :func:`size_holes`), and how many of their ground-truth objects fall there."""
    import torch

    sizes = [(int(x["height"]), int(x["width"])) for x in inputs]
    holes = size_holes(pipeline.scale_chain, pipeline.valid_ranges, sorted(set(sizes)),
                       small_drop_size=pipeline.small_drop_size)
    boxes = []
    for x in inputs:
        anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[x["image_id"]])) if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes.append(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
    count = objects_in_holes(boxes, sizes, holes)
    distinct = sorted({tuple(iv) for _, ivs in holes for iv in ivs})
    text = "none" if not distinct else ", ".join(f"({lo:g}, {hi:g})" for lo, hi in distinct)
    return {"intervals": [list(iv) for iv in distinct], "objects_in_holes": count,
            "text": f"{text}; {count} of the split's objects lie in one"}


def say(msg: str) -> None:
    print(f"[tune {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _table(rows, pick) -> str:
    lines = ["| threshold | dilation | min chip | AP | AP diff vs pyramid | 95% interval | pixel ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["pixel_ratio"]):
        mark = " **(pick)**" if all(r[k] == pick[k] for k in ("threshold", "dilation", "min_chip_size")) else ""
        lo, hi = r["AP_diff_ci95"]
        lines.append(f"| {r['threshold']:g} | {r['dilation']} | {r['min_chip_size']:g} | {r['AP']:.2f}{mark} | "
                     f"{r['AP_diff_vs_pyramid']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {r['pixel_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="autofocus_d2")
    try:
        cfg, dataset = tool_config_and_dataset(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.tolerance < 0:
        print(f"--tolerance must be >= 0 AP points, got {args.tolerance}", file=sys.stderr)
        return 2
    if len(cfg.MODEL.AUTOFOCUS.SCALES) < 2:
        print("MODEL.AUTOFOCUS.SCALES has one scale: there are no FocusChips to tune", file=sys.stderr)
        return 2
    try:
        settings = setting_grid(args.thresholds, args.dilations, args.min_chip_sizes)
    except ValueError as e:
        print(f"bad grid: {e}", file=sys.stderr)
        return 2
    try:
        coco_gt = load_coco_ground_truth(dataset)
    except KeyError as e:
        print(f"{e.args[0]}: AP cannot be computed", file=sys.stderr)
        return 2
    if not coco_gt.dataset.get("annotations"):
        print(f"dataset {dataset!r} has no annotations: nothing to tune against", file=sys.stderr)
        return 2

    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        say("MODEL.WEIGHTS is empty: tuning a randomly initialised model")
    inputs = load_inputs(cfg, dataset, args.max_images, with_ground_truth=args.with_oracle)
    if len(inputs) < 10:
        say(f"only {len(inputs)} images: the intervals will be wide and the pick fragile")
    pipeline = build_autofocus_pipeline(cfg)
    holes = hole_report(pipeline, coco_gt, inputs)
    say(f"object sizes no scale keeps (sqrt(area), original px): {holes['text']}")
    say(f"{len(inputs)} images of {dataset}, {len(settings)} settings, tolerance {args.tolerance} AP")
    report = tune_chip_settings(
        model, pipeline, inputs, dataset, coco_gt, settings, tolerance=args.tolerance,
        max_chips=cfg.MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE, num_samples=args.bootstrap_samples,
        seed=args.seed, progress=say,
        references={"oracle": build_chip_policy(oracle_cfg(cfg))} if args.with_oracle else None)
    pick = report["pick"]
    setting = ChipSetting(pick["threshold"], pick["dilation"], pick["min_chip_size"])
    say(f"pick ({pick['criterion']}): threshold {setting.threshold:g}, dilation {setting.dilation}, min chip "
        f"{setting.min_chip_size:g}: predicted AP {pick['AP']:.2f} vs pyramid {report['pyramid_AP']:.2f} "
        f"at {pick['pixel_ratio']:.3f} of its pixels")

    confirmed = None
    if not args.no_confirm:
        def pipeline_for(s: ChipSetting):
            c = cfg.clone()
            c.defrost()
            c.MODEL.AUTOFOCUS.CHIP_POLICY = "autofocus"
            c.MODEL.AUTOFOCUS.FOCUS_THRESHOLD = [s.threshold]
            c.MODEL.AUTOFOCUS.DILATION = [s.dilation]
            c.MODEL.AUTOFOCUS.MIN_CHIP_SIZE = [s.min_chip_size]
            return build_autofocus_pipeline(c)

        say("confirming the pick with a real run of the pipeline")
        confirmed = confirm_setting(model, pipeline_for, setting, inputs, dataset, coco_gt,
                                    report["pyramid_results"], num_samples=args.bootstrap_samples, seed=args.seed)
        confirmed["predicted_minus_real"] = pick["AP"] - confirmed["AP"]
        say(f"real run: AP {confirmed['AP']:.2f} ({confirmed['AP_diff_vs_pyramid']:+.2f}, 95% "
            f"[{confirmed['AP_diff_ci95'][0]:+.2f}, {confirmed['AP_diff_ci95'][1]:+.2f}]) at "
            f"{confirmed['pixel_ratio']:.3f} of the pixels; predicted {pick['AP']:.2f}")

    os.makedirs(args.output, exist_ok=True)
    out = {k: v for k, v in report.items() if k != "pyramid_results"}
    out.update(confirmed=confirmed, size_holes=holes, dataset=dataset, config_file=args.config_file, weights=cfg.MODEL.WEIGHTS,
               tolerance=args.tolerance)
    with open(os.path.join(args.output, "tune.json"), "w") as f:
        json.dump(out, f, indent=1)
    comments = [
        f"tools/tune_autofocus.py on {dataset} ({len(inputs)} images), {time.strftime('%Y-%m-%d')}",
        f"config {args.config_file}, weights {cfg.MODEL.WEIGHTS or '(random init)'}",
        f"pick by {pick['criterion']} at tolerance {args.tolerance} AP: predicted AP {pick['AP']:.2f}, "
        f"pyramid {report['pyramid_AP']:.2f}, difference {pick['AP_diff_vs_pyramid']:+.2f} "
        f"(95% [{pick['AP_diff_ci95'][0]:+.2f}, {pick['AP_diff_ci95'][1]:+.2f}]), "
        f"{pick['pixel_ratio']:.3f} of the pyramid's pixels",
    ]
    if confirmed:
        comments.append(f"real run: AP {confirmed['AP']:.2f} ({confirmed['AP_diff_vs_pyramid']:+.2f}, 95% "
                        f"[{confirmed['AP_diff_ci95'][0]:+.2f}, {confirmed['AP_diff_ci95'][1]:+.2f}]) at "
                        f"{confirmed['pixel_ratio']:.3f} of the pixels")
    with open(os.path.join(args.output, "tuned.yaml"), "w") as f:
        f.write(config_fragment(setting, comments))
    md = [f"# AutoFocus chip tuning on {dataset} ({len(inputs)} images)", "", *[f"- {c}" for c in comments], "",
          f"Views stored in {report['collect_s']:.0f} s; {report['restack_s_per_setting']:.1f} s per re-stacked "
          "setting (bootstrap included).", f"Object sizes no scale keeps: {holes['text']}.", "",
          _table(report["rows"], pick)]
    for r in report["reference_rows"]:
        md.append(f"\n{r['method']} (reference, not picked): AP {r['AP']:.2f} ({r['AP_diff_vs_pyramid']:+.2f}, 95% "
                  f"[{r['AP_diff_ci95'][0]:+.2f}, {r['AP_diff_ci95'][1]:+.2f}]) at {r['pixel_ratio']:.3f} of the pixels")
    with open(os.path.join(args.output, "tune.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    say(f"wrote {args.output}/tuned.yaml, tune.json, tune.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
