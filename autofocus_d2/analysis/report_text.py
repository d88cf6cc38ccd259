"""The oracle analysis report (:func:`run_oracle_analysis`'s dict) as text tables and lines."""
from typing import Dict, List, Tuple

from tabulate import tabulate

__all__ = ["format_report_table", "format_holes"]


def format_report_table(report: Dict) -> str:
    """The report as a text table: one row per setting (``*``: the config's), then the pyramid.
    "small only s0": small objects whose only surviving copies are at scale 0 (no finer view
    keeps them)."""
    num_scales = len(report["pyramid"]["per_scale"])

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def values(v):  # one value per transition; a single one when they are all equal
        return f"{v[0]:g}" if len(set(v)) == 1 else "/".join(f"{x:g}" for x in v)

    def row(name_d, name_m, entry):
        return [name_d, name_m, pct(entry["recall"]["small"]), pct(entry["recall"]["medium"]),
                pct(entry["recall"]["large"]), entry["per_scale"][0]["finest"]["small"],
                f"{entry['pixel_ratio']:.3f}"] + [
            f"{entry['per_scale'][k]['chips_per_image']:.2f}" for k in range(1, num_scales)
        ]

    rows = [
        row(values(s["dilation"]) + ("*" if s["from_config"] else ""), values(s["min_chip_size"]), s)
        for s in report["settings"]
    ]
    rows.append(row("pyramid", "", report["pyramid"]))
    headers = ["dilation", "min chip", "small %", "medium %", "large %", "small only s0",
               "pixel ratio"] + [f"chips/img s{k}" for k in range(1, num_scales)]
    return tabulate(rows, headers=headers, tablefmt="github")


def format_holes(report: Dict, max_sizes: int = 4) -> str:
    """The report's size holes (its "holes": "anywhere" and "covered") as text lines: image sizes
    with the same holes on one line (at most ``max_sizes`` of them named)."""

    def interval(lo, hi):
        return f"({lo:.1f}, {'inf' if hi is None else f'{hi:.1f}'})"

    lines = []
    for key, what in (("anywhere", "by the valid ranges alone (lost wherever they lie)"),
                      ("covered", "inside a finer chip (valid ranges and small-and-covered rule)")):
        entry = report["holes"][key]
        if key == "covered" and entry["small_drop_size"] == 0:
            continue
        lines.append(f"Size holes (sqrt(area), original px, that no scale keeps), {what}:")
        groups: Dict[Tuple, List[str]] = {}
        for item in entry["holes"]:
            h, w = item["image_hw"]
            groups.setdefault(tuple(tuple(i) for i in item["holes"]), []).append(f"{w} x {h}")
        for holes, sizes in groups.items():
            named = ", ".join(sizes[:max_sizes]) + (", ..." if len(sizes) > max_sizes else "")
            text = ", ".join(interval(lo, hi) for lo, hi in holes) or "none"
            lines.append(f"  {text} on {len(sizes)} image size(s): {named}")
        o = entry["objects_in_holes"]
        lines.append(f"  objects in a hole: {o['all']} ({o['small']} small, {o['medium']} medium, "
                     f"{o['large']} large)")
    return "\n".join(lines)
