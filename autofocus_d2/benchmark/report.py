"""Benchmark report: ratios to the pyramid, target checks, table, Markdown, JSON and plots."""
import json
import math
import os
from typing import Any, Dict, List, Optional

from tabulate import tabulate

__all__ = ["add_ratios", "best_sahi", "check_targets", "headline_table", "summary_text", "time_split_table",
           "write_report"]

# Targets of the built-in dataset (issues 4 and 9): AutoFocus vs the other methods on the same weights.
TARGETS = {
    "ap_within_pyramid": 1.0,  # AP points below pyramid at most
    "max_pixel_ratio": 0.40,  # of pyramid pixels
    "min_speedup": 2.0,  # x pyramid's median time per image
    "min_aps_gain_over_single": 10.0,  # AP_small points
    "min_speedup_over_best_sahi": 3.0,  # x the best SAHI row's median time, at no lower AP
    "max_overhead_share": 0.05,  # of AutoFocus's time per image spent outside detector passes
    "max_finer_mpix_cost": 1.1,  # AutoFocus's finer-scale ms/Mpix / the pyramid's
}


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


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


def best_sahi(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The SAHI row (``sahi``, ``sahi@S``) with the highest AP (ties: the fastest); without AP
    (timing only), the fastest."""
    sahi = [r for r in rows if r["method"] == "sahi" or r["method"].startswith("sahi@")]
    if not sahi:
        return None
    return min(sahi, key=lambda r: (-(r["AP"] if not _nan(r["AP"]) else -1.0), r["median_time_s"]))


def check_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each target with its measured figures and whether it holds. AP targets are left out when AP
    was not measured (timing only)."""
    by = {r["method"]: r for r in rows}
    af, pyr, single = (by.get(k) for k in ("autofocus", "pyramid", "single"))
    sahi = best_sahi(rows)
    with_ap = af is not None and not _nan(af["AP"])
    out = []

    def add(name, holds, detail):
        out.append({"target": name, "holds": holds, "measured": detail})

    if af and pyr:
        if with_ap:
            add(f"AutoFocus AP within {TARGETS['ap_within_pyramid']} of pyramid",
                af["AP"] >= pyr["AP"] - TARGETS["ap_within_pyramid"],
                f"AP {af['AP']:.2f} vs {pyr['AP']:.2f}")
        add(f"AutoFocus pixels <= {TARGETS['max_pixel_ratio']:.0%} of pyramid",
            af["pixel_ratio"] <= TARGETS["max_pixel_ratio"], f"{af['pixel_ratio']:.3f}")
        speedup = pyr["median_time_s"] / af["median_time_s"]
        add(f"AutoFocus >= {TARGETS['min_speedup']}x faster than pyramid",
            speedup >= TARGETS["min_speedup"], f"{speedup:.2f}x")
        a, p = af.get("finer_ms_per_mpix"), pyr.get("finer_ms_per_mpix")
        if not _nan(a) and not _nan(p):
            add(f"AutoFocus finer-scale ms/Mpix <= {TARGETS['max_finer_mpix_cost']}x pyramid's",
                a <= TARGETS["max_finer_mpix_cost"] * p, f"{a:.0f} vs {p:.0f} ms/Mpix ({a / p:.2f}x)")
    if af and not _nan(af.get("overhead_share")):
        add(f"AutoFocus overhead outside detector passes <= {TARGETS['max_overhead_share']:.0%} of its time",
            af["overhead_share"] <= TARGETS["max_overhead_share"],
            f"{af['overhead_share']:.1%} ({af['mean_overhead_ms']:.0f} of {af['mean_time_ms']:.0f} ms mean)")
    if af and single and with_ap:
        add(f"AutoFocus AP_small >= single + {TARGETS['min_aps_gain_over_single']}",
            af["APs"] >= single["APs"] + TARGETS["min_aps_gain_over_single"],
            f"APs {af['APs']:.2f} vs {single['APs']:.2f}")
    if af and sahi and with_ap:
        name = sahi["method"]
        add(f"AutoFocus AP >= best SAHI row ({name}) AP with fewer pixels",
            af["AP"] >= sahi["AP"] and af["pixels_per_image"] < sahi["pixels_per_image"],
            f"AP {af['AP']:.2f} vs {sahi['AP']:.2f}; pixels {af['pixels_per_image']:.0f} vs "
            f"{sahi['pixels_per_image']:.0f}")
        speedup = sahi["median_time_s"] / af["median_time_s"]
        add(f"AutoFocus >= {TARGETS['min_speedup_over_best_sahi']}x faster than best SAHI row ({name}) "
            "at no lower AP",
            af["AP"] >= sahi["AP"] and speedup >= TARGETS["min_speedup_over_best_sahi"],
            f"{speedup:.2f}x; AP {af['AP']:.2f} vs {sahi['AP']:.2f}")
    return out


def _fmt(v, spec):
    return "n/a" if _nan(v) else format(v, spec)


def _has_mask_ap(rows: List[Dict[str, Any]]) -> bool:
    return any(not _nan(r.get("mask_AP")) for r in rows)


def headline_table(rows: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    """One row per method: box AP (and mask AP where measured), pixels, chips, time, memory."""
    masks = _has_mask_ap(rows)
    headers = ["method", "AP", "AP50", "APs", "APm", "APl"]
    headers += ["mask AP", "mask APs"] if masks else []
    headers += ["Mpix/img", "pix ratio", "chips/img", "ms/img", "time ratio", "peak MB"]
    body = []
    for r in rows:
        line = [r["method"]] + [_fmt(r[k], ".2f") for k in ("AP", "AP50", "APs", "APm", "APl")]
        if masks:
            line += [_fmt(r.get("mask_AP"), ".2f"), _fmt(r.get("mask_APs"), ".2f")]
        line += [_fmt(r["pixels_per_image"] / 1e6, ".3f"), _fmt(r["pixel_ratio"], ".3f"),
                 _fmt(r["chips_per_image"], ".1f"), _fmt(r["median_time_s"] * 1000, ".0f"),
                 _fmt(r["time_ratio"], ".2f"), _fmt(r["peak_memory_mb"], ".0f")]
        body.append(line)
    return tabulate(body, headers=headers, tablefmt=fmt)


def time_split_table(rows: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    """Per method: median time, detector and overhead medians (ms per image), the mean overhead's
    share of the mean time, and detector ms per Mpix of scale-0 and of finer-scale passes."""
    headers = ["method", "ms/img", "detector ms", "overhead ms", "overhead share", "scale-0 ms/Mpix",
               "finer ms/Mpix"]
    body = [
        [r["method"], _fmt(r["median_time_s"] * 1000, ".0f"), _fmt(r.get("median_detector_ms"), ".0f"),
         _fmt(r.get("median_overhead_ms"), ".0f"), _fmt(r.get("overhead_share"), ".1%"),
         _fmt(r.get("scale0_ms_per_mpix"), ".0f"), _fmt(r.get("finer_ms_per_mpix"), ".0f")]
        for r in rows
    ]
    return tabulate(body, headers=headers, tablefmt=fmt)


def summary_text(report: Dict[str, Any]) -> str:
    """The headline table, the time split and one line per target (what both CLIs print)."""
    lines = [headline_table(report["methods"]), "", time_split_table(report["methods"])]
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
        "Ratios are to `pyramid`, measured in the same process on the same weights and images."
        + (" Timing only: random init, no AP." if report.get("timing_only") else ""),
        "",
        headline_table(report["methods"]),
        "",
        "## Time split",
        "",
        "Median ms per image; detector = the detector passes (synchronised), overhead = the rest "
        "(chip generation, cropping, stacking, merging); ms per Mpix of the detector inputs of "
        "scale-0 (whole-image) and finer-scale passes (chips, SAHI slices, TTA's larger sizes).",
        "",
        time_split_table(report["methods"]),
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
