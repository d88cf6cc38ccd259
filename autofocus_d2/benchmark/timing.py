"""Where a method's time goes: detector passes (per scale) and everything else (the overhead).

A method's predict function reports its detector passes as :class:`DetectorPass` records (scale,
detector-input pixels, seconds). The AutoFocus pipeline's passes are recorded by
:class:`TimedFocusDetector`, a proxy that provides the FocusDetector interface
(``autofocus_d2.inference.FocusDetector``) of the model it wraps and times every ``detect`` call;
Detectron2 models called through ``inference`` (the TTA row) by :func:`timed_inference`. The
pipeline does not tell ``detect`` which scale a batch belongs to: :func:`attribute_passes` finds it
from the pipeline's own per-scale pixel counts, since the scales run in order.

Overhead of an image = its wall time - the time of its detector passes: chip generation, cropping,
resizing, stacking, merging, moving results to the CPU.
"""
import contextlib
import statistics
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

import torch

__all__ = [
    "DetectorPass",
    "TimedFocusDetector",
    "attribute_passes",
    "summarize_time_split",
    "timed_inference",
]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class DetectorPass(NamedTuple):
    """One detector pass: ``scale`` index of the scale chain (0 = whole images; -1 = not yet
    attributed), ``pixels`` of its detector inputs (sum over the batch, unpadded), ``seconds`` of
    wall time (synchronised on CUDA)."""

    scale: int
    pixels: int
    seconds: float


class TimedFocusDetector:
    """
    A FocusDetector proxy: ``device``, ``input_channels``, ``focus_stride`` and ``normalize`` are the
    wrapped model's; ``detect`` calls the model's and appends a :class:`DetectorPass` (scale -1,
    pixels = sum of ``images.image_sizes``, or for a chip canvas its ``view_pixels``, the pixels of
    the chips it holds) to ``passes``. Other attributes are the model's.
    """

    def __init__(self, model):
        self.model = model
        self.passes: List[DetectorPass] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def input_channels(self) -> int:
        return self.model.input_channels

    @property
    def focus_stride(self) -> int:
        return self.model.focus_stride

    def normalize(self, images):
        return self.model.normalize(images)

    def detect(self, images, *args: Any, **kwargs: Any):
        _sync(self.model.device)
        start = time.perf_counter()
        out = self.model.detect(images, *args, **kwargs)
        _sync(self.model.device)
        pixels = getattr(images, "view_pixels", None) or sum(int(h) * int(w) for h, w in images.image_sizes)
        self.passes.append(DetectorPass(-1, pixels, time.perf_counter() - start))
        return out

    def take(self) -> List[DetectorPass]:
        """The passes recorded since the last call, and forget them."""
        passes, self.passes = self.passes, []
        return passes

    def __getattr__(self, name: str):
        # Only reached for names not defined above (e.g. a model's pipeline or training flag).
        return getattr(self.__dict__["model"], name)


def attribute_passes(pass_pixels: Sequence[int], pixels_per_scale: Sequence[int]) -> List[int]:
    """
    The scale of each of an image's detector passes, in call order, given the pixels of each pass
    and the pixels the pipeline reports per scale (its ``autofocus`` stats): the passes of scale 0
    come first and add up to ``pixels_per_scale[0]``, then those of scale 1, and so on.

    Raises ValueError when the passes do not add up to the scales' pixels that way (a pipeline that
    pads or packs views differently from its pixel count).
    """
    scales, k, acc = [], 0, 0
    for p in pass_pixels:
        while k < len(pixels_per_scale) and acc == pixels_per_scale[k]:
            k, acc = k + 1, 0  # scale k is complete (or empty)
        if k >= len(pixels_per_scale) or acc + p > pixels_per_scale[k]:
            raise ValueError(
                f"detector passes of {list(pass_pixels)} pixels do not add up, in order, to the "
                f"pixels per scale {list(pixels_per_scale)}"
            )
        acc += p
        scales.append(k)
    done = k == len(pixels_per_scale) or (acc == pixels_per_scale[k] and all(
        v == 0 for v in pixels_per_scale[k + 1:]))
    if not done:
        raise ValueError(
            f"detector passes of {list(pass_pixels)} pixels fall short of the pixels per scale "
            f"{list(pixels_per_scale)}"
        )
    return scales


@contextlib.contextmanager
def timed_inference(model, passes: List[DetectorPass]) -> Iterator[None]:
    """Within the block, every ``model.inference(batched_inputs, ...)`` call (a Detectron2
    GeneralizedRCNN's plain pass, as ``GeneralizedRCNNWithTTA`` makes them) appends a
    :class:`DetectorPass` (scale -1, pixels of its input images) to ``passes``. The model's own
    method is restored on exit."""
    original = model.inference

    def inference(batched_inputs, *args, **kwargs):
        _sync(model.device)
        start = time.perf_counter()
        out = original(batched_inputs, *args, **kwargs)
        _sync(model.device)
        pixels = sum(int(x["image"].shape[-2]) * int(x["image"].shape[-1]) for x in batched_inputs)
        passes.append(DetectorPass(-1, pixels, time.perf_counter() - start))
        return out

    model.inference = inference  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        del model.inference


def summarize_time_split(
    times: Sequence[float], passes_per_image: Sequence[Sequence[DetectorPass]]
) -> Dict[str, Optional[float]]:
    """
    The time split of a method over images: ``times[i]`` is image i's wall time (s) and
    ``passes_per_image[i]`` its detector passes (scales attributed).

    Returns (ms; ms per Mpix of detector input): ``median_detector_ms``, ``median_overhead_ms``
    (medians over images), ``mean_time_ms`` = ``mean_detector_ms`` + ``mean_overhead_ms`` (means,
    which add up exactly), ``overhead_share`` (mean overhead / mean time), ``scale0_ms_per_mpix``
    and ``finer_ms_per_mpix`` (detector time / pixels of all scale-0 passes, of all passes of the
    finer scales; None where there were none).
    """
    if len(times) != len(passes_per_image) or not times:
        raise ValueError(f"{len(times)} image times for {len(passes_per_image)} images' passes")
    detector = [sum(p.seconds for p in passes) for passes in passes_per_image]
    overhead = [t - d for t, d in zip(times, detector)]
    all_passes = [p for passes in passes_per_image for p in passes]
    if any(p.scale < 0 for p in all_passes):
        raise ValueError("every detector pass needs its scale before the time split")

    def per_mpix(selected: List[DetectorPass]) -> Optional[float]:
        pixels = sum(p.pixels for p in selected)
        return 1000.0 * sum(p.seconds for p in selected) / (pixels / 1e6) if pixels else None

    n = len(times)
    return {
        "median_detector_ms": 1000.0 * statistics.median(detector),
        "median_overhead_ms": 1000.0 * statistics.median(overhead),
        "mean_time_ms": 1000.0 * sum(times) / n,
        "mean_detector_ms": 1000.0 * sum(detector) / n,
        "mean_overhead_ms": 1000.0 * sum(overhead) / n,
        "overhead_share": sum(overhead) / sum(times) if sum(times) > 0 else None,
        "scale0_ms_per_mpix": per_mpix([p for p in all_passes if p.scale == 0]),
        "finer_ms_per_mpix": per_mpix([p for p in all_passes if p.scale > 0]),
    }
