#!/usr/bin/env python
"""Run an AutoFocus model over a collection of images: one JSON of detections per image,
resumable, on one or several processes, GPUs or machines (Detectron2's launch).

    python tools/predict.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \\
        --input datasets/autofocus_synth/val/images/ --output output/predictions \\
        --opts MODEL.WEIGHTS output/synth_compact_fpn/model_final.pth

--input takes folders (recursively), glob patterns, text files of paths (.txt/.lst, one per line),
image files and registered dataset names. A rerun with the same --output skips the images whose
output is complete and made by the same weights and config; --overwrite redoes all. Unreadable
images are listed in <output>/failures.json and the exit status is 1 if any failed.
See docs/predict.md for several GPUs and several machines, and the output layout.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import autofocus_d2  # noqa: E402,F401  (registers the model and the built-in datasets)
from autofocus_d2.data import add_register_coco_argument  # noqa: E402
from autofocus_d2.prediction import PredictOptions, predict  # noqa: E402
from autofocus_d2.prediction.runner import COCO_RESULTS_FILE  # noqa: E402
from autofocus_d2.utils.quiet_logs import quiet_logs  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", metavar="FILE",
                   help="path to the config file (default: the one recorded in MODEL.WEIGHTS by train_net.py)")
    p.add_argument("--input", nargs="+", required=True,
                   help="folders, glob patterns ('imgs/**/*.jpg'), list files, images or dataset names")
    p.add_argument("--output", required=True, help="output folder (created; shared by all processes)")
    p.add_argument("--coco-results", nargs="?", const="", default=None, metavar="FILE",
                   help=f"also write every detection as one COCO results JSON (default <output>/{COCO_RESULTS_FILE})")
    p.add_argument("--overwrite", action="store_true", help="predict every input again, done or not")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    p.add_argument("--num-workers", type=int, default=2, help="image-reading processes per prediction process")
    p.add_argument("--confidence-threshold", type=float, default=None,
                   help="minimum score of the detections kept (default: the config's SCORE_THRESH_TEST)")
    p.add_argument("--log-period", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs, or CPU processes)")
    p.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    p.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    p.add_argument("--dist-url", default="auto",
                   help="initialization URL of the process group, tcp://HOST:PORT of machine 0 "
                        "(auto: a free local port, one machine only)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS x.pth MODEL.DEVICE cuda")
    return add_register_coco_argument(p)


def main(argv=None) -> int:
    quiet_logs()
    args = get_parser().parse_args(argv)
    coco = args.coco_results
    if coco == "":
        coco = os.path.join(args.output, COCO_RESULTS_FILE)
    options = PredictOptions(
        config_file=args.config_file, inputs=args.input, output=args.output, opts=args.opts,
        register_coco=args.register_coco, batch_size=args.batch_size, num_workers=args.num_workers,
        overwrite=args.overwrite, coco_results=coco, log_period=args.log_period,
        confidence_threshold=args.confidence_threshold,
    )
    try:
        summary = predict(options, num_gpus=args.num_gpus, num_machines=args.num_machines,
                          machine_rank=args.machine_rank, dist_url=args.dist_url)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary.get("failed"):
        print(f"{summary['failed']} input(s) failed: see {os.path.join(args.output, 'failures.json')}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
