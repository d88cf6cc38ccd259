"""Paired bootstrap over images of the difference in COCO AP between two detection sets.

Two methods evaluated on the same images differ in AP by an amount that depends on which images
were drawn; the spread of that difference over resampled image sets is what a 95% interval states.
Both methods see the SAME resample (a paired bootstrap), so image difficulty cancels out.

Cost: ``COCOeval.evaluate()`` (the per-image matching of detections to ground truth) runs once per
method. A resample is a multiset of images (an image drawn twice counts twice), which only changes
how the per-image matches are accumulated; :class:`PerImageMatches` re-accumulates them with each
image's multiplicity as a weight, replicating ``COCOeval.accumulate`` (area range ``all``, the
largest ``maxDets``) and ``COCOeval.summarize``'s AP (mean precision over IoU 0.50:0.95, the 101
recall thresholds and the categories with ground truth). Written by hand because pycocotools
accumulates a fixed image set only.

On the identity resample (every image once) the figure is exactly ``COCOeval.stats[0]``. With
duplicated images it equals COCOeval on a dataset in which those images are physically duplicated,
up to the order of detections of equal score (pycocotools' merge-sort order, here: each score once,
weighted), which only matters for exact score ties between a true and a false positive.
"""
import contextlib
import copy
import io
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["PerImageMatches", "bootstrap_counts", "difference_interval", "paired_ap_difference"]

# Samples x true positives (all IoU thresholds) held at once while re-accumulating (float64 cells).
_CHUNK_CELLS = 4_000_000


def bootstrap_counts(num_images: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """(num_samples, num_images) int array: how often each image is drawn in each resample of
    ``num_images`` images drawn with replacement (every row sums to ``num_images``)."""
    if num_images <= 0 or num_samples <= 0:
        raise ValueError(f"bootstrap needs images and samples, got num_images={num_images}, "
                         f"num_samples={num_samples}")
    draws = np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))
    counts = np.zeros((num_samples, num_images), dtype=np.int64)
    np.add.at(counts, (np.arange(num_samples)[:, None], draws), 1)
    return counts


def _load_results(coco_gt: COCO, dets: Sequence[Dict[str, Any]]) -> COCO:
    """``coco_gt.loadRes`` on shallow copies of ``dets`` (loadRes writes ids and areas into the
    dicts it is given); an empty list gives an empty result set (loadRes cannot)."""
    gt_images = set(coco_gt.getImgIds())
    for i, d in enumerate(dets):
        missing = [k for k in ("image_id", "category_id", "score") if k not in d]
        if missing:
            raise ValueError(f"detection {i} lacks {missing}: {d}")
        if d["image_id"] not in gt_images:
            raise ValueError(f"detection {i} is on image_id {d['image_id']!r}, which the ground truth lacks")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if dets:
            return coco_gt.loadRes([dict(d) for d in dets])
        res = COCO()
        res.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])), "annotations": []}
        res.createIndex()
    return res


class PerImageMatches:
    """
    One detection set matched to the ground truth image by image (``COCOeval.evaluate()``), ready
    to be accumulated into AP for any multiset of those images.

    How: in COCOeval's score order, the interpolated precision at recall threshold r is the
    largest precision of the points with recall >= r, and that largest precision is always reached
    at a true positive (a false positive only adds to the denominator). So per category and IoU
    threshold it is enough to know, at each true positive's position, how many true and false
    positives of each image precede it (``(G, I)`` count tables); the totals of an image multiset
    are then one product with its multiplicities. All counts are integers: the precisions and
    recalls are the very floats COCOeval computes.

    Attributes:
        image_ids: the evaluated image ids, sorted (COCOeval's order); the columns of ``counts``.
        category_ids: COCOeval's category ids.
    """

    def __init__(self, coco_gt: COCO, dets: Sequence[Dict[str, Any]], *, iou_type: str = "bbox",
                 image_ids: Optional[Sequence[int]] = None):
        coco_dt = _load_results(coco_gt, dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
            if unknown:
                raise ValueError(f"image_ids {unknown[:5]} are not in the ground truth")
            ev.params.imgIds = sorted(set(image_ids))
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        p = ev.params
        self.image_ids: List[int] = list(p.imgIds)
        self.category_ids: List[int] = list(p.catIds)
        self.rec_thrs = np.asarray(p.recThrs)
        self.num_iou = len(p.iouThrs)
        num_images, num_areas = len(self.image_ids), len(p.areaRng)
        area, max_det = p.areaRngLbl.index("all"), p.maxDets[-1]
        self._per_category = []
        for k in range(len(self.category_ids)):
            first = (k * num_areas + area) * num_images
            entries = ev.evalImgs[first:first + num_images]
            present = np.array([e is not None for e in entries], dtype=float)
            num_gt = np.array([0 if e is None else np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                               for e in entries], dtype=float)
            self._per_category.append((present, num_gt, self._tp_tables(entries, max_det, num_images)))

    def _tp_tables(self, entries, max_det: int, num_images: int) -> List[np.ndarray]:
        """Per IoU threshold, a (2, G, I) table: [0] true positives of image i up to and including
        the g-th true positive (in COCOeval's order of the category's detections), [1] false
        positives of image i before it."""
        used = [(i, e) for i, e in enumerate(entries) if e is not None and len(e["dtScores"][0:max_det])]
        if not used:
            return [np.zeros((2, 0, num_images)) for _ in range(self.num_iou)]
        scores = np.concatenate([np.asarray(e["dtScores"][0:max_det], dtype=float) for _, e in used])
        image_of = np.concatenate([np.full(len(e["dtScores"][0:max_det]), i) for i, e in used])
        matched = np.concatenate([e["dtMatches"][:, 0:max_det] for _, e in used], axis=1)
        ignored = np.concatenate([e["dtIgnore"][:, 0:max_det] for _, e in used], axis=1)
        order = np.argsort(-scores, kind="mergesort")  # pycocotools' order
        image_of, matched, ignored = image_of[order], matched[:, order] != 0, ignored[:, order] != 0
        one_hot = np.zeros((len(image_of), num_images))
        one_hot[np.arange(len(image_of)), image_of] = 1.0
        tables = []
        for t in range(self.num_iou):
            tp = matched[t] & ~ignored[t]
            fp = ~matched[t] & ~ignored[t]
            tp_cum = np.cumsum(one_hot * tp[:, None], axis=0)[tp]
            fp_cum = np.cumsum(one_hot * fp[:, None], axis=0)[tp]
            tables.append(np.stack([tp_cum, fp_cum]))
        return tables

    def _category_precision(self, counts: np.ndarray, npig: np.ndarray, tables: List[np.ndarray]) -> np.ndarray:
        """(S, T, R) interpolated precision of one category for the multisets ``counts`` (S, I)
        with ``npig`` (S,) non-ignored ground-truth objects each (all > 0)."""
        S, R = len(counts), len(self.rec_thrs)
        # The first true-positive count whose recall reaches each threshold, per distinct npig:
        # recall = tp / npig exactly as COCOeval divides; npig + 1 where it is never reached.
        values, inverse = np.unique(npig, return_inverse=True)
        needed = np.stack([np.searchsorted(np.arange(int(n) + 1) / n, self.rec_thrs, side="left") for n in values])
        needed = needed[inverse.reshape(-1)].astype(float)  # (S, R)
        out = np.zeros((S, self.num_iou, R))
        for t, table in enumerate(tables):
            G = table.shape[1]
            if G == 0:
                continue
            tp = counts @ table[0].T  # (S, G) integer-valued floats, non-decreasing along G
            fp = counts @ table[1].T
            pr = tp / (fp + tp + np.spacing(1))
            best = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # best precision from g on
            # First g with tp >= needed, all rows in one search: row s's keys are shifted by s * span.
            span = float(tp.max() + needed.max() + 2)
            shift = np.arange(S, dtype=float)[:, None] * span
            pos = np.searchsorted((tp + shift).ravel(), (needed + shift).ravel(), side="left").reshape(S, R)
            local = pos - np.arange(S)[:, None] * G
            inside = local < G
            rows = np.broadcast_to(np.arange(S)[:, None], (S, R))
            out[:, t, :][inside] = best[rows[inside], local[inside]]
        return out

    def _precision(self, counts: np.ndarray) -> np.ndarray:
        """(S, T, R, K) interpolated precision of the S image multisets ``counts`` (S, I); -1
        where a category has no entry or no non-ignored ground truth (COCOeval's convention)."""
        S, R = counts.shape[0], len(self.rec_thrs)
        out = -np.ones((S, self.num_iou, R, len(self._per_category)))
        cells = max(1, sum(tb.shape[1] for _, _, tables in self._per_category for tb in tables))
        chunk = max(1, _CHUNK_CELLS // cells)
        for k, (present, num_gt, tables) in enumerate(self._per_category):
            npig = counts @ num_gt
            valid = np.flatnonzero(((counts @ present) > 0) & (npig > 0))
            for start in range(0, len(valid), chunk):
                rows = valid[start:start + chunk]
                out[rows, :, :, k] = self._category_precision(counts[rows], npig[rows], tables)
        return out

    def ap(self, counts: Optional[np.ndarray] = None) -> np.ndarray:
        """AP in points (0-100) of each image multiset: ``counts`` (S, I) multiplicities of
        ``image_ids`` (default: every image once, S = 1). NaN where no category has ground truth."""
        if counts is None:
            counts = np.ones((1, len(self.image_ids)))
        counts = np.asarray(counts, dtype=float)
        if counts.ndim != 2 or counts.shape[1] != len(self.image_ids):
            raise ValueError(f"counts must be (samples, {len(self.image_ids)}), got {counts.shape}")
        precision = self._precision(counts)
        out = np.full(len(counts), np.nan)
        for s in range(len(counts)):
            p = precision[s]
            if np.any(p > -1):
                out[s] = 100.0 * np.mean(p[p > -1])  # COCOeval.summarize's order of summation
        return out


def difference_interval(samples_a: np.ndarray, samples_b: np.ndarray) -> List[float]:
    """[low, high]: the 2.5 and 97.5 percentiles of ``samples_a - samples_b`` (APs of the same
    resamples, e.g. :meth:`PerImageMatches.ap` of one ``counts``), resamples where either is NaN
    (no ground truth drawn) left out; [NaN, NaN] when none is left."""
    diffs = np.asarray(samples_a, dtype=float) - np.asarray(samples_b, dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    if not len(diffs):
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(diffs, [2.5, 97.5])]


def paired_ap_difference(
    coco_gt: COCO,
    dets_a: Sequence[Dict[str, Any]],
    dets_b: Sequence[Dict[str, Any]],
    *,
    iou_type: str = "bbox",
    num_samples: int = 1000,
    seed: int = 0,
    image_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """
    COCO AP of two detection sets on the same images and the paired bootstrap 95% interval of
    their difference.

    Args:
        coco_gt: the ground truth (pycocotools COCO).
        dets_a, dets_b: COCO results lists (dicts with ``image_id``, ``category_id``, ``bbox``
            XYWH in original pixels, ``score``; ``segmentation`` for ``iou_type="segm"``). Not modified.
        iou_type: "bbox" or "segm".
        num_samples: bootstrap resamples; each draws ``num_images`` images with replacement, the
            same draw for both sets (:func:`bootstrap_counts`).
        seed: the draws' seed (same seed, same interval).
        image_ids: the images evaluated (default every image of ``coco_gt``); detections on other
            images are ignored, as COCOeval does.

    Returns:
        ``ap_a``, ``ap_b``: AP in points (0-100, as Detectron2's COCOEvaluator) on the images;
        ``diff`` = ap_a - ap_b; ``ci95``: [low, high], the 2.5 and 97.5 percentiles of the
        resampled differences (resamples without any ground truth left out); ``num_images``.
    """
    a = PerImageMatches(coco_gt, dets_a, iou_type=iou_type, image_ids=image_ids)
    b = PerImageMatches(coco_gt, dets_b, iou_type=iou_type, image_ids=image_ids)
    num_images = len(a.image_ids)
    ap_a, ap_b = float(a.ap()[0]), float(b.ap()[0])
    counts = bootstrap_counts(num_images, num_samples, seed)
    ci = difference_interval(a.ap(counts), b.ap(counts))
    return {"ap_a": ap_a, "ap_b": ap_b, "diff": ap_a - ap_b, "ci95": ci, "num_images": num_images}
