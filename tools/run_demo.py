#!/usr/bin/env python
"""`make demo`: the main job on the built-in dataset, in one run on one set of weights.

1. train the small CPU model (or reuse <output>/train/model_final.pth),
2. benchmark single / pyramid / grid / AutoFocus / SAHI and the FOCUS_THRESHOLD sweep on val,
3. the oracle chip analysis on the val annotations,
4. pictures: input, FocusPixel heat map per scale, chips per scale, final detections,
5. release the checkpoint model-zoo style into <output>/release,
then print where the report is and its headline table.

``--large`` instead: fine-tune the box model (trained or reused as in 1.) for the large-frame chain
(``configs/Synthetic/autofocus_compact_fpn_large.yaml``) and benchmark it on the large frames of
``autofocus_synth_large_val``, writing <output>/large/report.json (the main report's format).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import autofocus_d2  # noqa: E402
from autofocus_d2.analysis import format_report_table, run_oracle_analysis  # noqa: E402
from autofocus_d2.benchmark import run_benchmark, summary_text, write_report  # noqa: E402
from autofocus_d2.benchmark.report import headline_table  # noqa: E402
from autofocus_d2.benchmark.suite import DEFAULT_METHODS  # noqa: E402
from autofocus_d2.data import ensure_split  # noqa: E402
from autofocus_d2.model_zoo.release import release_checkpoint  # noqa: E402
from autofocus_d2.model_zoo.release_metrics import flatten_mapping  # noqa: E402
from autofocus_d2.utils.visualization import draw_chips, draw_detections, focus_heatmap  # noqa: E402

CONFIG = "Synthetic/autofocus_compact_fpn.yaml"
MASK_CONFIG = "Synthetic/autofocus_compact_mask_fpn.yaml"
# The mask model is fine-tuned from the box model (300 iterations), as in docs/model_family.md.
MASK_TRAIN_OPTS = ["SOLVER.MAX_ITER", "300", "SOLVER.STEPS", "(240,)", "SOLVER.CHECKPOINT_PERIOD", "300",
                   "SOLVER.WARMUP_ITERS", "20"]
# The demo's rows: every default method but the two slowest SAHI settings (sahi and sahi@256 took
# about 3.4 s per image each, as long as all pipeline rows together, and score below sahi@512/768).
DEMO_METHODS = tuple(m for m in DEFAULT_METHODS if m not in ("sahi", "sahi@256"))
LARGE_CONFIG = "Synthetic/autofocus_compact_fpn_large.yaml"
# Rows of --large: SAHI's default slice (512) and the demo's other kept setting (768).
LARGE_METHODS = ("single", "pyramid", "autofocus", "oracle", "sahi@512", "sahi@768", "tta")


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_cfg(weights: str, opts, config: str = CONFIG):
    cfg = get_cfg()
    autofocus_d2.add_autofocus_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    cfg.merge_from_list(opts)
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    return cfg


def _comparable(value):
    """Tuples (a .yaml) and lists (a dumped config) compare equal."""
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def stale_keys(train_dir: str, opts, config: str = CONFIG) -> list:
    """MODEL.* / INPUT.* / SOLVER.* keys in which the config a model in ``train_dir`` was trained
    with (its config.yaml) differs from the demo's config now (all of them if it is unreadable).
    MODEL.AUTOFOCUS.* (inference only: the scale chain, chips, merge) does not change the weights."""
    saved = os.path.join(train_dir, "config.yaml")
    trained = get_cfg()
    autofocus_d2.add_autofocus_config(trained)
    try:
        trained.merge_from_file(saved)
    except Exception as e:  # missing file, or keys this version no longer has
        return [f"{saved} ({type(e).__name__}: {e})"]
    a = flatten_mapping(trained, sep=".")
    b = flatten_mapping(load_cfg("", opts, config), sep=".")
    return [k for k in sorted(set(a) | set(b))
            if k.startswith(("MODEL.", "INPUT.", "SOLVER.")) and not k.startswith("MODEL.AUTOFOCUS.")
            and k not in ("MODEL.WEIGHTS", "MODEL.DEVICE")
            and _comparable(a.get(k)) != _comparable(b.get(k))]


def train(train_dir: str, opts, config: str = CONFIG, train_opts=()) -> str:
    """Train ``config`` (+ ``opts``, + ``train_opts`` that only the training takes) into
    ``train_dir``, or reuse the model there if it was trained with the same config."""
    final = os.path.join(train_dir, "model_final.pth")
    if os.path.isfile(final):
        stale = stale_keys(train_dir, [*train_opts, *opts], config)
        if not stale:
            say(f"reusing the trained model {final} (delete it to retrain)")
            return final
        moved = f"{train_dir}_stale_{time.strftime('%Y%m%d_%H%M%S')}"
        os.rename(train_dir, moved)
        say(f"the model in {train_dir} was trained with another config ({', '.join(stale[:5])}"
            f"{' ...' if len(stale) > 5 else ''}); moved it to {moved} and training anew")
    say(f"training {config} into {train_dir} (progress every 20 iterations)")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
           os.path.join(REPO, "configs", config), "OUTPUT_DIR", train_dir, "DATASETS.TEST", "()",
           *train_opts, *opts]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stream the progress lines as they come
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=env)
    for line in proc.stdout:
        if "iter:" in line or "Error" in line or "Traceback" in line:
            print("  " + line.rstrip()[:160], flush=True)
    if proc.wait() != 0 or not os.path.isfile(final):
        raise SystemExit(f"training failed (exit {proc.returncode}); see {train_dir}/log.txt")
    return final


def pictures(cfg, out_dir: str, num_images: int) -> list:
    """Input, FocusPixel heat map per scale, chips per scale and detections of a few val images."""
    from autofocus_d2.benchmark.runner import load_inputs
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    dataset = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    written = []
    for x in load_inputs(cfg, dataset, num_images):
        with torch.no_grad():
            out = model.autofocus_inference([x], with_details=True)[0]
        rgb = x["image"].permute(1, 2, 0).numpy()
        rgb = np.ascontiguousarray(rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb).astype(np.uint8)
        details = out["autofocus_details"]
        panels = {"input": rgb,
                  "chips": draw_chips(rgb, out["autofocus"]["chip_boxes_per_scale"]),
                  "detections": draw_detections(rgb, out["instances"], metadata, threshold=0.5)}
        for k, (views, maps) in enumerate(zip(details["views_per_scale"], details["focus_maps_per_scale"])):
            if any(m is not None for m in maps):
                panels[f"focus_scale{k}"] = focus_heatmap(rgb, views, maps, model.focus_stride)
        stem = f"image{x['image_id']}"
        for name, array in panels.items():
            path = os.path.join(out_dir, f"{stem}_{name}.jpg")
            Image.fromarray(array).save(path, quality=88)
            written.append(path)
    return written


def run_large(out: str, box_weights: str, args) -> int:
    """``--large``: fine-tune LARGE_CONFIG from ``box_weights`` into <out>/large/train (or reuse it),
    benchmark LARGE_METHODS on every frame of its DATASETS.TEST and write <out>/large/report.*."""
    start = time.time()
    large_dir = os.path.join(out, "large")
    os.makedirs(large_dir, exist_ok=True)
    say("large frames: fine-tuning the large-frame chain from the box model")
    weights = train(os.path.join(large_dir, "train"), args.opts, LARGE_CONFIG,
                    ["MODEL.WEIGHTS", box_weights])
    cfg = load_cfg(weights, args.opts, LARGE_CONFIG)
    dataset = cfg.DATASETS.TEST[0]
    ensure_split(dataset)
    methods = args.bench_methods or LARGE_METHODS
    say(f"benchmark on the frames of {dataset} ({len(methods)} methods, {args.repeats} timed passes)")
    report = run_benchmark(cfg, dataset_name=dataset, max_images=args.large_images, methods=methods,
                           repeats=args.repeats)
    report["config"] = f"configs/{LARGE_CONFIG}"
    report["wall_time_s"] = time.time() - start
    paths = write_report(report, large_dir)
    print()
    print(summary_text(report))
    say(f"large frames done in {report['wall_time_s'] / 60:.1f} min; report: {paths['json']}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument("--bench-images", type=int, default=40, help="val images for the benchmark (40: all)")
    p.add_argument("--bench-methods", nargs="+", default=None,
                   help=f"benchmark rows (default: {' '.join(DEMO_METHODS)}; with --large: "
                   f"{' '.join(LARGE_METHODS)})")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the benchmark (median and spread)")
    p.add_argument("--sweep", nargs="*", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--pictures", type=int, default=2)
    p.add_argument("--with-masks", action="store_true",
                   help=f"also fine-tune the Mask R-CNN config ({MASK_CONFIG}, about 7 more minutes) "
                   "and report box and mask AP of single / pyramid / autofocus")
    p.add_argument("--large", action="store_true",
                   help=f"instead of the above: fine-tune {LARGE_CONFIG} from the box model (about 7 "
                   "minutes) and benchmark it on the large frames; report in <output>/large/")
    p.add_argument("--large-images", type=int, default=None, help="frames for --large (default: all 12)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs (training too)")
    args = p.parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    setup_logger(name="autofocus_d2")
    torch.manual_seed(0)

    weights = train(os.path.join(out, "train"), args.opts)
    if args.large:
        return run_large(out, weights, args)
    args.bench_methods = args.bench_methods or list(DEMO_METHODS)
    cfg = load_cfg(weights, args.opts)
    dataset = cfg.DATASETS.TEST[0]
    val_json = ensure_split(dataset)

    say(f"benchmark on {args.bench_images} images of {dataset} ({len(args.bench_methods)} methods + "
        f"{len(args.sweep)}-point sweep, {args.repeats} timed passes)")
    report = run_benchmark(cfg, dataset_name=dataset, max_images=args.bench_images, sweep=args.sweep,
                           methods=args.bench_methods, repeats=args.repeats)
    report["config"] = f"configs/{CONFIG}"

    say("oracle chip analysis (ground-truth FocusPixels) on the val annotations")
    oracle = run_oracle_analysis(val_json, cfg, dilations=(1, 3, 5), min_chip_sizes=(64, 96, 128, 256),
                                 progress=False)
    with open(os.path.join(out, "oracle.json"), "w") as f:
        json.dump(oracle, f, indent=2)
    report["oracle_table"] = format_report_table(oracle)

    say("pictures")
    report["pictures"] = [os.path.basename(q) for q in pictures(cfg, out, args.pictures)]

    say("releasing the checkpoint model-zoo style")
    af = next(r for r in report["methods"] if r["method"] == "autofocus")
    metrics_file = os.path.join(out, "release_metrics.json")
    with open(metrics_file, "w") as f:
        json.dump({"bbox": {"AP": af["AP"], "APs": af["APs"]},
                   "autofocus_efficiency": {"pixel_ratio": af["pixel_ratio"]},
                   "images_per_s": 1.0 / af["median_time_s"], "device": report["device"]}, f)
    # The released config is the one benchmarked: the training run's, with the demo config's
    # inference-only MODEL.AUTOFOCUS keys (a reused model may predate a change of those).
    release_cfg = os.path.join(out, "release_config.yaml")
    with open(release_cfg, "w") as f:
        f.write(cfg.dump())
    release = release_checkpoint(os.path.join(out, "train"), CONFIG, os.path.join(out, "release"),
                                 manifest=os.path.join(out, "release", "manifest.json"),
                                 metrics_file=metrics_file, checkpoint=weights, config_yaml=release_cfg)
    report["release"] = {"file": os.path.relpath(release.checkpoint, out), "sha256": release.sha256,
                         "model_zoo_row": release.row}
    if args.with_masks:
        say("masks: fine-tuning the Mask R-CNN config from the box model, then single / pyramid / autofocus")
        mask_weights = train(os.path.join(out, "train_mask"), args.opts, MASK_CONFIG,
                             ["MODEL.WEIGHTS", weights, *MASK_TRAIN_OPTS])
        mask_cfg = load_cfg(mask_weights, args.opts, MASK_CONFIG)
        masks = run_benchmark(mask_cfg, dataset_name=dataset, max_images=args.bench_images,
                              methods=("single", "pyramid", "autofocus"), sweep=(), repeats=args.repeats)
        report["masks"] = {"config": f"configs/{MASK_CONFIG}", "methods": masks["methods"]}
    report["wall_time_s"] = time.time() - start

    paths = write_report(report, out)
    with open(paths["md"], "a") as f:
        f.write("\n## Oracle chips (ground-truth FocusPixels, val)\n\n```\n" + report["oracle_table"] + "\n```\n")
        f.write("\n## Pictures\n\n" + "\n".join(f"![{q}]({q})" for q in report["pictures"]) + "\n")
        f.write(f"\n## Release\n\n{report['release']['model_zoo_row']}\n")
        if "masks" in report:
            f.write(f"\n## Masks ({report['masks']['config']}, fine-tuned from the box model)\n\n"
                    + headline_table(report["masks"]["methods"]) + "\n")
        f.write(f"\nWhole `make demo` run: {report['wall_time_s'] / 60:.1f} min.\n")
    print()
    print(summary_text(report))
    say(f"done in {report['wall_time_s'] / 60:.1f} min; report: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
