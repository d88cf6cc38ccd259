#!/usr/bin/env python
"""Mine SNIPER negative chips with a (briefly trained) model's RPN and write them as json.

    python tools/mine_negative_chips.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml \
        --output output/negative_chips.json MODEL.WEIGHTS output/rpn_short/model_final.pth

The images are those of DATASETS.TRAIN, the scales and valid ranges those of SNIPER training
(INPUT.SNIPER.SCALES / VALID_RANGES); train with INPUT.SNIPER.NEGATIVE_CHIPS_FILE set to --output.
"""
import argparse
import json
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import get_detection_dataset_dicts
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import autofocus_d2  # noqa: F401  (registers the model, heads and datasets)
from autofocus_d2.config import load_autofocus_config, sniper_training_scales, validate_sniper_config
from autofocus_d2.data import add_register_coco_argument, mine_negative_chips, register_coco_datasets


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", required=True, metavar="FILE", help="negative chips json to write")
    p.add_argument("--max-images", type=int, default=None, help="only the first N training images")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return add_register_coco_argument(p).parse_args(argv)


def setup(args):
    """The config (get_cfg -> add_autofocus_config -> merge file and opts -> freeze), checked."""
    cfg = load_autofocus_config(args.config_file, args.opts)
    validate_sniper_config(cfg)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="autofocus_d2")
    register_coco_datasets(args.register_coco)
    cfg = setup(args)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    dataset_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    content = mine_negative_chips(model, dataset_dicts, cfg, max_images=args.max_images)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(content, f)
    per_scale = [0] * len(content["scales"])
    for chips in content["chips"].values():
        for chip in chips:
            per_scale[int(chip[4])] += 1
    print(f"{len(content['chips'])} images, negative chips per scale:")
    for (short, cap), count in zip(sniper_training_scales(cfg), per_scale):
        print(f"  scale ({short:g}, {cap:g}): {count}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
