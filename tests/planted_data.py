"""Planted COCO data for the AP and paired-bootstrap tests (tests/conftest.py hands these
builders out as the ``planted_coco`` and ``noisy_detections`` fixtures): ground truth with a
perfect detection list (:func:`make_planted_coco`), and detections made from it as a real
detector's would look (:func:`make_noisy_detections`)."""
import contextlib
import io

import numpy as np


def make_planted_coco(num_images, num_classes, seed=0, crowd=False, empty_images=0):
    """
    Planted COCO ground truth: ``(coco_gt, perfect)``.

    Image i (id 100 + i, 200 x 300) holds 0-3 objects of every class (random XYWH boxes of 8-60 px;
    at least one object per class over the dataset), the last ``empty_images`` images none; with
    ``crowd`` every fifth image has one extra crowd region. ``perfect`` is a COCO results list with
    one detection per non-crowd object on its exact box, distinct scores in (0.5, 1).
    """
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    images, annotations, perfect = [], [], []
    for i in range(num_images):
        image_id = 100 + i
        images.append({"id": image_id, "width": 300, "height": 200, "file_name": f"{image_id}.png"})
        if i >= num_images - empty_images:
            continue
        for c in range(num_classes):
            count = int(rng.integers(0, 4)) if i else 1  # image 0: every class once
            for _ in range(count):
                w, h = rng.uniform(8, 60, size=2)
                x, y = rng.uniform(0, 300 - w), rng.uniform(0, 200 - h)
                box = [float(x), float(y), float(w), float(h)]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
                perfect.append({"image_id": image_id, "category_id": c + 1, "bbox": list(box),
                                "score": float(rng.uniform(0.5, 1.0))})
        if crowd and i % 5 == 0:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [0.0, 0.0, 120.0, 90.0], "area": 10800.0, "iscrowd": 1})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, perfect


def make_noisy_detections(perfect, seed=0, score_decimals=None, extra_per_image=3, extra_classes=None):
    """
    A COCO results list made from ``perfect`` as a real detector's would look: boxes jittered by
    up to 30% of their size, a tenth of the objects missed, ``extra_per_image`` false positives per
    image (random boxes, of random classes or of ``extra_classes``), random scores (rounded to
    ``score_decimals`` to make ties).
    """
    rng = np.random.default_rng(seed)
    classes = sorted(extra_classes or {d["category_id"] for d in perfect})
    out = []

    def score():
        s = float(rng.uniform(0.05, 1.0))
        return round(s, score_decimals) if score_decimals is not None else s

    for d in perfect:
        if rng.uniform() < 0.1:
            continue
        x, y, w, h = d["bbox"]
        jx, jy, jw, jh = rng.uniform(-0.3, 0.3, size=4)
        out.append({"image_id": d["image_id"], "category_id": d["category_id"],
                    "bbox": [x + jx * w, y + jy * h, w * (1 + jw), h * (1 + jh)], "score": score()})
    for image_id in sorted({d["image_id"] for d in perfect}):
        for _ in range(extra_per_image):
            w, h = rng.uniform(8, 60, size=2)
            out.append({"image_id": image_id, "category_id": int(rng.choice(classes)),
                        "bbox": [float(rng.uniform(0, 240)), float(rng.uniform(0, 140)), float(w), float(h)],
                        "score": score()})
    return out
