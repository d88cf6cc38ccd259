#!/usr/bin/env python
"""One prepared GPU run: everything worth measuring in a short GPU window, into one JSON.

    python tools/cuda_evidence.py --weights output/demo/model_final.pth --output output/cuda_evidence

No network; about 5-8 minutes on one GPU. Sections, in order (each timed; one that fails records
its error and the run goes on; one that would start after ``--budget-s`` is recorded as skipped):

1. ``environment``: device name, capability, memory, torch / CUDA / cuDNN / Detectron2 versions,
   the git commit of this checkout.
2. ``cuda_tests``: the suite's CUDA test cases (``pytest -k cuda`` on the files that have them).
3. ``demo``: the demo model (``--config-file``, ``--weights``) on ``--dataset``: single, pyramid,
   autofocus, ``--sahi`` (best SAHI setting), and autofocus on chip canvases (``--canvases``), each
   at float32 and the reduced precisions (``--dtypes``), with AP.
4. ``large``: the R50-FPN large-frame chain (``--large-config``, random init: timing only) on
   ``--large-dataset``: pyramid, oracle and autofocus on canvases (``--large-canvases``), and
   oracle / autofocus without canvases.
5. ``profile``: torch.profiler's top operators for one AutoFocus image of the demo model.

Writes ``<output>/cuda_evidence.json`` and ``<output>/cuda_evidence.md`` (the tables for the docs).
``--cpu-smoke``: the same code on the CPU with tiny sizes (tiny split, one image, small scales,
one test file), what tests/test_cuda_evidence.py runs. docs/speed.md tells how to run it on a
GPU machine.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_TEST_FILES = [
    "tests/inference/test_focus_stacking.py",
    "tests/inference/test_pipeline.py",
    "tests/inference/test_instance_fields.py",
    "tests/inference/test_focus_chips.py",
    "tests/modeling/test_focus_head.py",
    "tests/modeling/test_mask_autofocus.py",
    "tests/test_demo.py",
]
SUMMARY_KEYS = ("method", "AP", "APs", "median_time_s", "pixels_per_image", "pixel_ratio", "time_ratio")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="", help="the demo model's checkpoint (trained on CPU beforehand)")
    p.add_argument("--config-file", default="configs/Synthetic/autofocus_compact_fpn.yaml")
    p.add_argument("--dataset", default="autofocus_synth_val")
    p.add_argument("--max-images", type=int, default=20)
    p.add_argument("--sahi", default="sahi@768", help="the best SAHI setting (README: sahi@768)")
    p.add_argument("--canvases", default="512x512,1024x1024", help="chip canvases of the demo model, HxW,...")
    p.add_argument("--dtypes", nargs="+", default=None,
                   help="precisions (default: float32 bfloat16 float16 on CUDA, float32 bfloat16 on CPU)")
    p.add_argument("--large-config", default="configs/Synthetic/autofocus_R_50_FPN_large.yaml")
    p.add_argument("--large-dataset", default="autofocus_synth_large_val")
    p.add_argument("--large-images", type=int, default=4)
    p.add_argument("--large-canvases", default="1024x1024,2048x2048")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    p.add_argument("--output", default="output/cuda_evidence")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (the suite's test)")
    return p.parse_args(argv)


def canvases(text: str) -> List[List[int]]:
    """'512x512,1024x1024' -> [[512, 512], [1024, 1024]] (H x W)."""
    try:
        return [[int(v) for v in s.split("x")] for s in text.split(",") if s]
    except ValueError as e:
        raise SystemExit(f"--canvases/--large-canvases: expected HxW,HxW,..., got {text!r} ({e})")


def environment(device: str) -> Dict[str, Any]:
    import detectron2

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1))
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def cuda_tests(files: List[str], timeout_s: float) -> Dict[str, Any]:
    """``pytest -k cuda`` on ``files``; the summary line and the return code."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", *files]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr[-500:], "tail": lines[-15:]}


def summary(report: Dict[str, Any], suffix: str = "") -> List[Dict[str, Any]]:
    return [{**{k: r.get(k) for k in SUMMARY_KEYS}, "method": r["method"] + suffix} for r in report["methods"]]


def demo_section(args, small: Dict[str, Any], device: str, dtypes: List[str]) -> Dict[str, Any]:
    from autofocus_d2.benchmark import run_benchmark

    out: Dict[str, Any] = {"weights": args.weights or "(random init)", "dataset": small["dataset"], "runs": {}}
    for dtype in dtypes:
        base = demo_cfg(args, small, device, INFERENCE_DTYPE=dtype)
        plain = run_benchmark(base, dataset_name=small["dataset"], methods=["single", "pyramid", "autofocus", args.sahi],
                              max_images=small["max_images"], warmup=small["warmup"], progress=False)
        packed = run_benchmark(demo_cfg(args, small, device, INFERENCE_DTYPE=dtype, CHIP_CANVASES=canvases(args.canvases)),
                               dataset_name=small["dataset"], methods=["autofocus"], max_images=small["max_images"],
                               warmup=small["warmup"], progress=False)
        rows = summary(plain) + summary(packed, "+canvases")
        pyramid = next((r for r in rows if r["method"] == "pyramid"), None)
        if pyramid is not None:
            for r in rows:
                r["speed_vs_pyramid"] = pyramid["median_time_s"] / r["median_time_s"] if r["median_time_s"] else None
        out["runs"][dtype] = {"rows": rows, "skipped": plain.get("skipped", {}), "images": plain["images"]}
    return out


def demo_cfg(args, small, device, **autofocus):
    from autofocus_d2.config import load_autofocus_config

    opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", args.weights] + small["opts"]
    cfg = load_autofocus_config(os.path.join(REPO, args.config_file), opts)
    cfg.defrost()
    for key, value in autofocus.items():
        setattr(cfg.MODEL.AUTOFOCUS, key, value)
    cfg.freeze()
    return cfg


def large_section(args, small: Dict[str, Any], device: str) -> Dict[str, Any]:
    from autofocus_d2.benchmark import run_benchmark
    from autofocus_d2.config import load_autofocus_config

    opts = ["MODEL.DEVICE", device] + small["large_opts"]
    cfg = load_autofocus_config(os.path.join(REPO, args.large_config), opts)
    rows = []
    for packed in (True, False):
        c = cfg.clone()
        c.defrost()
        c.MODEL.AUTOFOCUS.CHIP_CANVASES = canvases(args.large_canvases) if packed else []
        methods = ["pyramid", "oracle", "autofocus"] if packed else ["pyramid", "oracle", "autofocus"][1:]
        report = run_benchmark(c, dataset_name=small["large_dataset"], methods=methods, max_images=small["large_images"],
                               warmup=small["warmup"], progress=False, timing_only=True)
        rows += summary(report, "+canvases" if packed else "")
    pyramid = next(r for r in rows if r["method"] == "pyramid+canvases")
    for r in rows:
        r["pixel_ratio"] = r["pixels_per_image"] / pyramid["pixels_per_image"]
        r["time_ratio"] = r["median_time_s"] / pyramid["median_time_s"]
        r["time_over_pixel_ratio"] = r["time_ratio"] / r["pixel_ratio"] if r["pixel_ratio"] else None
    return {"config": args.large_config, "dataset": small["large_dataset"], "weights": "(random init: timing only)",
            "rows": rows}


def profile_section(args, small: Dict[str, Any], device: str, top: int = 15) -> Dict[str, Any]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from torch.profiler import ProfilerActivity, profile

    from autofocus_d2.benchmark.runner import load_inputs

    cfg = demo_cfg(args, small, device, CHIP_CANVASES=canvases(args.canvases))
    model = build_model(cfg).eval()
    if args.weights:
        DetectionCheckpointer(model).load(args.weights)
    x = load_inputs(cfg, small["dataset"], 1)[0]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.no_grad():
        model([x])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            model([x])
            if device == "cuda":
                torch.cuda.synchronize()
    events = prof.key_averages()
    device_time = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    key = device_time if device == "cuda" else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    return {"sorted_by": key, "image_hw": list(x["image"].shape[-2:]), "top_ops": [
        {"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
         "self_device_ms": getattr(e, device_time, 0.0) / 1e3, "cpu_total_ms": e.cpu_time_total / 1e3}
        for e in rows]}


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"# CUDA evidence ({result['environment'].get('device_name', result['environment']['device'])}, "
             f"{result['environment']['date']})", ""]

    def table(rows, keys):
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for r in rows:
            cells = [f"{r.get(k):.4g}" if isinstance(r.get(k), float) and math.isfinite(r.get(k)) else str(r.get(k))
                     for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    demo = result["sections"].get("demo", {}).get("result")
    for dtype, run in (demo or {}).get("runs", {}).items():
        lines.append(f"## Demo model, {dtype} ({run['images']} images)")
        table(run["rows"], ["method", "AP", "APs", "median_time_s", "pixel_ratio", "speed_vs_pyramid"])
    large = result["sections"].get("large", {}).get("result")
    if large:
        lines.append("## R50-FPN large frames (random init, timing)")
        table(large["rows"], ["method", "median_time_s", "pixel_ratio", "time_ratio", "time_over_pixel_ratio"])
    prof = result["sections"].get("profile", {}).get("result")
    if prof:
        lines.append(f"## Top operators, one AutoFocus image ({prof['sorted_by']})")
        table(prof["top_ops"][:10], ["name", "calls", "self_device_ms", "self_cpu_ms"])
    for name, sec in result["sections"].items():
        if sec.get("status") != "ok":
            lines.append(f"- {name}: {sec.get('status')} {sec.get('error', '')}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    import autofocus_d2  # noqa: F401  (registers the model and datasets)

    start = time.perf_counter()
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --cpu-smoke", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        small = {"dataset": "autofocus_synth_tiny", "max_images": 1, "warmup": 0,
                 "opts": ["MODEL.AUTOFOCUS.SCALES", "[[96, 128], [192, 256]]"],
                 "large_dataset": "autofocus_synth_tiny", "large_images": 1,
                 "large_opts": ["MODEL.AUTOFOCUS.SCALES", "[[64, 96], [128, 192], [256, 384]]",
                                "MODEL.AUTOFOCUS.CHIP_BATCH_SIZE", "2"]}
        test_files, args.canvases, args.large_canvases = CUDA_TEST_FILES[:1], "128x128,256x256", "128x128,256x256"
    else:
        small = {"dataset": args.dataset, "max_images": args.max_images, "warmup": 1, "opts": [],
                 "large_dataset": args.large_dataset, "large_images": args.large_images, "large_opts": []}
        test_files = CUDA_TEST_FILES
    dtypes = args.dtypes or (["float32", "bfloat16", "float16"] if device == "cuda" else ["float32", "bfloat16"])
    result: Dict[str, Any] = {"environment": environment(device), "cpu_smoke": args.cpu_smoke, "sections": {}}
    sections: List[tuple] = [
        ("cuda_tests", lambda: cuda_tests(test_files, timeout_s=150)),
        ("demo", lambda: demo_section(args, small, device, dtypes)),
        ("large", lambda: large_section(args, small, device)),
        ("profile", lambda: profile_section(args, small, device)),
    ]
    os.makedirs(args.output, exist_ok=True)
    json_path = os.path.join(args.output, "cuda_evidence.json")
    for name, fn in sections:
        run_section(result, name, fn, start, args.budget_s)
        with open(json_path, "w") as f:  # after every section: a cut-off run keeps what it had
            json.dump(result, f, indent=1, default=str)
    result["total_s"] = time.perf_counter() - start
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(args.output, "cuda_evidence.md"), "w") as f:
        f.write(markdown(result))
    print(f"[cuda_evidence] wrote {json_path} in {result['total_s']:.0f} s", flush=True)
    return 0 if all(s["status"] == "ok" for s in result["sections"].values()) else 1


def run_section(result: Dict[str, Any], name: str, fn: Callable, start: float, budget_s: float) -> None:
    elapsed = time.perf_counter() - start
    if elapsed > budget_s:
        result["sections"][name] = {"status": "skipped", "error": f"budget of {budget_s:.0f} s spent ({elapsed:.0f} s)"}
        return
    print(f"[cuda_evidence] {name} (at {elapsed:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        result["sections"][name] = {"status": "ok", "result": fn()}
    except Exception as e:  # recorded in the JSON; the other sections still run
        result["sections"][name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        print(f"[cuda_evidence] {name} failed: {type(e).__name__}: {e}", flush=True)
    result["sections"][name]["seconds"] = time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
