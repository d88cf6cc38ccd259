#!/usr/bin/env python
"""Benchmark single / pyramid / grid / AutoFocus / SAHI / Detectron2 TTA side by side on one checkpoint.

    python tools/benchmark.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \
        --dataset autofocus_synth_val --output output/bench --opts MODEL.WEIGHTS output/model_final.pth

Writes report.json, report.md, PNG plots and each method's detections (detections/<method>.json,
COCO results) into --output and prints the tables (docs/benchmark.md describes the report). Methods: any chip
policy (single, pyramid, grid, autofocus, oracle, ...), sahi (slices matched to the finest chips),
sahi@S (SAHI as its users run it, S x S slices; sahi@512 is SAHI's default) and tta (Detectron2's
GeneralizedRCNNWithTTA over the scale chain).

    python tools/benchmark.py --weights output/model_final.pth --dataset autofocus_synth_val

Without --config-file, the config recorded in the weights by train_net.py (and its class names).

    python tools/benchmark.py --config-file <config> --timing-only --max-images 3

--timing-only: random init (MODEL.WEIGHTS is not loaded), no AP; pixels, time and the time split of
single / pyramid / grid / autofocus / oracle on a few images (default 3).
"""
import argparse
import os
import sys

import autofocus_d2  # noqa: F401,I001  (first: it imports Detectron2 without its known warnings)
from detectron2.utils.logger import setup_logger

from autofocus_d2.benchmark import (
    DEFAULT_METHODS,
    TIMING_METHODS,
    available_methods,
    run_benchmark,
    summary_text,
    write_report,
)
from autofocus_d2.config_checks import check_probabilities
from autofocus_d2.data import add_register_coco_argument, tool_config_and_dataset
from autofocus_d2.utils.quiet_logs import quiet_logs

DEFAULT_SWEEP = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
TIMING_MAX_IMAGES = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default=None,
                   help="model config (default: the one recorded in the weights by train_net.py)")
    p.add_argument("--weights", default=None,
                   help="checkpoint to benchmark (same as --opts MODEL.WEIGHTS FILE)")
    p.add_argument("--dataset", default=None, help="registered dataset (default: DATASETS.TEST[0])")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(DEFAULT_METHODS)} (with --timing-only: the registered ones "
                        f"of {' '.join(TIMING_METHODS)}); accepted: {' '.join(available_methods())}")
    p.add_argument("--sweep", nargs="*", type=float, default=None,
                   help="FOCUS_THRESHOLD values for the AutoFocus trade-off curve (none: skip; default "
                        f"{DEFAULT_SWEEP}, none with --timing-only)")
    p.add_argument("--max-images", type=int, default=None,
                   help=f"first N images (default all; {TIMING_MAX_IMAGES} with --timing-only)")
    p.add_argument("--warmup", type=int, default=1, help="images run once before timing each method")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes over the images, methods interleaved per image (median and spread; "
                        "sweep settings are timed in the first pass only)")
    p.add_argument("--timing-only", action="store_true",
                   help="random init, no AP: pixels, time and the time split only")
    p.add_argument("--output", default="output/benchmark")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs (last on the command line)")
    args = add_register_coco_argument(p).parse_args(argv)
    if args.sweep:
        try:
            check_probabilities(args.sweep, "--sweep")  # FOCUS_THRESHOLD values: the rule of the key
        except ValueError as e:
            p.error(str(e))
    return args


def main(argv=None) -> int:
    quiet_logs()
    args = parse_args(argv)
    setup_logger(name="autofocus_d2")
    try:
        cfg, dataset = tool_config_and_dataset(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.methods is not None:
        methods = args.methods
    elif args.timing_only:
        known = set(available_methods())
        methods = [m for m in TIMING_METHODS if m in known]
    else:
        methods = list(DEFAULT_METHODS)
    sweep = args.sweep if args.sweep is not None else ([] if args.timing_only else DEFAULT_SWEEP)
    max_images = args.max_images
    if max_images is None and args.timing_only:
        max_images = TIMING_MAX_IMAGES
    try:
        report = run_benchmark(cfg, dataset_name=dataset, methods=methods, sweep=sweep,
                               max_images=max_images, warmup=args.warmup, repeats=args.repeats,
                               progress=not args.no_progress, timing_only=args.timing_only)
    except ValueError as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    report["config"] = args.config_file or f"the config recorded in {cfg.MODEL.WEIGHTS}"
    paths = write_report(report, args.output)
    print(summary_text(report))
    print(f"report: {os.path.abspath(paths['md'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
