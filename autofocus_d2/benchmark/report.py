"""Benchmark report: ratios to the pyramid, target checks, table, Markdown, JSON and plots."""
import json
import math
import os
from typing import Any, Dict, List

from tabulate import tabulate

__all__ = ["add_ratios", "check_targets", "headline_table", "summary_text", "write_report"]

# Targets of the built-in dataset (issue 4): AutoFocus vs the other methods on the same weights.
TARGETS = {
    "ap_within_pyramid": 1.0,  # AP points below pyramid at most
    "max_pixel_ratio": 0.40,  # of pyramid pixels
    "min_speedup": 2.0,  # x pyramid's median time per image
    "min_aps_gain_over_single": 10.0,  # AP_small points
}


def add_ratios(rows: List[Dict[str, Any]]) -> None:
    """Add ``pixel_ratio`` and ``time_ratio`` (both vs the ``pyramid`` row, same process) in place."""
    pyramid = next((r for r in rows if r["method"] == "pyramid"), None)
    for r in rows:
        if pyramid is None:
            r["pixel_ratio"] = r["pixels_per_image"] / r["pyramid_pixels_per_image"]
            r["time_ratio"] = float("nan")
        else:
            r["pixel_ratio"] = r["pixels_per_image"] / pyramid["pixels_per_image"]
            r["time_ratio"] = r["median_time_s"] / pyramid["median_time_s"]


def check_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each target with its measured figures and whether it holds (None: a row is missing)."""
    by = {r["method"]: r for r in rows}
    af, pyr, single, sahi = (by.get(k) for k in ("autofocus", "pyramid", "single", "sahi"))
    out = []

    def add(name, holds, detail):
        out.append({"target": name, "holds": holds, "measured": detail})

    if af and pyr:
        add(f"AutoFocus AP within {TARGETS['ap_within_pyramid']} of pyramid",
            af["AP"] >= pyr["AP"] - TARGETS["ap_within_pyramid"],
            f"AP {af['AP']:.2f} vs {pyr['AP']:.2f}")
        add(f"AutoFocus pixels <= {TARGETS['max_pixel_ratio']:.0%} of pyramid",
            af["pixel_ratio"] <= TARGETS["max_pixel_ratio"], f"{af['pixel_ratio']:.3f}")
        speedup = pyr["median_time_s"] / af["median_time_s"]
        add(f"AutoFocus >= {TARGETS['min_speedup']}x faster than pyramid",
            speedup >= TARGETS["min_speedup"], f"{speedup:.2f}x")
    if af and single:
        add(f"AutoFocus AP_small >= single + {TARGETS['min_aps_gain_over_single']}",
            af["APs"] >= single["APs"] + TARGETS["min_aps_gain_over_single"],
            f"APs {af['APs']:.2f} vs {single['APs']:.2f}")
    if af and sahi:
        add("AutoFocus AP >= SAHI AP with fewer pixels",
            af["AP"] >= sahi["AP"] and af["pixels_per_image"] < sahi["pixels_per_image"],
            f"AP {af['AP']:.2f} vs {sahi['AP']:.2f}; pixels {af['pixels_per_image']:.0f} vs "
            f"{sahi['pixels_per_image']:.0f}")
    return out


def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def headline_table(rows: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    headers = ["method", "AP", "AP50", "APs", "APm", "APl", "Mpix/img", "pix ratio", "chips/img",
               "ms/img", "time ratio", "peak MB"]
    body = [
        [r["method"], _fmt(r["AP"], ".2f"), _fmt(r["AP50"], ".2f"), _fmt(r["APs"], ".2f"),
         _fmt(r["APm"], ".2f"), _fmt(r["APl"], ".2f"), _fmt(r["pixels_per_image"] / 1e6, ".3f"),
         _fmt(r["pixel_ratio"], ".3f"), _fmt(r["chips_per_image"], ".1f"),
         _fmt(r["median_time_s"] * 1000, ".0f"), _fmt(r["time_ratio"], ".2f"),
         _fmt(r["peak_memory_mb"], ".0f")]
        for r in rows
    ]
    return tabulate(body, headers=headers, tablefmt=fmt)


def summary_text(report: Dict[str, Any]) -> str:
    """The headline table followed by one line per target (what both CLIs print at the end)."""
    lines = [headline_table(report["methods"])]
    lines += [f"[{'ok' if t['holds'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in report["targets"]]
    return "\n".join(lines)


def sweep_table(sweep: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    body = [[_fmt(r["threshold"], ".2f"), _fmt(r["AP"], ".2f"), _fmt(r["APs"], ".2f"),
             _fmt(r["pixel_ratio"], ".3f"), _fmt(r["median_time_s"] * 1000, ".0f")] for r in sweep]
    return tabulate(body, headers=["threshold", "AP", "APs", "pix ratio", "ms/img"], tablefmt=fmt)


def _plots(report: Dict[str, Any], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, sweep = report["methods"], report["sweep"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if sweep:
        ax.plot([r["pixel_ratio"] for r in sweep], [r["AP"] for r in sweep], "o-", color="tab:blue",
                label="AutoFocus threshold sweep")
        for r in sweep:
            ax.annotate(f"{r['threshold']:g}", (r["pixel_ratio"], r["AP"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    for r in rows:
        ax.plot(r["pixel_ratio"], r["AP"], "s", markersize=8, label=r["method"])
    ax.set_xlabel("pixels processed / full pyramid")
    ax.set_ylabel("COCO AP")
    ax.set_title("Accuracy vs pixels processed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "ap_vs_pixels.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    num_scales = max(len(r["pixels_per_scale"]) for r in rows)
    bottom = [0.0] * len(rows)
    for k in range(num_scales):
        values = [r["pixels_per_scale"][k] / 1e6 if k < len(r["pixels_per_scale"]) else 0 for r in rows]
        ax.bar([r["method"] for r in rows], values, bottom=bottom, label=f"scale {k}")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("Mpixels per image")
    ax.set_title("Pixels processed per scale")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "pixels_per_scale.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(report: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write report.json, report.md and the plots into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2)
    plots = _plots(report, out_dir)
    lines = [
        "# AutoFocus benchmark",
        "",
        f"- dataset: `{report['dataset']}` ({report['images']} images), config: `{report['config']}`",
        f"- weights: `{report['weights']}`",
        f"- device: {report['device']}; date: {report['date']}; warm-up images: {report['warmup']}",
        "",
        "Ratios are to `pyramid`, measured in the same process on the same weights and images.",
        "",
        headline_table(report["methods"]),
        "",
    ]
    if report.get("skipped"):
        lines += [f"- `{name}` skipped: {why}" for name, why in report["skipped"].items()] + [""]
    if report["sweep"]:
        lines += ["## FOCUS_THRESHOLD sweep", "", sweep_table(report["sweep"]), ""]
    if report["targets"]:
        lines += ["## Targets", "", "| target | measured | holds |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['holds'] else '**no**'} |"
                  for t in report["targets"]]
        lines.append("")
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    paths["plots"] = plots
    return paths
