"""Pictures of what AutoFocus did: detections, FocusChips per scale, FocusPixel maps.

Every function takes an RGB image (H, W, 3) uint8 in the ORIGINAL image frame and returns a new
(H, W, 3) uint8 RGB array of the same size (but :func:`add_colorbar`, which widens it); the input
is not modified. Boxes are XYXY in the original
image frame. Drawing goes through Detectron2's ``Visualizer``; only the heat map (FocusPixel
probabilities pasted from each view's frame into the original frame) is written here, since
Detectron2 has no such drawing.
"""
from typing import Optional, Sequence

import matplotlib
import numpy as np
import torch
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from ..structures.views import View

__all__ = ["SCALE_COLORS", "draw_detections", "draw_chips", "focus_heatmap", "add_colorbar"]

# Edge colour of the chips of scale k (RGB in [0, 1]), cycled: scale 0 (whole images) white, then
# the finer scales.
SCALE_COLORS = [(1.0, 1.0, 1.0), (0.0, 0.9, 0.0), (1.0, 0.6, 0.0), (0.9, 0.0, 0.9), (0.0, 0.8, 1.0)]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return image


def _as_rgb_uint8(vis_image: np.ndarray, hw) -> np.ndarray:
    out = np.ascontiguousarray(vis_image[..., :3], dtype=np.uint8)
    if out.shape[:2] != tuple(hw):  # Visualizer at scale 1.0 keeps the size; make it a contract
        raise RuntimeError(f"Visualizer returned {out.shape[:2]}, expected {tuple(hw)}")
    return out


def draw_detections(image: np.ndarray, instances: Instances, metadata=None,
                    threshold: float = 0.5) -> np.ndarray:
    """
    The detections of ``instances`` (boxes in the original image frame, ``scores`` and
    ``pred_classes``) with score >= ``threshold``, drawn by Detectron2's Visualizer with the class
    names of ``metadata`` (a ``MetadataCatalog`` entry; None: class indices).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = _check_image(image)
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= threshold]
    vis = Visualizer(image, metadata, scale=1.0)
    return _as_rgb_uint8(vis.draw_instance_predictions(instances).get_image(), image.shape[:2])


def draw_chips(image: np.ndarray, chip_boxes_per_scale: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """
    The regions processed at each scale: ``chip_boxes_per_scale[k]`` is the list of XYXY boxes
    (original image frame) of scale k, e.g. ``output["autofocus"]["chip_boxes_per_scale"]``. Scale
    k's boxes are drawn in ``SCALE_COLORS[k]`` and labelled "s<k>" (scale 0 is the whole image).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    # A chip covering the whole image would be drawn on the image border, half outside it: it is
    # drawn as a band of this many pixels inside the border instead, one band per scale, nested.
    band = max(3, min(h, w) // 100)
    framed = image.copy()
    whole = [k for k, boxes in enumerate(chip_boxes_per_scale)
             if any(_covers(box, h, w) for box in boxes)]
    for i, k in enumerate(whole):
        color = np.array(SCALE_COLORS[k % len(SCALE_COLORS)]) * 255
        a, b = i * band, (i + 1) * band
        if b * 2 >= min(h, w):
            break
        framed[a:b, a:w - a] = color
        framed[h - b:h - a, a:w - a] = color
        framed[a:h - a, a:b] = color
        framed[a:h - a, w - b:w - a] = color
    vis = Visualizer(framed, None, scale=1.0)
    font = max(10, min(h, w) // 40)
    for k, boxes in enumerate(chip_boxes_per_scale):
        color = SCALE_COLORS[k % len(SCALE_COLORS)]
        for box in boxes:
            x0, y0, x1, y1 = [float(v) for v in box]
            if not _covers(box, h, w):
                vis.draw_box((x0, y0, x1, y1), alpha=1.0, edge_color=color, line_style="-")
            inset = (whole.index(k) + 1) * band if k in whole and _covers(box, h, w) else 0
            vis.draw_text(f"s{k}", (x0 + 2 + inset, y0 + 2 + inset), color=color,
                          horizontal_alignment="left", font_size=font)
    return _as_rgb_uint8(vis.output.get_image(), image.shape[:2])


def _covers(box: Sequence[float], h: int, w: int) -> bool:
    """Whether an XYXY box (original frame) covers the whole h x w image."""
    x0, y0, x1, y1 = [float(v) for v in box]
    return x0 <= 0 and y0 <= 0 and x1 >= w and y1 >= h


def add_colorbar(image: np.ndarray, cmap: str = "jet", label: str = "FocusPixel probability") -> np.ndarray:
    """
    ``image`` (e.g. a :func:`focus_heatmap`) with a vertical colour bar of ``cmap`` over [0, 1]
    to its right, ticks 0, 0.5 and 1 and ``label``, drawn by matplotlib at the image's pixel size.

    Returns:
        (H, W + bar, 3) uint8 RGB: the image unchanged on the left, the bar on the right.
    """
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    image = _check_image(image)
    h = image.shape[0]
    bar_w = max(64, h // 6)
    dpi = 100.0
    fig = plt.Figure(figsize=(bar_w / dpi, h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes([0.12, 0.05, 0.18, 0.9])
    norm = matplotlib.colors.Normalize(vmin=0.0, vmax=1.0)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=ax, ticks=[0, 0.5, 1])
    font = max(6.0, min(12.0, h / 40.0))
    bar.ax.tick_params(labelsize=font)
    bar.set_label(label, fontsize=font)
    canvas.draw()
    strip = np.asarray(canvas.buffer_rgba())[..., :3]
    strip = np.ascontiguousarray(strip[:h, :bar_w])
    if strip.shape[0] != h:  # rounding of the figure size: pad with white
        strip = np.pad(strip, ((0, h - strip.shape[0]), (0, 0), (0, 0)), constant_values=255)
    return np.concatenate([image, strip.astype(np.uint8)], axis=1)


def focus_heatmap(image: np.ndarray, views: Sequence[View], maps: Sequence[Optional[torch.Tensor]],
                  stride: int, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """
    FocusPixel probabilities of one scale over the image.

    Args:
        views: the views of one image at one scale (``output["autofocus_details"]["views_per_scale"][k]``).
        maps: aligned with ``views``: each view's FocusPixel map (h, w) at ``stride`` pixels of the
            view's own frame (``out_hw``; a map may extend past it into the batch padding, which
            is cut off); None for a view without a map (skipped).
        stride: the maps' stride in view pixels (``model.focus_stride``).
        alpha: opacity of the colour map.
        cmap: matplotlib colour map of the probability in [0, 1] ("jet": 0 blue, 1 red).

    Each original pixel takes the probability of the map cell its centre falls in (the maximum
    over overlapping views) and is blended with ``cmap`` of it; pixels outside every view are left
    as they are.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = _check_image(image)
    if len(views) != len(maps):
        raise ValueError(f"{len(views)} views but {len(maps)} focus maps")
    h, w = image.shape[:2]
    heat = np.zeros((h, w), dtype=np.float32)
    covered = np.zeros((h, w), dtype=bool)
    for view, fmap in zip(views, maps):
        if fmap is None:
            continue
        fmap = torch.as_tensor(fmap).detach().float().cpu().numpy()
        if fmap.ndim != 2:
            raise ValueError(f"a focus map must be (h, w), got {fmap.shape} for view {view.box}")
        x0, y0, x1, y1 = view.box
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        sx, sy = view.factors
        # Centres of the original pixels -> view pixels -> map cells.
        rows = np.floor((np.arange(y0, y1) - view.box[1] + 0.5) * sy / stride).astype(int)
        cols = np.floor((np.arange(x0, x1) - view.box[0] + 0.5) * sx / stride).astype(int)
        rows = np.clip(rows, 0, fmap.shape[0] - 1)
        cols = np.clip(cols, 0, fmap.shape[1] - 1)
        patch = fmap[rows[:, None], cols[None, :]]
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], patch)
        covered[y0:y1, x0:x1] = True
    colors = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    weight = (alpha * covered.astype(np.float32))[..., None]
    out = image.astype(np.float32) * (1.0 - weight) + colors * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
