"""Datasets checked before training or evaluation: --register-coco jsons, users' own registrations,
NUM_CLASSES against the categories, and test sets without annotations."""
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.structures import BoxMode

from autofocus_d2.data import DatasetError, add_register_coco_argument, register_coco_datasets, validate_dataset
from autofocus_d2.data import dataset_checks
from autofocus_d2.model_zoo import get_config_file
import train_net

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")


def _dup_image_id(data, images):
    data["images"][1]["id"] = data["images"][0]["id"]


def _dup_annotation_id(data, images):
    data["annotations"][5]["id"] = data["annotations"][4]["id"]


def _missing_image(data, images):
    os.remove(images / data["images"][2]["file_name"])


def _unreadable_image(data, images):
    (images / data["images"][3]["file_name"]).write_text("not an image")


def _wrong_size(data, images):
    data["images"][0]["width"] += 10


def _unknown_category(data, images):
    data["annotations"][0]["category_id"] = 99
    data["annotations"][7]["category_id"] = 0


def _unknown_image(data, images):
    data["annotations"][3]["image_id"] = 999


def _results_list(data, images):
    return [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}] * 3


def _captions(data, images):
    data["annotations"] = [{"id": 1, "image_id": 1, "caption": "shapes"}]


@pytest.mark.parametrize("edit, expected", [
    (_dup_image_id, r"1 duplicate image ids: 1 \(x2\)"),
    (_dup_annotation_id, r"1 duplicate annotation ids: 5 \(x2\)"),
    (_missing_image, r"1 images listed but missing: .*000003\.jpg"),
    (_unreadable_image, r"1 images unreadable: .*000004\.jpg \(UnidentifiedImageError"),
    (_wrong_size, r"1 images whose width/height disagree with the file: .*000001\.jpg "
                  r"\(listed 841x731, file 831x731\)"),
    (_unknown_category, r"2 annotations with a category id that is not in 'categories': "
                        r"annotation 1: category_id 99, annotation 8: category_id 0"),
    (_unknown_image, r"1 annotations of an image id that is not in 'images': annotation 4: image_id 999"),
    (_results_list, r"is a COCO results file \(a list of 3 detections"),
    (_captions, r"is COCO captions json, not instances"),
])
def test_a_bad_coco_json_is_refused_at_registration(edited_coco, request, edit, expected):
    json_file, image_dir = edited_coco(edit)
    name = f"bad_{request.node.callspec.id}"
    with pytest.raises(DatasetError, match=expected):
        register_coco_datasets([[name, json_file, image_dir]])
    assert name not in DatasetCatalog.list()


def test_many_offenders_are_counted_and_the_first_five_listed(edited_coco):
    def edit(data, images):
        for a in data["annotations"][:12]:
            a["category_id"] = 42

    json_file, image_dir = edited_coco(edit)
    with pytest.raises(DatasetError) as e:
        register_coco_datasets([["many_bad", json_file, image_dir]])
    line = [ln for ln in str(e.value).splitlines() if "category id" in ln][0]
    assert line.strip().startswith("12 annotations") and line.endswith("... (7 more)")
    assert line.count("category_id 42") == 5


def test_boxes_outside_are_clipped_and_empty_boxes_dropped_with_the_counts_logged(edited_coco, logged):
    total = []

    def edit(data, images):
        img = data["images"][0]  # 831 x 731
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        anns[0]["bbox"] = [800, -10, 100, 50]       # reaches right and top: clipped to [800, 0, 31, 40]
        anns[1]["bbox"] = [10, 10, 0, 20]           # zero width: dropped
        anns[2]["bbox"] = [10, 10, 20, -5]          # negative height: dropped
        anns[3]["bbox"] = [900, 100, 30, 30]        # wholly outside: empty after clipping, dropped
        total.append(len(data["annotations"]))

    json_file, image_dir = edited_coco(edit)
    messages = logged(dataset_checks.__name__)
    register_coco_datasets([["clipped_tiny", json_file, image_dir]])
    dicts = DatasetCatalog.get("clipped_tiny")
    assert sum(len(d["annotations"]) for d in dicts) == total[0] - 3
    first = dicts[[d["image_id"] for d in dicts].index(1)]
    assert first["annotations"][0]["bbox"] == [800, 0, 31, 40]
    assert first["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert "clipped_tiny: clipped 1 boxes reaching outside their image; dropped 3 boxes" in messages[0]


def test_registration_fills_thing_classes_before_loading(tiny_coco):
    register_coco_datasets([["classes_tiny", *tiny_coco]])
    meta = MetadataCatalog.get("classes_tiny")
    assert meta.thing_classes == ["circle", "square", "triangle", "cross", "ring", "diamond"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
    DatasetCatalog.get("classes_tiny")  # load_coco_json sets the same values again: no conflict


def test_validate_dataset_on_a_users_own_registration(tiny_coco, tmp_path):
    """A registration by hand (DatasetCatalog.register of dataset dicts) checked by one call."""
    good = DatasetCatalog.get("autofocus_synth_tiny")
    bad = [dict(d) for d in good]
    bad[1]["image_id"] = bad[0]["image_id"]
    bad[2]["file_name"] = str(tmp_path / "gone.jpg")
    bad[3]["height"] = bad[3]["height"] + 1
    bad[4]["annotations"] = [dict(bad[4]["annotations"][0], category_id=6)]
    DatasetCatalog.register("own_bad", lambda: bad)
    MetadataCatalog.get("own_bad").thing_classes = MetadataCatalog.get("autofocus_synth_tiny").thing_classes
    with pytest.raises(DatasetError) as e:
        validate_dataset("own_bad")
    msg = str(e.value)
    assert "Dataset 'own_bad' cannot be used" in msg
    assert "1 duplicate image ids" in msg and "1 images listed but missing" in msg and "gone.jpg" in msg
    assert "1 images whose width/height disagree" in msg
    assert "1 annotations with a category id outside [0, 6)" in msg
    assert len(validate_dataset("autofocus_synth_tiny")) == 6


def _main(argv):
    parser = add_register_coco_argument(default_argument_parser())
    return train_net.main(parser.parse_args(["--config-file", CONFIG, *argv]))


@pytest.mark.parametrize("eval_only", [False, True])
def test_num_classes_that_differs_from_the_categories_names_the_key_before_training(tmp_path, eval_only):
    argv = ["--eval-only"] if eval_only else []
    with pytest.raises(DatasetError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 3 but dataset "
                                           r"'autofocus_synth_tiny' has 6 categories .*: set "
                                           r"MODEL.ROI_HEADS.NUM_CLASSES 6"):
        _main([*argv, "MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATASETS.TRAIN", '("autofocus_synth_tiny",)',
               "DATASETS.TEST", '("autofocus_synth_tiny",)', "OUTPUT_DIR", str(tmp_path)])
    assert not (tmp_path / "last_checkpoint").exists()


def test_retinanet_class_count_key_is_named(repo_root):
    from autofocus_d2.config import load_autofocus_config

    cfg = load_autofocus_config(os.path.join(repo_root, "configs/Synthetic/autofocus_compact_retinanet.yaml"),
                                ["MODEL.RETINANET.NUM_CLASSES", "80"])
    with pytest.raises(DatasetError, match="MODEL.RETINANET.NUM_CLASSES is 80 but dataset"):
        dataset_checks.check_num_classes(*reversed(dataset_checks.num_classes_key(cfg)), ["autofocus_synth_tiny"])


def test_evaluating_a_dataset_without_annotations_is_an_error(edited_coco, tmp_path):
    def edit(data, images):
        data["annotations"] = []

    json_file, image_dir = edited_coco(edit)
    with pytest.raises(DatasetError, match=r"'no_gt' \(6 images\) has no annotations: it cannot be evaluated"):
        _main(["--eval-only", "--register-coco", "no_gt", json_file, image_dir,
               "DATASETS.TEST", '("no_gt",)', "OUTPUT_DIR", str(tmp_path / "out")])
