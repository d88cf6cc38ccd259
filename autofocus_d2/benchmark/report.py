"""Benchmark report: ratios to the pyramid (with their spread over repeats), AP differences with
their intervals, target checks (built-in dataset), tables, Markdown, JSON, detections and plots."""
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional

from tabulate import tabulate

__all__ = ["add_ratios", "best_sahi", "check_targets", "comparison_lines", "headline_table", "summary_text",
           "time_split_table", "write_report"]

# Targets of the built-in dataset (issues 4 and 9): AutoFocus vs the other methods on the same weights.
TARGETS = {
    "ap_within_pyramid": 0.5,  # AP points below pyramid at most (the point difference)
    "max_pixel_ratio": 0.40,  # of pyramid pixels
    "min_speedup": 2.0,  # x pyramid's median time per image
    "min_aps_gain_over_single": 10.0,  # AP_small points
    "min_speedup_over_best_sahi": 3.0,  # x the best SAHI row's median time, at no lower AP
    "max_overhead_share": 0.05,  # of AutoFocus's time per image spent outside detector passes
    "max_finer_mpix_cost": 1.1,  # AutoFocus's finer-scale ms/Mpix / the pyramid's
}


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def add_ratios(rows: List[Dict[str, Any]], pyramid: Optional[Dict[str, Any]] = None) -> None:
    """
    Add ``pixel_ratio`` and ``time_ratio`` to each row in place, both against ``pyramid`` (default:
    the rows' ``pyramid`` row; same process). Where the rows carry ``repeat_median_time_s`` (the
    median time per image of each timed pass), the ratio is taken pass by pass
    (``repeat_time_ratios``: a row timed in fewer passes uses the pyramid's first ones),
    ``time_ratio`` is their median and ``time_ratio_spread`` [min, max]; otherwise ``time_ratio`` is
    the ratio of the median times and ``time_ratio_spread`` None.
    """
    if pyramid is None:
        pyramid = next((r for r in rows if r["method"] == "pyramid"), None)
    for r in rows:
        r["time_ratio_spread"] = None
        if pyramid is None:
            r["pixel_ratio"] = r["pixels_per_image"] / r["pyramid_pixels_per_image"]
            r["time_ratio"] = float("nan")
            continue
        r["pixel_ratio"] = r["pixels_per_image"] / pyramid["pixels_per_image"]
        mine, ref = r.get("repeat_median_time_s"), pyramid.get("repeat_median_time_s")
        if mine and ref:
            ratios = [a / b for a, b in zip(mine, ref)]
            r["repeat_time_ratios"] = ratios
            r["time_ratio"] = statistics.median(ratios)
            r["time_ratio_spread"] = [min(ratios), max(ratios)]
        else:
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
            diff = af.get("AP_diff_vs_pyramid")
            diff = af["AP"] - pyr["AP"] if _nan(diff) else diff
            add(f"AutoFocus AP within {TARGETS['ap_within_pyramid']} of the pyramid",
                diff >= -TARGETS["ap_within_pyramid"],
                f"AP {af['AP']:.2f} vs {pyr['AP']:.2f}: {diff:+.2f}{_ci_text(af.get('AP_diff_ci95'))}")
        add(f"AutoFocus pixels <= {TARGETS['max_pixel_ratio']:.0%} of pyramid",
            af["pixel_ratio"] <= TARGETS["max_pixel_ratio"], f"{af['pixel_ratio']:.3f}")
        speedup = 1.0 / af["time_ratio"] if af.get("time_ratio") else pyr["median_time_s"] / af["median_time_s"]
        add(f"AutoFocus >= {TARGETS['min_speedup']}x faster than pyramid",
            speedup >= TARGETS["min_speedup"], f"{speedup:.2f}x{_speedup_spread_text(af)}")
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


def _ci_text(ci) -> str:
    """' (95% CI [low, high])', or '' without a finite interval."""
    if not ci or any(_nan(v) for v in ci):
        return ""
    return f" (95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}])"


def _speedup_spread_text(r: Dict[str, Any]) -> str:
    spread = r.get("time_ratio_spread")
    if not spread or len(r.get("repeat_time_ratios", [])) < 2:
        return ""
    return f" ({1 / spread[1]:.2f}-{1 / spread[0]:.2f}x over {len(r['repeat_time_ratios'])} timed passes)"


def _spread(r: Dict[str, Any]) -> str:
    spread = r.get("time_ratio_spread")
    return "n/a" if not spread else f"{spread[0]:.2f}-{spread[1]:.2f}"


def _has_ap_diff(rows: List[Dict[str, Any]]) -> bool:
    return any(not _nan(r.get("AP_diff_vs_pyramid")) for r in rows)


def _diff_cells(r: Dict[str, Any]) -> List[str]:
    ci = r.get("AP_diff_ci95") or [float("nan")] * 2
    interval = "n/a" if any(_nan(v) for v in ci) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return [_fmt(r.get("AP_diff_vs_pyramid"), "+.2f"), interval]


def _table(body: List[List[str]], headers: List[str], fmt: str) -> str:
    """Cells already formatted (signs kept: no number parsing), the first column left-aligned and
    the figures right-aligned."""
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))


def _has_mask_ap(rows: List[Dict[str, Any]]) -> bool:
    return any(not _nan(r.get("mask_AP")) for r in rows)


def headline_table(rows: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    """One row per method: box AP, its difference to the pyramid with the paired 95% interval
    (where measured), mask AP (where measured), pixels, chips, time, the time ratio to the pyramid
    with its spread over the timed passes (where repeated), memory."""
    masks, diffs = _has_mask_ap(rows), _has_ap_diff(rows)
    spreads = any(r.get("time_ratio_spread") for r in rows)
    headers = ["method", "AP"] + (["AP diff", "95% CI"] if diffs else []) + ["AP50", "APs", "APm", "APl"]
    headers += ["mask AP", "mask APs"] if masks else []
    headers += ["Mpix/img", "pix ratio", "chips/img", "ms/img", "time ratio"]
    headers += ["ratio spread"] if spreads else []
    headers += ["peak MB"]
    body = []
    for r in rows:
        line = [r["method"], _fmt(r["AP"], ".2f")] + (_diff_cells(r) if diffs else [])
        line += [_fmt(r[k], ".2f") for k in ("AP50", "APs", "APm", "APl")]
        if masks:
            line += [_fmt(r.get("mask_AP"), ".2f"), _fmt(r.get("mask_APs"), ".2f")]
        line += [_fmt(r["pixels_per_image"] / 1e6, ".3f"), _fmt(r["pixel_ratio"], ".3f"),
                 _fmt(r["chips_per_image"], ".1f"), _fmt(r["median_time_s"] * 1000, ".0f"),
                 _fmt(r["time_ratio"], ".2f")]
        line += [_spread(r)] if spreads else []
        line += [_fmt(r["peak_memory_mb"], ".0f")]
        body.append(line)
    return _table(body, headers, fmt)


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


def comparison_lines(report: Dict[str, Any]) -> List[str]:
    """One line per method against the pyramid: the AP difference with its paired 95% interval,
    the pixel ratio, and the time ratio with its spread over the timed passes -- the figures the
    report gives on any data, without verdicts."""
    out = []
    for r in report["methods"]:
        if r["method"] == "pyramid":
            continue
        parts = []
        if not _nan(r.get("AP_diff_vs_pyramid")):
            parts.append(f"AP {r['AP_diff_vs_pyramid']:+.2f}{_ci_text(r.get('AP_diff_ci95'))}")
        parts.append(f"pixels x{r['pixel_ratio']:.3f}")
        if not _nan(r.get("time_ratio")):
            n = len(r.get("repeat_time_ratios", []))
            spread = f" ({_spread(r)} over {n} timed passes)" if n > 1 else ""
            parts.append(f"time x{r['time_ratio']:.2f}{spread}")
        out.append(f"{r['method']} vs pyramid: " + "; ".join(parts))
    return out


def summary_text(report: Dict[str, Any]) -> str:
    """The headline table, the time split, the warnings, and one line per target on the built-in
    dataset or one line per method against the pyramid on other data (what both CLIs print)."""
    lines = [headline_table(report["methods"]), "", time_split_table(report["methods"])]
    lines += [f"[WARNING] {w}" for w in report.get("warnings", [])]
    if report.get("targets_checked", True):
        lines += [f"[{'ok' if t['holds'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in report["targets"]]
    else:
        lines += comparison_lines(report)
    return "\n".join(lines)


def sweep_table(sweep: List[Dict[str, Any]], fmt: str = "pipe") -> str:
    diffs = _has_ap_diff(sweep)
    body = [[_fmt(r["threshold"], ".2f"), _fmt(r["AP"], ".2f")] + (_diff_cells(r) if diffs else [])
            + [_fmt(r["APs"], ".2f"), _fmt(r["pixel_ratio"], ".3f"), _fmt(r["median_time_s"] * 1000, ".0f"),
               _fmt(r["time_ratio"], ".2f")] for r in sweep]
    headers = ["threshold", "AP"] + (["AP diff", "95% CI"] if diffs else []) + ["APs", "pix ratio", "ms/img",
                                                                               "time ratio"]
    return _table(body, headers, fmt)


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


def _write_detections(detections: Dict[str, List[Dict[str, Any]]], out_dir: str) -> Dict[str, str]:
    """Each method's COCO results as ``detections/<method>.json`` in ``out_dir``; the paths,
    relative to ``out_dir``, by method."""
    paths = {}
    if detections:
        os.makedirs(os.path.join(out_dir, "detections"), exist_ok=True)
    for method, results in detections.items():
        rel = os.path.join("detections", method.replace(os.sep, "_") + ".json")
        with open(os.path.join(out_dir, rel), "w") as f:
            json.dump(results, f)
        paths[method] = rel
    return paths


def write_report(report: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write report.json, report.md, the plots and each method's detections (the report's
    ``detections``: COCO results lists by method, written to ``detections/<method>.json``; in
    report.json their paths) into ``out_dir``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
    detections = _write_detections(report.get("detections") or {}, out_dir)
    with open(paths["json"], "w") as f:
        json.dump({**report, "detections": detections}, f, indent=2)
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
    ]
    lines += [f"> **Warning**: {w}" for w in report.get("warnings", [])]
    lines += [""] if report.get("warnings") else []
    lines += [
        headline_table(report["methods"]),
        "",
        _method_notes(report),
        "",
        "## Against the pyramid",
        "",
        *[f"- {line}" for line in comparison_lines(report)],
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
    if not report.get("targets_checked", True):
        lines += ["## Targets", "", f"Not checked: the demo's targets were set for the built-in dataset, not "
                  f"`{report['dataset']}`; see the differences and spreads above.", ""]
    elif report["targets"]:
        lines += ["## Targets", "", "| target | measured | holds |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['holds'] else '**no**'} |"
                  for t in report["targets"]]
        lines.append("")
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    paths["plots"] = plots
    paths["detections"] = {m: os.path.join(out_dir, p) for m, p in detections.items()}
    return paths


def _method_notes(report: Dict[str, Any]) -> str:
    """How the table's AP differences and time ratios were measured, with the scale-0 check."""
    text = []
    if _has_ap_diff(report["methods"]):
        text.append(f"AP diff: box AP minus the pyramid's on the same images; 95% CI: paired bootstrap over "
                    f"images ({report.get('bootstrap_samples', 0)} resamples, the same for every method). "
                    "AP from the first timed pass.")
    repeats = report.get("repeats", 1)
    text.append(f"Timing: each image through every method in rotating order, {repeats} timed pass(es) over the "
                "images; ms/img is the median over passes of the median per image; time ratio: the median "
                "over passes of the per-pass ratio to the pyramid, ratio spread its min-max"
                + (" (sweep settings: first pass only)." if report.get("sweep") else "."))
    scale0 = report.get("scale0_agreement")
    if scale0:
        tolerance = f"{scale0['tolerance']:.0%}"
        text.append(f"Identical scale-0 passes ({', '.join(scale0['ms_per_mpix'])}) timed "
                    f"{scale0['max_over_min']:.2f}x apart within a timed pass (median over passes)"
                    + (f" -- more than the {tolerance} tolerance, see the warning." if scale0["flagged"]
                       else f" (within {tolerance})."))
    text.append("Detections: " + ("`detections/<method>.json` (COCO results)." if report.get("detections")
                                  else "none saved (timing only)."))
    return " ".join(text)
