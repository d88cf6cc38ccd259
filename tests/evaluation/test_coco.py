"""COCO results of one image's predictions carry the dataset's category ids, as COCOEvaluator's."""
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from autofocus_d2.evaluation import coco_results, load_coco_ground_truth


def _instances(classes):
    inst = Instances((40, 60))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 5.0, 30.0, 15.0]] * len(classes)))
    inst.scores = torch.linspace(0.9, 0.5, len(classes))
    inst.pred_classes = torch.tensor(classes)
    return inst


def test_results_use_the_dataset_ids_of_the_contiguous_classes():
    name = "h15_coco_results_mapped"
    MetadataCatalog.get(name).set(thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={5: 0, 9: 1})
    try:
        out = coco_results(_instances([1, 0]), 7, name)
        assert [(r["image_id"], r["category_id"]) for r in out] == [(7, 9), (7, 5)]
        assert out[0]["bbox"] == pytest.approx([10.0, 5.0, 20.0, 10.0]) and out[0]["score"] == pytest.approx(0.9)
        with pytest.raises(ValueError, match="predicted class 2"):
            coco_results(_instances([2]), 7, name)
        with pytest.raises(KeyError, match="no json_file"):
            load_coco_ground_truth(name)
    finally:
        MetadataCatalog.remove(name)
    plain = "h15_coco_results_plain"  # no mapping: the contiguous ids are the dataset's
    MetadataCatalog.get(plain).set(thing_classes=["a", "b"])
    try:
        assert [r["category_id"] for r in coco_results(_instances([1]), 3, plain)] == [1]
    finally:
        MetadataCatalog.remove(plain)
