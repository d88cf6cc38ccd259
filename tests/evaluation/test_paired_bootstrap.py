"""The paired bootstrap of COCO AP differences: its accumulation equals pycocotools' exactly, image
multiplicities count as physically duplicated images, and planted cases give their known answers."""
import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autofocus_d2.evaluation.paired_bootstrap import PerImageMatches, bootstrap_counts, paired_ap_difference


def cocoeval_ap(coco_gt, dets, image_ids=None):
    """pycocotools' own AP (stats[0]) in points."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * ev.stats[0]


@pytest.mark.parametrize("seed,decimals,extra", [(0, None, 3), (1, 1, 5), (2, 2, 120)])
def test_identity_resample_equals_cocoeval_exactly(planted_coco, noisy_detections, seed, decimals, extra):
    # Score ties (1-2 decimals), crowd regions, empty images and, with extra=120 false positives of
    # class 1, more than COCOeval's 100 detections per image and class.
    coco, perfect = planted_coco(12, 6, seed=seed, crowd=True, empty_images=2)
    dets = noisy_detections(perfect, seed=seed, score_decimals=decimals, extra_per_image=extra,
                            extra_classes=[1] if extra > 100 else None)
    expected = cocoeval_ap(coco, dets)
    assert 2.0 < expected < 95.0  # a real mix of hits and misses
    assert PerImageMatches(coco, dets).ap()[0] == expected
    subset = coco.getImgIds()[3:9]
    assert PerImageMatches(coco, dets, image_ids=subset).ap()[0] == cocoeval_ap(coco, dets, subset)


def duplicated(coco, dets, image_ids, counts):
    """The dataset and detections with image image_ids[i] present counts[i] times (new ids)."""
    images, annotations, out = [], [], []
    for image_id, c in zip(image_ids, counts):
        for copy in range(int(c)):
            new_id = image_id * 1000 + copy
            images.append(dict(coco.imgs[image_id], id=new_id))
            for a in coco.imgToAnns[image_id]:
                annotations.append(dict(a, id=len(annotations) + 1, image_id=new_id))
            out += [dict(d, image_id=new_id) for d in dets if d["image_id"] == image_id]
    dup = COCO()
    dup.dataset = {"images": images, "annotations": annotations, "categories": coco.dataset["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        dup.createIndex()
    return dup, out


def test_an_image_drawn_twice_counts_as_two_images(planted_coco, noisy_detections):
    coco, perfect = planted_coco(10, 4, seed=3, crowd=True)
    dets = noisy_detections(perfect, seed=3)  # continuous scores: no ties
    matches = PerImageMatches(coco, dets)
    counts = bootstrap_counts(10, 4, seed=5)
    assert (counts.sum(axis=1) == 10).all() and (counts == 0).any() and (counts >= 2).any()
    aps = matches.ap(counts)
    for c, ap in zip(counts, aps):
        dup, dup_dets = duplicated(coco, dets, matches.image_ids, c)
        assert ap == pytest.approx(cocoeval_ap(dup, dup_dets), abs=1e-12)


def test_identical_methods_differ_by_exactly_zero(planted_coco, noisy_detections):
    coco, perfect = planted_coco(40, 6)
    dets = noisy_detections(perfect)
    out = paired_ap_difference(coco, dets, [dict(d) for d in dets], num_samples=200)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["num_images"] == 40
    assert out["ap_a"] == out["ap_b"] == cocoeval_ap(coco, dets)


def test_perfect_against_no_detections_is_exactly_100(planted_coco):
    coco, perfect = planted_coco(40, 6)
    out = paired_ap_difference(coco, perfect, [], num_samples=200)
    assert (out["ap_a"], out["ap_b"], out["diff"], out["ci95"]) == (100.0, 0.0, 100.0, [100.0, 100.0])


def test_half_of_the_images_without_detections_gives_the_known_interval(planted_coco):
    """B = the perfect detections on even images only. In a resample where class k has n objects,
    n_even of them on even images, B is all true positives up to recall n_even / n: its precision
    is 1 at the recall thresholds <= n_even / n, 0 above (0 everywhere when n_even = 0); A's AP is
    100. So each resample's difference is known in closed form."""
    num_images, num_classes, samples = 40, 6, 300
    coco, perfect = planted_coco(num_images, num_classes, seed=7)
    ids = sorted(coco.getImgIds())
    even = {image_id for n, image_id in enumerate(ids) if n % 2 == 0}
    half = [d for d in perfect if d["image_id"] in even]
    out = paired_ap_difference(coco, perfect, half, num_samples=samples, seed=11)

    objects = np.array([[len(coco.getAnnIds(imgIds=[i], catIds=[c + 1])) for c in range(num_classes)] for i in ids])
    on_even = objects * np.array([[i in even] for i in ids])
    thresholds = np.linspace(0.0, 1.0, 101)

    def known_diff(counts):
        n, n_even = counts @ objects, counts @ on_even
        per_class = [0.0 if ne == 0 else 100.0 * np.sum(thresholds <= float(ne) / float(nn)) / 101
                     for nn, ne in zip(n, n_even) if nn > 0]
        return 100.0 - np.mean(per_class)

    assert out["ap_a"] == 100.0
    assert out["diff"] == pytest.approx(known_diff(np.ones(num_images, dtype=int)), abs=1e-9)
    expected = [known_diff(c) for c in bootstrap_counts(num_images, samples, seed=11)]
    assert out["ci95"] == pytest.approx(list(np.percentile(expected, [2.5, 97.5])), abs=1e-9)
    low, high = out["ci95"]
    assert low < out["diff"] < high and high - low > 5.0  # 40 images: a wide interval


def test_the_interval_holds_the_point_estimate_and_follows_the_seed(planted_coco, noisy_detections):
    coco, perfect = planted_coco(40, 6, seed=1, crowd=True)
    a = noisy_detections(perfect, seed=1)
    # b: a's detections except on 10 of the 40 images, where another detector's noise replaces them.
    other = set(sorted(coco.getImgIds())[:10])
    b = [d for d in a if d["image_id"] not in other]
    b += [d for d in noisy_detections(perfect, seed=2) if d["image_id"] in other]
    first = paired_ap_difference(coco, a, b, num_samples=300, seed=4)
    assert first["diff"] == pytest.approx(cocoeval_ap(coco, a) - cocoeval_ap(coco, b), abs=1e-12)
    low, high = first["ci95"]
    assert low <= first["diff"] <= high and low < high
    assert paired_ap_difference(coco, a, b, num_samples=300, seed=4) == first
    assert paired_ap_difference(coco, a, b, num_samples=300, seed=5)["ci95"] != first["ci95"]
    # Pairing: the methods agree on 30 images, so their difference varies less than either AP.
    counts = bootstrap_counts(40, 300, seed=4)
    spread_a = np.percentile(PerImageMatches(coco, a).ap(counts), [2.5, 97.5])
    assert high - low < spread_a[1] - spread_a[0]


def test_bad_inputs_name_what_is_wrong(planted_coco):
    coco, perfect = planted_coco(4, 2)
    with pytest.raises(ValueError, match="image_id 999"):
        paired_ap_difference(coco, perfect + [dict(perfect[0], image_id=999)], perfect)
    with pytest.raises(ValueError, match="lacks \\['score'\\]"):
        paired_ap_difference(coco, [{"image_id": 100, "category_id": 1, "bbox": [0, 0, 5, 5]}], perfect)
    with pytest.raises(ValueError, match="not in the ground truth"):
        paired_ap_difference(coco, perfect, perfect, image_ids=[100, 5])
    with pytest.raises(ValueError, match="counts must be"):
        PerImageMatches(coco, perfect).ap(np.ones((2, 3), dtype=int))
    untouched = [dict(d) for d in perfect]
    paired_ap_difference(coco, perfect, perfect, num_samples=10)
    assert perfect == untouched  # loadRes writes into the dicts it gets: copies are given
