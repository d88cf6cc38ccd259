#!/usr/bin/env python
"""Oracle FocusChip analysis of a COCO json, without a model: the recall upper bound of AutoFocus.

    python tools/analyze_chips.py datasets/autofocus_synth/val/instances_val.json \
        --dilations 1 3 5 --min-chip-sizes 64 128 256 --output output/oracle.json \
        --opts MODEL.AUTOFOCUS.SCALES "[[512, 768], [-1, -1], [2000, -1]]" \
        MODEL.AUTOFOCUS.VALID_RANGES "[[-1, -1], [-1, -1], [-1, -1]]"

The chips are the pipeline's oracle chip policy's (FocusPixels from the ground truth by the
config's label rule) over the config's scale chain; each object is a perfect detection in every
view holding it and focus stacking's own rules decide what survives. For each (dilation, min chip
size) it prints the share of COCO small / medium / large objects that are recoverable (see
autofocus_d2.analysis.RECOVERABLE_DEFINITION), the small objects only scale 0 keeps, the pixels
processed relative to the full pyramid and the chips per image per scale; then the object sizes
that no scale keeps on the dataset's image sizes (size holes) and how many objects fall there.
--output writes everything as JSON. docs/analysis.md explains the figures.
"""
import argparse
import json
import os
import sys
import textwrap
import time

import autofocus_d2  # noqa: I001  (first: it imports Detectron2 without its known warnings)
from detectron2.config import get_cfg

from autofocus_d2.analysis import (
    RECOVERABLE_DEFINITION,
    format_holes,
    format_report_table,
    run_oracle_analysis,
)
from autofocus_d2.utils.quiet_logs import quiet_logs

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "Synthetic", "autofocus_compact_fpn.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("annotations", help="COCO-format annotation json")
    p.add_argument("--config-file", default=DEFAULT_CONFIG,
                   help="scale chain, focus label rule, tiling, stacking rules (default: %(default)s)")
    p.add_argument("--dilations", nargs="+", type=int, default=[1, 3, 5],
                   help="dilation kernel sides to sweep, in focus cells")
    p.add_argument("--min-chip-sizes", nargs="+", type=float, default=[64.0, 128.0, 256.0],
                   help="minimum chip sides to sweep, in pixels of the scale where the map is predicted")
    p.add_argument("--stride", type=int, default=16, help="focus map stride, in pixels")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the json")
    p.add_argument("--output", default=None, help="write the report as JSON to this path")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs (last option)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    quiet_logs()
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = get_cfg()
        autofocus_d2.add_autofocus_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        cfg.freeze()
        report = run_oracle_analysis(
            args.annotations, cfg, dilations=args.dilations, min_chip_sizes=args.min_chip_sizes,
            stride=args.stride, max_images=args.max_images,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"analyze_chips: error: {e}", file=sys.stderr)
        return 2
    report["config_file"] = os.path.abspath(args.config_file)
    report["opts"] = list(args.opts)
    report["seconds"] = time.perf_counter() - start
    objects = report["objects"]
    print(f"Oracle FocusChips on {report['images']} images of {args.annotations}: "
          f"{objects['small']} small, {objects['medium']} medium, {objects['large']} large objects")
    print(format_report_table(report))
    print(textwrap.fill("*: the config's setting. % = share of the objects of that size that are "
                        "recoverable; small only s0: small objects that only scale 0 keeps. "
                        + RECOVERABLE_DEFINITION, width=100))
    print(format_holes(report))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"Report written to {args.output}")
    print(f"Done in {report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
