"""A model-free stand-in detector for pipeline tests.

Images carry one object per colour channel (value 255 on a black background). The stand-in
"detects" the object of channel c as the bounding box of the pixels of that channel above 127.5
in the view it is given (class c, score 0.9 - 0.1 * c), and its FocusPixel map is 1 in every
stride cell that holds a pixel of a channel listed in ``focus_channels``. So whatever the pipeline
crops and resizes, the detections it gets back show where the objects really landed.

With ``with_masks`` it also returns Detectron2-style box-relative ``pred_masks`` (N, 1, 8, 8):
the left half of each box (columns 0-3) is 1, the right half 0. With ``with_keypoints`` it returns
``pred_keypoints`` (N, 2, 3) in the view frame: the box's top-left corner (score 1.0) and its
centre (score 0.5), and box-relative ``pred_keypoint_heatmaps`` (N, 2, 4, 4) filled with the class.
With ``separate`` it detects one box per separated block of a channel (blocks split by empty
columns, then by empty rows), as a local detector would: what chip canvases need, where several
chips share one pass.
"""
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances


class PlantedDetector:
    def __init__(self, focus_channels=(1, 2), stride=16, focus_value=None, with_masks=False, with_keypoints=False,
                 separate=False):
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


@pytest.fixture
def planted_detector():
    return PlantedDetector


def paint(image_hw, objects):
    """(3, H, W) float image, black, with each (channel, x0, y0, x1, y1) painted 255."""
    image = torch.zeros(3, *image_hw)
    for c, x0, y0, x1, y1 in objects:
        image[c, y0:y1, x0:x1] = 255.0
    return image


@pytest.fixture
def paint_image():
    return paint
