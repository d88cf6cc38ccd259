#!/usr/bin/env python
"""Release a trained model into the autofocus-d2 model zoo, Detectron2's model zoo style.

    python tools/release_checkpoint.py --train-dir output/demo \\
        --config-name Synthetic/autofocus_compact_fpn.yaml --release-dir output/release \\
        --manifest output/release/manifest.json --model-zoo-md MODEL_ZOO.md \\
        --verify-on autofocus_synth_val

Keeps only the model weights of ``<train-dir>/model_final.pth``, writes
``<release-dir>/<config>/<h>/model_final_<h>.pkl`` (``<h>``: first 6 hex digits of its sha256) with
the resolved ``config.yaml`` and ``metrics.json`` beside it, adds the manifest entry and prints (and
with --model-zoo-md writes) the MODEL_ZOO.md row. The logic is in autofocus_d2.model_zoo.release.
"""
import argparse
import json
import sys

from autofocus_d2.model_zoo import ModelZooError
from autofocus_d2.model_zoo.release import release_checkpoint, verify_release


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-dir", required=True,
                   help="OUTPUT_DIR of the training run (model_final.pth, config.yaml, metrics.json, log.txt)")
    p.add_argument("--config-name", required=True,
                   help="zoo config the model was trained with, relative to configs/")
    p.add_argument("--release-dir", required=True, help="where the release folder is written")
    p.add_argument("--manifest", help="manifest.json to add the entry to (created if missing)")
    p.add_argument("--metrics", help="evaluation results JSON (default: <train-dir>/metrics.json)")
    p.add_argument("--checkpoint", help="training checkpoint (default: <train-dir>/model_final.pth)")
    p.add_argument("--config-yaml", help="resolved config (default: <train-dir>/config.yaml)")
    p.add_argument("--url-prefix", help="base URL the release dir is published at (default: a path "
                   "relative to the manifest)")
    p.add_argument("--schedule", help="schedule column (default from SOLVER: 1x, 3x or iterations)")
    p.add_argument("--images-per-s", type=float,
                   help="inference speed per device (default: from the metrics or the training log.txt)")
    p.add_argument("--device", help="device of the speed, e.g. 'V100' (default: MODEL.DEVICE)")
    p.add_argument("--model-zoo-md", help="MODEL_ZOO.md whose released-models table gets the row")
    p.add_argument("--date", help="release date, ISO (default: today)")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16 (half the file; check the AP with --verify-on)")
    p.add_argument("--verify-on", metavar="DATASET",
                   help="after releasing, load it with model_zoo.get(trained=True) and check that "
                        "it reproduces the released AP on DATASET (needs --manifest)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify_on and not args.manifest:
        print("error: --verify-on needs --manifest (the model is loaded through it)", file=sys.stderr)
        return 2
    try:
        rel = release_checkpoint(
            args.train_dir, args.config_name, args.release_dir, manifest=args.manifest,
            metrics_file=args.metrics, checkpoint=args.checkpoint, config_yaml=args.config_yaml,
            url_prefix=args.url_prefix, schedule=args.schedule, images_per_s=args.images_per_s,
            device=args.device, model_zoo_md=args.model_zoo_md, date=args.date, half=args.half,
        )
        print(f"checkpoint: {rel.checkpoint}")
        print(f"sha256:     {rel.sha256}")
        if rel.manifest:
            print(f"manifest:   {rel.manifest}")
        print("manifest entry:")
        print(json.dumps({rel.name: rel.entry}, indent=2, sort_keys=True))
        print("MODEL_ZOO.md row:")
        print(rel.row)
        if args.verify_on:
            results = verify_release(rel.name, manifest=rel.manifest, dataset=args.verify_on,
                                     expected=rel.entry["metrics"])
            print(f"verified: model_zoo.get({rel.name!r}, trained=True) gives AP "
                  f"{results['bbox']['AP']:.3f}, AP_small {results['bbox']['APs']:.3f}, pixel "
                  f"ratio {results['autofocus_efficiency']['pixel_ratio']:.3f} on {args.verify_on}")
    except ModelZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
