"""demo.py writes the pictures it promises, and the drawing helpers keep their contract: an
(H, W, 3) uint8 RGB array of the input's size, the input untouched."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from autofocus_d2 import model_zoo
from autofocus_d2.config import load_autofocus_config
from autofocus_d2.structures.views import View
from autofocus_d2.utils import add_colorbar, draw_chips, draw_detections, focus_heatmap, read_image
from autofocus_d2.model_zoo import get_config_file
import demo

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")


def image(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- helpers
def test_draw_detections_draws_only_above_the_threshold():
    img = image(300, 400)
    inst = Instances((300, 400))
    inst.pred_boxes = Boxes(torch.tensor([[20.0, 20.0, 120.0, 120.0], [200.0, 150.0, 350.0, 280.0]]))
    inst.scores = torch.tensor([0.9, 0.2])
    inst.pred_classes = torch.tensor([0, 1])
    meta = MetadataCatalog.get("autofocus_synth_tiny")
    out = draw_detections(img, inst, meta, threshold=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == image(300, 400)).all()  # input untouched
    changed = (out != img).any(axis=2)
    assert changed[20:121, 20:121].any()
    assert not changed[140:, 140:].any()  # the box below the threshold is not drawn


def test_draw_chips_marks_each_scales_boxes():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    out = draw_chips(img, [[[0, 0, 80, 60]], [[10, 10, 40, 40], [50, 5, 75, 30]]])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[10:41, 10].any() and out[5:31, 75].any()  # the chips' left / right edges
    assert not out[45:55, 45:55].any()  # inside no chip, away from every edge and label


def test_draw_chips_draws_a_whole_image_chip_as_a_band_inside_the_border():
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    out = draw_chips(img, [[[0, 0, 300, 200]], [[100, 60, 180, 140]]])
    band = max(3, 200 // 100)
    # scale 0's colour (white) on every side, band pixels deep, inside the image
    for edge in (out[:band, 50:250], out[-band:, 50:250], out[50:150, :band], out[50:150, -band:]):
        assert (edge == 255).all()
    assert not out[band + 2:55, 200:290].any()  # inside: untouched (no chip, no label there)


def test_add_colorbar_appends_a_bar_of_the_colour_map():
    img = image(240, 320)
    out = add_colorbar(img)
    assert out.shape[0] == 240 and out.shape[1] > 320 and out.dtype == np.uint8
    assert (out[:, :320] == img).all()
    bar = out[:, 320:].reshape(-1, 3).astype(int)
    # jet's ends are both in the bar: dark red (1) and dark blue (0)
    assert ((bar[:, 0] > 100) & (bar[:, 1] < 40) & (bar[:, 2] < 40)).any()
    assert ((bar[:, 2] > 100) & (bar[:, 0] < 40) & (bar[:, 1] < 40)).any()


def test_focus_heatmap_pastes_each_views_map_into_the_original_frame():
    img = image()
    # A view of the right half (x 40..80), seen at twice the size: (60, 40) -> (120, 80) pixels,
    # with a stride-16 map of 8 x 5 cells (the last row and column lie in the batch padding).
    view = View(0, 1, (40, 0, 80, 60), (120, 80))
    fmap = torch.zeros(8, 5)
    fmap[:4, :] = 1.0  # view rows 0..63 -> original rows 0..31
    out = focus_heatmap(img, [view, View(0, 1, (0, 0, 10, 10), (10, 10))], [fmap, None], stride=16)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[:, :40] == img[:, :40]).all()  # outside every map: unchanged
    hot, cold = out[:32, 40:].astype(int), out[32:, 40:].astype(int)
    # jet(1) is red, jet(0) is blue, blended at 0.5.
    assert (hot[..., 0] - img[:32, 40:, 0] // 2 >= 60).all()
    assert (cold[..., 2] - img[32:, 40:, 2] // 2 >= 60).all()
    with pytest.raises(ValueError, match="1 views but 2 focus maps"):
        focus_heatmap(img, [view], [fmap, fmap], stride=16)


def test_expand_inputs(tmp_path):
    for name in ("a.jpg", "b.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert demo.expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert demo.expand_inputs([str(tmp_path / "*.png")]) == [str(tmp_path / "b.png")]
    with pytest.raises(SystemExit, match="is not a file, folder or glob"):
        demo.expand_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(SystemExit, match="matches no image"):
        demo.expand_inputs([str(tmp_path / "*.bmp")])
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "a.jpg", tmp_path / "sub" / "a.jpg")
    with pytest.raises(SystemExit, match=r"several inputs are named \['a'\]"):
        demo.expand_inputs([str(tmp_path / "a.jpg"), str(tmp_path / "sub")])


# ---------------------------------------------------------------------------------- end to end
def run_demo(repo_root, tmp_path, device):
    """demo.py on two images of the tiny split (one given as a folder, one as a glob) with a
    random-init checkpoint."""
    torch.manual_seed(0)
    model = model_zoo.get("Synthetic/autofocus_compact_fpn.yaml", device="cpu")
    model.focus_head.predictor.bias.data = torch.tensor([2.0, -2.0])  # few FocusPixels: chips
    DetectionCheckpointer(model, str(tmp_path)).save("random_init")
    files = [d["file_name"] for d in DatasetCatalog.get("autofocus_synth_tiny")[:2]]
    (tmp_path / "folder").mkdir()
    (tmp_path / "globbed").mkdir()
    shutil.copy(files[0], tmp_path / "folder" / "first.jpg")
    shutil.copy(files[1], tmp_path / "globbed" / "second.jpg")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "demo.py"), "--config-file", CONFIG,
         "--input", str(tmp_path / "folder"), str(tmp_path / "globbed" / "*.jpg"),
         "--output", str(out), "--show-chips", "--confidence-threshold", "0.2",
         "--opts", "MODEL.WEIGHTS", str(tmp_path / "random_init.pth"), "MODEL.DEVICE", device],
        capture_output=True, text=True, cwd=repo_root, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, out, files


@pytest.mark.slow
@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_demo_writes_detections_chips_and_focus_maps(repo_root, tmp_path, device):
    proc, out, files = run_demo(repo_root, tmp_path, device)
    expected = {f"{stem}_{kind}.png" for stem in ("first", "second")
                for kind in ("detections", "chips", "focus_s0")}
    assert set(os.listdir(out)) == expected | {"first.json", "second.json"}
    for stem, src in zip(("first", "second"), files):
        size = Image.open(src).size
        for kind in ("detections", "chips"):
            picture = Image.open(out / f"{stem}_{kind}.png")
            assert picture.size == size and picture.mode == "RGB"
        focus = Image.open(out / f"{stem}_focus_s0.png")  # the map, then its colour bar
        assert focus.size[1] == size[1] and focus.size[0] > size[0] and focus.mode == "RGB"
        record = json.loads((out / f"{stem}.json").read_text())
        assert (record["width"], record["height"]) == size
    lines = [line for line in proc.stdout.splitlines() if "detections in" in line]
    assert len(lines) == 2
    for line, stem in zip(lines, ("first", "second")):
        assert f"{stem}.jpg: " in line
        assert "chips per scale [1, " in line and "of the pyramid's" in line and " s;" in line


def test_demo_reports_each_bad_file_processes_the_rest_and_exits_non_zero(tmp_path, bad_image_files, capsys):
    # In the folder, sorted: float.tif (mode F, refused), good.jpg, grey16.png (read, scaled),
    # text.png (not an image), truncated.jpg (truncated): two good files after bad ones.
    folder = os.path.dirname(bad_image_files["good"])
    code = demo.main(["--config-file", CONFIG, "--input", folder, "--opts", "MODEL.DEVICE", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line.split(":")[0] for line in out.splitlines() if "detections in" in line] == [
        bad_image_files["good"], bad_image_files["grey16"]]
    summary = err[err.index("error: 3 of 5 images failed:"):]
    for case, reason in [("float", "PIL mode 'F' is not supported"),
                         ("text", "not an image file PIL can identify"),
                         ("truncated", "cannot decode the image (OSError: image file is truncated")]:
        assert f"error: {bad_image_files[case]}: {reason}" in err
        assert f"  {bad_image_files[case]}: {reason}" in summary


@pytest.mark.slow  # a demo run on the tiny split (about 2 s)
def test_demo_json_equals_the_models_detections(tmp_path):
    """The JSON demo.py writes for an image holds the model's own detections above the threshold:
    boxes XYWH in original pixels, scores, category ids and names."""
    torch.manual_seed(0)
    model = model_zoo.get("Synthetic/autofocus_compact_fpn.yaml", device="cpu")
    DetectionCheckpointer(model, str(tmp_path)).save("random_init")
    src = DatasetCatalog.get("autofocus_synth_tiny")[0]["file_name"]
    threshold = 0.05  # random weights: low scores, so a low threshold keeps some
    out = tmp_path / "out"
    weights = str(tmp_path / "random_init.pth")
    code = demo.main(["--config-file", CONFIG, "--input", src, "--output", str(out),
                      "--confidence-threshold", str(threshold),
                      "--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    assert code == 0
    record = json.loads((out / (os.path.splitext(os.path.basename(src))[0] + ".json")).read_text())

    cfg = load_autofocus_config(CONFIG, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
                                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold])
    from detectron2.modeling import build_model
    expected_model = build_model(cfg).eval()
    DetectionCheckpointer(expected_model).load(weights)
    picture = read_image(src, format=cfg.INPUT.FORMAT)
    with torch.no_grad():
        inst = expected_model([{"image": torch.as_tensor(picture.transpose(2, 0, 1).copy())}])[0]["instances"]
    inst = inst[inst.scores >= threshold]
    assert len(inst) > 0
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    assert (record["height"], record["width"]) == picture.shape[:2]
    got = record["instances"]
    assert len(got) == len(inst)
    boxes = inst.pred_boxes.tensor.clone()
    boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH
    np.testing.assert_allclose([d["bbox"] for d in got], boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose([d["score"] for d in got], inst.scores.numpy(), atol=1e-6)
    assert [d["category_id"] for d in got] == inst.pred_classes.tolist()
    assert [d["category_name"] for d in got] == [names[c] for c in inst.pred_classes.tolist()]
