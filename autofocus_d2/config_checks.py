"""The value rules of the AutoFocus settings, one function per rule.

Each rule is checked by the constructor that takes the value (pipeline, chip policies, scale chain,
focus settings of the meta-architecture), so yacs, LazyConfig and plain Python construction are
checked by the same code. ``validate_autofocus_config`` calls the same functions with the yacs keys
before anything is built, so a yacs error names the key (``MODEL.AUTOFOCUS.FOCUS_THRESHOLD``) and a
LazyConfig / Python error names the argument (``thresholds``).

Every function takes ``name``, the key or argument the value came from, and raises ValueError
``"Invalid config <name>: ..."``.
"""
import math
import numbers
from collections.abc import Sequence as SequenceABC
from typing import Optional, Sequence, Tuple

__all__ = [
    "check",
    "check_pair",
    "check_ranges",
    "check_scale_chain",
    "check_probabilities",
    "check_dilations",
    "check_min_sizes",
    "check_at_least",
    "check_in_range",
    "check_choice",
    "check_focus_label_range",
    "check_tiling",
    "check_ignore_iou",
]


def check(cond: bool, name: str, msg: str) -> None:
    """Raise ValueError ``Invalid config <name>: <msg>`` unless ``cond``."""
    if not cond:
        raise ValueError(f"Invalid config {name}: {msg}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_list(value) -> bool:
    """A list, tuple or any other sequence but a string (LazyConfig passes OmegaConf ListConfigs)."""
    return isinstance(value, SequenceABC) and not isinstance(value, str)


def check_pair(value: Sequence[float], name: str) -> Tuple[float, float]:
    """A [min, max] pair of numbers, as floats."""
    check(_is_list(value) and len(value) == 2 and all(map(_is_number, value)), name,
          f"expected [min, max] of two numbers, got {value!r}")
    return float(value[0]), float(value[1])


def check_ranges(ranges: Sequence[Sequence[float]], name: str, num_scales: Optional[int] = None) -> None:
    """[min, max] size ranges, -1 = no limit; with ``num_scales``, exactly one range per scale."""
    if num_scales is not None:
        check(len(ranges) == num_scales, name, f"{len(ranges)} ranges for {num_scales} scales")
    for r in ranges:
        lo, hi = check_pair(r, name)
        check(hi < 0 or lo <= hi, name, f"range {list(r)} has min > max")


def check_scale_chain(scales: Sequence[Sequence[float]], name: str) -> None:
    """
    Each scale a [short, cap] pair, each side -1 (no constraint) or > 0, cap >= short when both are
    set. Consecutive scales must go from coarse to fine: no two equal, and on a side that both set
    (short or cap) the finer scale's target is not smaller. The chains this rejects make the
    "finer" scale no finer than the previous one on every image (e.g. [[-1, 768], [-1, 512]],
    [[512, 768], [-1, 300]], a repeated [-1, -1]) or on every image of ordinary shape
    ([[512, 768], [200, -1]]: on all images with a long / short side ratio below 3.84). A chain that
    is coarse-to-fine only for some image sizes (e.g. [[512, 768], [-1, -1]] on an image smaller
    than 512 x 768) is accepted; the pipeline skips the finer scale on those images.
    """
    check(_is_list(scales) and len(scales) >= 1, name,
          f"needs at least one [short, cap] scale, got {scales!r}")
    pairs = [check_pair(s, name) for s in scales]
    for short, cap in pairs:
        check(all(v == -1 or v > 0 for v in (short, cap)), name,
              f"each side must be -1 (no constraint) or a positive number, got {[short, cap]}")
        check(short < 0 or cap < 0 or cap >= short, name,
              f"the longer-side cap is below the shorter side in {[short, cap]}")
    for k, ((s0, c0), (s1, c1)) in enumerate(zip(pairs, pairs[1:])):
        where = f"scale {k + 1} {[s1, c1]} after scale {k} {[s0, c0]}"
        check((s0, c0) != (s1, c1), name, f"scales must go from coarse to fine: {where} is the same scale")
        for side, v0, v1 in (("shorter-side target", s0, s1), ("longer-side cap", c0, c1)):
            check(v0 < 0 or v1 < 0 or v1 >= v0, name,
                  f"scales must go from coarse to fine: {where} has a smaller {side} ({v1:g} < {v0:g}), "
                  "so it is not finer than the previous scale")


def check_probabilities(values: Sequence[float], name: str) -> None:
    """Numbers in [0, 1], at least one."""
    check(_is_list(values) and len(values) >= 1, name, f"needs a list of at least one value, got {values!r}")
    for t in values:
        check(_is_number(t) and 0.0 <= t <= 1.0, name, f"{t!r} is not in [0, 1]")


def check_dilations(values: Sequence[int], name: str) -> None:
    """Dilation kernel sides, integers >= 1 (focus-map cells), at least one."""
    check(_is_list(values) and len(values) >= 1, name, f"needs a list of at least one value, got {values!r}")
    for d in values:
        check(_is_number(d) and int(d) == d and d >= 1, name, f"{d!r} is not an integer >= 1")


def check_min_sizes(values: Sequence[float], name: str) -> None:
    """Minimum chip sides, finite and >= 0 (pixels), at least one."""
    check(_is_list(values) and len(values) >= 1, name, f"needs a list of at least one value, got {values!r}")
    for m in values:
        check(_is_number(m) and m >= 0, name, f"{m!r} is not a finite number >= 0")


def check_at_least(value, minimum: float, name: str, *, integer: bool = False) -> None:
    """A finite number (an integer with ``integer``) >= ``minimum``."""
    ok = _is_number(value) and value >= minimum and (not integer or int(value) == value)
    kind = "an integer" if integer else "a number"
    check(ok, name, f"must be {kind} >= {minimum:g}, got {value!r}")


def check_in_range(value, lo: float, hi: float, name: str, *, lo_open: bool = False,
                   hi_open: bool = False) -> None:
    """A finite number in the interval from ``lo`` to ``hi`` (ends open as told)."""
    ok = _is_number(value) and (lo < value if lo_open else lo <= value) and (
        value < hi if hi_open else value <= hi)
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    check(ok, name, f"must be in {interval}, got {value!r}")


def check_ignore_iou(ignore_iou: float, name: str = "MODEL.SNIPER.IGNORE_IOU (ignore_iou)") -> float:
    """SNIPER's IoU with an ignored box above which an anchor or proposal gives no loss: in (0, 1]."""
    check(_is_number(ignore_iou) and 0.0 < ignore_iou <= 1.0, name, f"must be in (0, 1], got {ignore_iou!r}")
    return float(ignore_iou)


def check_choice(value, choices: Sequence, name: str) -> None:
    """One of ``choices``."""
    check(value in tuple(choices), name, f"{value!r} is not one of {list(choices)}")


def check_focus_label_range(small_range: Sequence[float], ignore_max: float, name_range: str,
                            name_ignore: str) -> None:
    """FocusPixel size range [min, max] and ignore limit (sqrt(area), pixels): 0 <= min <= max <= ignore."""
    lo, hi = check_pair(small_range, name_range)
    check(0 <= lo <= hi, name_range, f"need 0 <= min <= max, got {[lo, hi]}")
    check(_is_number(ignore_max) and ignore_max >= hi, name_ignore, f"{ignore_max!r} is below {name_range} max {hi:g}")


def check_canvas_list(shapes: Sequence[Sequence[int]], name: str) -> None:
    """Chip canvas shapes: a list of [H, W], each side an integer of at least 32 pixels (the
    alignment to the backbone's stride is checked where the pipeline runs, which knows it)."""
    check(_is_list(shapes), name, f"must be a list of [H, W] canvas shapes, got {shapes!r}")
    for shape in shapes:
        check(_is_list(shape) and len(shape) == 2 and all(_is_number(v) and int(v) == v and v >= 32 for v in shape),
              name, f"every canvas must be [H, W] of integers >= 32 pixels, got {shape!r}")


def check_tiling(max_chip_side, tile_overlap, name_side: str, name_overlap: str) -> None:
    """Tiles of at most ``max_chip_side`` >= 32 pixels overlapping by [0, side / 2) pixels."""
    check_at_least(max_chip_side, 32, name_side)
    check(_is_number(tile_overlap) and 0 <= tile_overlap < max_chip_side / 2, name_overlap,
          f"must be in [0, {name_side} / 2 = {max_chip_side / 2:g}), got {tile_overlap!r}")
