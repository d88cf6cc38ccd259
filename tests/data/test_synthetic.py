import hashlib
import json
import math
import os
import shutil
import uuid

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from autofocus_d2.data import synthetic
from autofocus_d2.data.synthetic import (
    SYNTHETIC_SPLITS,
    dataset_statistics,
    default_data_root,
    ensure_split,
    generate_synthetic_split,
    register_synthetic_datasets,
)
from autofocus_d2.data.synthetic_render import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_COLOURS,
    draw_object,
    render_image,
)
from autofocus_d2.data.synthetic_shapes import shape_polygons


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> str:
    return generate_synthetic_split(str(tmp_path_factory.mktemp("synth_a")), "tiny")


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _image_bytes(json_path: str) -> list:
    image_dir = os.path.join(os.path.dirname(json_path), "images")
    out = []
    for im in _load(json_path)["images"]:
        with open(os.path.join(image_dir, im["file_name"]), "rb") as f:
            out.append(f.read())
    return out


def test_layout_and_reuse(tiny_json):
    root = os.path.dirname(os.path.dirname(tiny_json))
    assert tiny_json == os.path.join(root, "tiny", "instances_tiny.json")
    assert sorted(os.listdir(root)) == ["tiny"]  # no temporary folder left behind
    mtime = os.path.getmtime(tiny_json)
    assert generate_synthetic_split(root, "tiny") == tiny_json
    assert os.path.getmtime(tiny_json) == mtime  # reused, not regenerated


def test_deterministic(tiny_json, tmp_path):
    again = generate_synthetic_split(str(tmp_path), "tiny")
    with open(tiny_json, "rb") as f1, open(again, "rb") as f2:
        assert f1.read() == f2.read()
    assert _image_bytes(tiny_json) == _image_bytes(again)

    other_seed = SYNTHETIC_SPLITS["tiny"].seed + 1
    other = generate_synthetic_split(str(tmp_path), "tiny", seed=other_seed)
    assert os.path.dirname(other) != os.path.dirname(again)
    assert _load(other)["annotations"] != _load(tiny_json)["annotations"]
    assert _image_bytes(other)[0] != _image_bytes(tiny_json)[0]


def test_num_images_override_keeps_prefix(tiny_json, tmp_path):
    # Image i depends only on (seed, i): a shorter split is a prefix of the full one.
    short = generate_synthetic_split(str(tmp_path), "tiny", num_images=2)
    assert _load(short)["images"] == _load(tiny_json)["images"][:2]
    assert _image_bytes(short) == _image_bytes(tiny_json)[:2]


def test_coco_format(tiny_json):
    coco = COCO(tiny_json)
    assert len(coco.getImgIds()) == SYNTHETIC_SPLITS["tiny"].num_images
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CATEGORIES)
    image_dir = os.path.join(os.path.dirname(tiny_json), "images")
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        assert 600 <= info["width"] <= 900 and 600 <= info["height"] <= 900
        with Image.open(os.path.join(image_dir, info["file_name"])) as im:
            assert im.size == (info["width"], info["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert len(anns) >= 5
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= info["width"] and y + h <= info["height"]
            assert a["area"] == w * h and a["iscrowd"] == 0
            assert 1 <= a["category_id"] <= len(SYNTHETIC_CATEGORIES)


def test_objects_are_drawn_where_annotated(tiny_json):
    # Every shape but the ring covers its box centre with its category colour
    # (+-25 colour jitter, +-12 noise, JPEG).
    coco = _load(tiny_json)
    base = dict(enumerate(SYNTHETIC_COLOURS))
    images = {im["id"]: im for im in coco["images"]}
    image_dir = os.path.join(os.path.dirname(tiny_json), "images")
    pixels = {i: np.asarray(Image.open(os.path.join(image_dir, im["file_name"])).convert("RGB"))
              for i, im in images.items()}
    checked, matched = 0, 0
    for a in coco["annotations"]:
        category = a["category_id"] - 1
        if SYNTHETIC_CATEGORIES[category] == "ring":
            continue
        x, y, w, h = a["bbox"]
        cx, cy = int(x + w / 2), int(y + h / 2)
        patch = pixels[a["image_id"]][cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
        err = np.abs(np.median(patch, axis=0) - np.asarray(base[category])).max()
        checked += 1
        matched += int(err <= 50)
    assert checked > 30
    assert matched / checked >= 0.95


def test_statistics_targets(tiny_json):
    stats = dataset_statistics(tiny_json)
    assert stats["num_images"] == 6
    assert stats["num_instances"] == sum(stats["instances_per_category"].values())
    assert all(n > 0 for n in stats["instances_per_category"].values())
    pct = stats["sqrt_area_percentiles"]
    assert pct[0] < 16 and pct[100] > 100
    assert stats["small_share"] >= 0.5
    assert 0 < stats["small_pixel_coverage"] < 0.02
    assert stats["small_share"] + stats["medium_share"] + stats["large_share"] == pytest.approx(1)


def test_statistics_exact(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 50, "height": 20}],
        "annotations": [
            # two overlapping small boxes: union 100 + 100 - 25 = 175 pixels
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 20], "area": 800},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 100],
             "area": 10000},
        ],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    path = tmp_path / "x.json"
    path.write_text(json.dumps(coco))
    stats = dataset_statistics(str(path))
    assert stats["num_images"] == 2 and stats["num_instances"] == 4
    assert stats["instances_per_image"] == 2.0
    assert stats["small_share"] == 0.75 and stats["medium_share"] == 0.0
    assert stats["large_share"] == 0.25
    assert stats["small_pixel_coverage"] == pytest.approx((175 + 800) / (100 * 100 + 50 * 20))
    assert stats["sqrt_area_percentiles"][0] == 10.0
    assert stats["sqrt_area_percentiles"][100] == 100.0
    assert stats["instances_per_category"] == {"circle": 2, "square": 2}
    assert stats["width_range"] == (50, 100) and stats["height_range"] == (20, 100)


def test_registration(tiny_json, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    prefix = f"test_synth_{uuid.uuid4().hex[:8]}"
    root = os.path.dirname(os.path.dirname(tiny_json))
    names = register_synthetic_datasets(root, prefix=prefix)
    try:
        assert names == [f"{prefix}_{s}" for s in SYNTHETIC_SPLITS]
        assert register_synthetic_datasets(root, prefix=prefix) == names  # idempotent
        with pytest.raises(ValueError, match="already registered"):
            register_synthetic_datasets(str(tmp_path), prefix=prefix)

        name = f"{prefix}_tiny"
        meta = MetadataCatalog.get(name)
        assert meta.json_file == tiny_json
        assert meta.image_root == os.path.join(root, "tiny", "images")
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == list(SYNTHETIC_CATEGORIES)
        # The val split is not generated yet, but its metadata points at the right place.
        assert MetadataCatalog.get(f"{prefix}_val").json_file == os.path.join(
            root, "val", "instances_val.json")
        assert not os.path.exists(os.path.join(root, "val"))

        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 6
        num = len(SYNTHETIC_CATEGORIES)
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(num)}
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and d["annotations"]
            for a in d["annotations"]:
                assert a["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= a["category_id"] < num
    finally:
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_ensure_split_before_evaluator(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    prefix = f"test_synth_{uuid.uuid4().hex[:8]}"
    names = register_synthetic_datasets(str(tmp_path), prefix=prefix)
    try:
        name = f"{prefix}_tiny"
        assert not os.path.exists(MetadataCatalog.get(name).json_file)
        assert ensure_split(name) == MetadataCatalog.get(name).json_file
        COCOEvaluator(name, output_dir=str(tmp_path / "eval"))  # reads the json ensure_split wrote
        assert len(DatasetCatalog.get(name)) == 6
        with pytest.raises(ValueError, match="not a registered synthetic dataset"):
            ensure_split(f"{prefix}_missing")
    finally:
        for n in names + [f"{prefix}_missing"]:
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = render_image
    calls = []

    def failing(rng, spec):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rng, spec)

    monkeypatch.setattr(synthetic, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_split(str(tmp_path), "tiny")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(synthetic, "render_image", real)
    assert os.path.isfile(generate_synthetic_split(str(tmp_path), "tiny", num_images=1))


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "tiny").mkdir()
    with pytest.raises(RuntimeError, match="not a completed synthetic split"):
        generate_synthetic_split(str(tmp_path), "tiny")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'nope'.*'tiny'.*'train'.*'val'"):
        generate_synthetic_split(str(tmp_path), "nope")
    with pytest.raises(ValueError, match="num_images"):
        generate_synthetic_split(str(tmp_path), "tiny", num_images=0)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad_root = str(blocker / "sub")
    with pytest.raises(OSError, match=bad_root):
        generate_synthetic_split(bad_root, "tiny")


def test_default_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOFOCUS_DATA", raising=False)
    assert default_data_root() == os.path.join(str(tmp_path), "datasets", "autofocus_synth")
    monkeypatch.setenv("AUTOFOCUS_DATA", "elsewhere")
    assert default_data_root() == os.path.join(str(tmp_path), "elsewhere")


def test_layout_respects_sizes():
    # Placement never produces boxes overlapping more than 10% of the smaller one.
    spec = SYNTHETIC_SPLITS["train"]
    image, objects = render_image(np.random.default_rng(0), spec)
    boxes = [box for _, box in objects]
    assert len(boxes) >= 10 and all(x0 >= 0 and y0 >= 0 and x0 + w <= image.width and y0 + h <= image.height
                                    for x0, y0, w, h in boxes)
    b = np.asarray(boxes, dtype=np.float64)
    for i in range(len(b)):
        for j in range(i):
            iw = min(b[i, 0] + b[i, 2], b[j, 0] + b[j, 2]) - max(b[i, 0], b[j, 0])
            ih = min(b[i, 1] + b[i, 3], b[j, 1] + b[j, 3]) - max(b[i, 1], b[j, 1])
            inter = max(iw, 0) * max(ih, 0)
            assert inter <= 0.1 * min(b[i, 2] * b[i, 3], b[j, 2] * b[j, 3])
    sides = np.sqrt(b[:, 2] * b[:, 3])
    assert math.floor(sides.min()) >= 7 and sides.max() <= 400


# ------------------------------------------------------------------------------ instance masks
# Hashes of the "tiny" split of generator version 1 (boxes only), taken before masks were added:
# version 2 must render the same image bytes and boxes.
_V1_TINY_IMAGES_SHA256 = "ed3bea4dbbd8104406fdf8bb72c5502185a6df8078c82d026fabf11b389112b3"
_V1_TINY_BOXES_SHA256 = "929d765afdb6df2d097cb0ada8e118d3b99d392b594c262931c54a9577b1b090"


def _boxes_sha256(json_path):
    boxes = [[a["image_id"], a["category_id"], *a["bbox"]] for a in _load(json_path)["annotations"]]
    return hashlib.sha256(json.dumps(boxes).encode()).hexdigest()


def test_masks_leave_images_and_boxes_byte_identical(tiny_json):
    assert hashlib.sha256(b"".join(_image_bytes(tiny_json))).hexdigest() == _V1_TINY_IMAGES_SHA256
    assert _boxes_sha256(tiny_json) == _V1_TINY_BOXES_SHA256
    coco = COCO(tiny_json)
    for a in _load(tiny_json)["annotations"]:
        assert a["area"] == a["bbox"][2] * a["bbox"][3]  # box area, as before
        ys, xs = np.nonzero(coco.annToMask(a))
        x0, y0, w, h = a["bbox"]
        # The outline's rasterization stays inside the box and reaches (within 1 px) its sides.
        assert x0 <= xs.min() <= x0 + 1 and y0 <= ys.min() <= y0 + 1
        assert x0 + w - 2 <= xs.max() <= x0 + w - 1 and y0 + h - 2 <= ys.max() <= y0 + h - 1


@pytest.mark.parametrize("name", SYNTHETIC_CATEGORIES)
@pytest.mark.parametrize("wh", [(13, 17), (40, 30), (210, 160)])
def test_polygons_outline_the_drawn_shapes(name, wh):
    from PIL import ImageDraw
    from pycocotools import mask as mask_utils

    w, h = wh
    canvas = Image.new("RGB", (w + 20, h + 20))
    box = (10, 10, w, h)
    draw_object(ImageDraw.Draw(canvas), SYNTHETIC_CATEGORIES.index(name), box, (255, 255, 255))
    drawn = np.asarray(canvas)[:, :, 0] > 0
    polygons = shape_polygons(name, box)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h + 20, w + 20))
    outline = mask_utils.decode(rle).astype(bool)
    iou = (drawn & outline).sum() / (drawn | outline).sum()
    # PIL's and COCO's rasterizers differ by under half a pixel along slanted edges.
    assert iou >= 0.95, iou
    cy, cx = 10 + h // 2, 10 + w // 2
    if name == "ring" and min(w, h) >= 30:
        assert not drawn[cy, cx] and not outline[cy, cx]  # the hole is kept


def test_shape_polygon_errors():
    with pytest.raises(ValueError, match="'hexagon'"):
        shape_polygons("hexagon", (0, 0, 10, 10))
    with pytest.raises(ValueError, match="empty"):
        shape_polygons("circle", (0, 0, 0, 10))


def _as_version_1(split_dir, json_name):
    """Rewrite a split as generator version 1 left it: no polygons, marker version 1."""
    path = os.path.join(split_dir, json_name)
    coco = _load(path)
    for a in coco["annotations"]:
        del a["segmentation"]
    coco["info"]["version"] = 1
    with open(path, "w") as f:
        json.dump(coco, f)
    with open(os.path.join(split_dir, "_COMPLETE.json"), "w") as f:
        json.dump(coco["info"], f)
    return coco


def test_version_1_cache_gets_its_masks_in_place(tiny_json, tmp_path):
    split_dir = tmp_path / "tiny"
    shutil.copytree(os.path.dirname(tiny_json), split_dir)
    _as_version_1(str(split_dir), "instances_tiny.json")
    image_mtimes = sorted(os.path.getmtime(p) for p in (split_dir / "images").iterdir())
    path = generate_synthetic_split(str(tmp_path), "tiny")
    with open(path, "rb") as f1, open(tiny_json, "rb") as f2:
        assert f1.read() == f2.read()  # same json as a fresh version-2 split
    assert _load(str(split_dir / "_COMPLETE.json"))["version"] == synthetic.GENERATOR_VERSION
    assert sorted(os.path.getmtime(p) for p in (split_dir / "images").iterdir()) == image_mtimes
    assert sorted(os.listdir(split_dir)) == ["_COMPLETE.json", "images", "instances_tiny.json"]


def test_version_1_cache_with_other_boxes_is_refused(tiny_json, tmp_path):
    split_dir = tmp_path / "tiny"
    shutil.copytree(os.path.dirname(tiny_json), split_dir)
    coco = _as_version_1(str(split_dir), "instances_tiny.json")
    coco["annotations"][0]["bbox"][0] += 1
    with open(split_dir / "instances_tiny.json", "w") as f:
        json.dump(coco, f)
    with pytest.raises(RuntimeError, match="version 1.*does not match.*delete it to regenerate"):
        generate_synthetic_split(str(tmp_path), "tiny")
