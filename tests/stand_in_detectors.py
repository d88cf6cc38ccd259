"""Model-free stand-in detectors for the pipeline tests (tests/conftest.py hands them out as the
``planted_detector`` and ``ground_truth_detector`` fixtures, :func:`paint` and
:func:`coordinate_image` as ``paint_image`` and ``make_coordinate_image``).

:class:`PlantedDetector`: a stand-in detector for pipeline tests (the FocusDetector interface) and,
through :meth:`PlantedDetector.inference`, for code that calls a Detectron2 model (the SAHI
wrapper).

Images carry one object per colour channel (value 255 on a black background). The stand-in
"detects" the object of channel c as the bounding box of the pixels of that channel above 127.5
in the view it is given (class c, score 0.9 - 0.1 * c), and its FocusPixel map is 1 in every
stride cell that holds a pixel of a channel listed in ``focus_channels``. So whatever the pipeline
crops and resizes, the detections it gets back show where the objects really landed.

With ``with_masks`` it also returns Detectron2-style box-relative ``pred_masks`` (N, 1, 8, 8):
the left half of each box (columns 0-3) is 1, the right half 0. With ``with_keypoints`` it returns
``pred_keypoints`` (N, 2, 3) in the view frame: the box's top-left corner (score 1.0) and its
centre (score 0.5), and box-relative ``pred_keypoint_heatmaps`` (N, 2, 4, 4) filled with the class.
With ``score_by_area`` a box's score is area / (area + 1000) instead (a whole object outranks its
cut parts, as a slicing merge needs).
With ``separate`` it detects one box per separated block of a channel (blocks split by empty
columns, then by empty rows), as a local detector would: what chip canvases need, where several
chips share one pass.

:class:`GroundTruthDetector`: a FocusDetector whose detections in every view are exactly the
ground-truth boxes that the view fully contains. The pipeline never tells a detector which view it
sees, so the input images carry it: :func:`coordinate_image` writes, in every pixel, its own
original-frame x and y centre coordinates (channels 0 and 1) and the image's index (channel 2).
Bilinear resizing (antialiased or not) keeps a linear ramp exact away from the view's edges, so two
interior pixels give the view's zoom and offset, which round to the integer view box
(:func:`recover_interval`).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances


class PlantedDetector:
    def __init__(self, focus_channels=(1, 2), stride=16, focus_value=None, with_masks=False, with_keypoints=False,
                 separate=False, score_by_area=False, input_format="RGB"):
        self.device = torch.device("cpu")
        self.input_channels = 3
        self.focus_stride = stride
        self.size_divisibility = 32
        self.focus_channels = list(focus_channels)
        self.focus_value = focus_value  # a float: a constant map of that value instead
        self.batches = []  # (batch size, padded h, padded w) of every call
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.separate = separate
        self.score_by_area = score_by_area
        self.input_format = input_format  # of the images given to inference(); detect() reads channels as given
        self.inputs = []  # (h, w) of every image given to inference()

    def to(self, device):
        self.device = torch.device(device)
        return self

    def normalize(self, images):
        return ImageList.from_tensors(list(images), self.size_divisibility)

    @staticmethod
    def runs(present):
        """[start, end) of each run of True in a 1-D bool tensor."""
        edges = torch.diff(torch.cat([present.new_zeros(1), present, present.new_zeros(1)]).int()).nonzero()[:, 0]
        return edges.view(-1, 2).tolist()

    def blocks(self, mask, x=0, y=0):
        """Boxes [x0, y0, x1, y1] of ``mask`` (h, w) offset by (x, y): one overall, or with
        ``separate`` one per block (split recursively at empty columns and empty rows)."""
        ys, xs = mask.nonzero(as_tuple=True)
        if not len(xs):
            return []
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if not self.separate:
            return [[x + x0, y + y0, x + x1, y + y1]]
        mask = mask[y0:y1, x0:x1]
        cols, rows = self.runs(mask.any(dim=0)), self.runs(mask.any(dim=1))
        if len(cols) == 1 and len(rows) == 1:
            return [[x + x0, y + y0, x + x1, y + y1]]
        if len(cols) > 1:
            return [b for a, e in cols for b in self.blocks(mask[:, a:e], x + x0 + a, y + y0)]
        return [b for a, e in rows for b in self.blocks(mask[a:e], x + x0, y + y0 + a)]

    def detect(self, images, with_focus=True):
        tensor = images.tensor
        self.batches.append(tuple([tensor.shape[0], *tensor.shape[-2:]]))
        results = []
        for b, (h, w) in enumerate(images.image_sizes):
            view = tensor[b, :, :h, :w]
            boxes, classes = [], []
            for c in range(view.shape[0]):
                for box in self.blocks(view[c] > 127.5):
                    boxes.append(box)
                    classes.append(c)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32, device=tensor.device).reshape(-1, 4))
            inst.pred_classes = torch.tensor(classes, dtype=torch.long, device=tensor.device)
            if self.score_by_area:
                area = inst.pred_boxes.area()
                inst.scores = area / (area + 1000.0)
            else:
                inst.scores = 0.9 - 0.1 * inst.pred_classes.float()
            n = len(inst)
            if self.with_masks:
                inst.pred_masks = torch.zeros(n, 1, 8, 8, device=tensor.device)
                inst.pred_masks[:, :, :, :4] = 1.0
            if self.with_keypoints:
                b = inst.pred_boxes.tensor
                corner = torch.stack([b[:, 0], b[:, 1], torch.ones(n, device=tensor.device)], dim=1)
                centre = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                      torch.full((n,), 0.5, device=tensor.device)], dim=1)
                inst.pred_keypoints = torch.stack([corner, centre], dim=1)
                inst.pred_keypoint_heatmaps = inst.pred_classes.float()[:, None, None, None].expand(n, 2, 4, 4).clone()
            results.append(inst)
        focus = None
        if with_focus:
            if self.focus_value is not None:
                shape = (tensor.shape[0], -(-tensor.shape[-2] // self.focus_stride), -(-tensor.shape[-1] // self.focus_stride))
                focus = torch.full(shape, self.focus_value, device=tensor.device)
            else:
                marked = (tensor[:, self.focus_channels] > 127.5).float().amax(dim=1, keepdim=True)
                focus = F.max_pool2d(marked, self.focus_stride, ceil_mode=True)[:, 0]
        return results, focus

    def inference(self, batched_inputs):
        """As a Detectron2 model's ``inference``: each input's "image" (C, H, W) in
        ``input_format`` (class = RGB channel), detections mapped to its "height" x "width" by
        ``detector_postprocess`` (as GeneralizedRCNN)."""
        from detectron2.modeling.postprocessing import detector_postprocess

        outputs = []
        for x in batched_inputs:
            image = x["image"]
            self.inputs.append(tuple(image.shape[-2:]))
            if self.input_format == "BGR":
                image = image.flip(0)
            images = ImageList(image[None].float(), [tuple(image.shape[-2:])])
            (inst,), _ = self.detect(images, with_focus=False)
            self.batches.pop()
            outputs.append({"instances": detector_postprocess(inst, x["height"], x["width"])})
        return outputs



def paint(image_hw, objects):
    """(3, H, W) float image, black, with each (channel, x0, y0, x1, y1) painted 255."""
    image = torch.zeros(3, *image_hw)
    for c, x0, y0, x1, y1 in objects:
        image[c, y0:y1, x0:x1] = 255.0
    return image



def coordinate_image(image_hw: Tuple[int, int], index: int) -> torch.Tensor:
    """(3, H, W) float: x + 0.5, y + 0.5 (the pixel's centre, original frame) and ``index``."""
    h, w = image_hw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs + 0.5, ys + 0.5, torch.full((h, w), float(index))])


def recover_interval(ramp: torch.Tensor) -> Tuple[int, int]:
    """The integer original-frame [start, end) of a view axis from its ramp of centre coordinates
    (length n >= 8): value(j) = start + (j + 0.5) * (end - start) / n at interior pixels j."""
    n = len(ramp)
    if n < 8:
        raise ValueError(f"a view side of {n} px is too short to read its coordinates")
    j1, j2 = n // 4, n - 1 - n // 4
    step = float(ramp[j2] - ramp[j1]) / (j2 - j1)  # original pixels per view pixel
    start = float(ramp[j1]) - (j1 + 0.5) * step
    end = start + n * step
    for value in (start, end):
        if abs(value - round(value)) > 0.05:
            raise AssertionError(f"view edge {value} read from the coordinate image is not an integer")
    return round(start), round(end)


class GroundTruthDetector:
    """Detects, in each view, every ground-truth box of its image that the view fully contains, as
    the box mapped into the view's frame, class = the box's index in its image, score 0.9; a zero
    FocusPixel map when asked. ``gt_boxes``: per image index, (G, 4) XYXY original-frame boxes.
    ``views`` records every (image index, view box, view (h, w)) seen."""

    def __init__(self, gt_boxes: Sequence[torch.Tensor], stride: int = 16):
        self.device = torch.device("cpu")
        self.input_channels = 3
        self.focus_stride = stride
        self.size_divisibility = 32
        self.gt_boxes = [b.float() for b in gt_boxes]
        self.views: List[Tuple[int, Tuple[int, int, int, int], Tuple[int, int]]] = []

    def normalize(self, images):
        return ImageList.from_tensors(list(images), self.size_divisibility)

    def detect(self, images, with_focus=True, **options):
        results = []
        for b, (h, w) in enumerate(images.image_sizes):
            view = images.tensor[b, :, :h, :w]
            x0, x1 = recover_interval(view[0, h // 2, :])
            y0, y1 = recover_interval(view[1, :, w // 2])
            index = int(round(float(view[2, h // 2, w // 2])))
            self.views.append((index, (x0, y0, x1, y1), (h, w)))
            gt = self.gt_boxes[index]
            inside = (gt[:, 0] >= x0) & (gt[:, 1] >= y0) & (gt[:, 2] <= x1) & (gt[:, 3] <= y1)
            idx = inside.nonzero().squeeze(1)
            sx, sy = w / (x1 - x0), h / (y1 - y0)  # as View.factors
            boxes = (gt[idx] - gt.new_tensor([x0, y0, x0, y0])) * gt.new_tensor([sx, sy, sx, sy])
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(boxes)
            inst.pred_classes = idx
            inst.scores = torch.full((len(idx),), 0.9)
            results.append(inst)
        focus = None
        if with_focus:
            hf, wf = (-(-s // self.focus_stride) for s in images.tensor.shape[-2:])
            focus = torch.zeros(len(images.image_sizes), hf, wf)
        return results, focus
