"""The public SAHI wrapper through SAHI's own API: the docs/deployment.md snippet as written, and
the whole-image pass at scale 0 when the image size is set."""
import os
import re

import numpy as np
import pytest

pytest.importorskip("sahi", reason="sahi is optional (pip install sahi)")

import torch  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from PIL import Image  # noqa: E402
from sahi.predict import get_sliced_prediction  # noqa: E402

from autofocus_d2.checkpoint import AtomicCheckpointer  # noqa: E402
from autofocus_d2.integrations.sahi import AutoFocusSahiModel  # noqa: E402
from autofocus_d2.model_metadata import model_metadata  # noqa: E402

H, W = 700, 900


def docs_snippet(repo_root: str) -> str:
    text = open(os.path.join(repo_root, "docs", "deployment.md")).read()
    section = text.split("## Using autofocus-d2 models from SAHI", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def checkpoint(compact_cfg, tmp_path_factory):
    """A random-init checkpoint of the compact config carrying its record (config, class names) as
    train_net.py writes it, and the model it came from."""
    torch.manual_seed(0)
    model = build_model(compact_cfg()).eval()
    out = tmp_path_factory.mktemp("sahi_ckpt")
    AtomicCheckpointer(model, save_dir=str(out), metadata=model_metadata(compact_cfg())).save("model")
    return str(out / "model.pth"), model


@pytest.mark.slow
def test_the_docs_snippet_runs_as_written(repo_root, checkpoint, tmp_path, monkeypatch, capsys):
    weights, model = checkpoint
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image[200:320, 300:480] = (40, 200, 90)
    image_path = str(tmp_path / "image.png")
    Image.fromarray(image).save(image_path)
    code = docs_snippet(repo_root)
    assert '"output/demo/train/model_final.pth"' in code and '"image.png"' in code
    code = code.replace('"output/demo/train/model_final.pth"', repr(weights)).replace('"image.png"', repr(image_path))
    monkeypatch.chdir(repo_root)  # the config path is relative to the repository, as in the docs
    scope = {}
    exec(compile(code, "docs/deployment.md snippet", "exec"), scope)

    detection_model, result = scope["detection_model"], scope["result"]
    assert isinstance(detection_model, AutoFocusSahiModel)
    # The weights alone built the model: the checkpoint's weights are in it.
    torch.testing.assert_close(detection_model.detector.roi_heads.box_predictor.cls_score.weight,
                               model.roi_heads.box_predictor.cls_score.weight, rtol=0, atol=0)
    names = MetadataCatalog.get("autofocus_synth_val").thing_classes
    assert detection_model.category_mapping == {str(i): n for i, n in enumerate(names)}
    # 700 x 900 with 512 px slices, overlap 0.2: 2 x 2 slices, plus SAHI's whole-image pass.
    calls = detection_model.model.calls
    assert [c.kind for c in calls] == ["slice"] * 4 + ["slice"]  # no full-image size set: all at zoom 1
    assert calls[-1].input_hw == (H, W)
    assert all(p.score.value >= 0.3 for p in result.object_prediction_list)
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("Performing")]
    assert len(printed) == len(result.object_prediction_list)


def test_a_built_model_with_the_full_image_size_runs_the_whole_image_at_scale_0(compact_cfg, checkpoint):
    _, model = checkpoint
    cfg = compact_cfg()
    detection_model = AutoFocusSahiModel(cfg, model=model, confidence_threshold=0.05)
    assert detection_model.detector is model
    detection_model.set_full_image_size((H, W))
    image = np.zeros((H, W, 3), dtype=np.uint8)
    get_sliced_prediction(image, detection_model, slice_height=512, slice_width=512, verbose=0)
    calls = detection_model.model.calls
    assert [c.kind for c in calls] == ["slice"] * 4 + ["full"]
    assert calls[-1].input_hw == (512, 658)  # scale 0 of [[512, 768], [-1, -1]]
    assert [c.input_hw for c in calls[:4]] == [c.image_hw for c in calls[:4]]  # slices at zoom 1


def test_bad_arguments_are_named(compact_cfg):
    with pytest.raises(ValueError, match="needs a cfg or a model"):
        AutoFocusSahiModel()
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        AutoFocusSahiModel(compact_cfg())
    with pytest.raises(ValueError, match="slice zoom"):
        AutoFocusSahiModel(compact_cfg(), model=build_model(compact_cfg()), slice_zoom=0.0)


@pytest.mark.parametrize("cap, warned", [(3, True), pytest.param(100000, False, marks=pytest.mark.slow)])  # uncapped: about 2.4 s
def test_passes_at_the_detection_cap_are_warned_once(compact_cfg, checkpoint, logged, cap, warned):
    """A planted dense case: with the test threshold 0, the random model's passes keep every
    proposal, so each pass reaches a cap of 3 (none reaches 100000)."""
    _, trained = checkpoint
    cfg = compact_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = cap
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    model.load_state_dict(trained.state_dict())
    messages = logged("autofocus_d2.integrations.sahi")
    detection_model = AutoFocusSahiModel(cfg, model=model, confidence_threshold=0.0)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    get_sliced_prediction(image, detection_model, slice_height=256, slice_width=256, verbose=0)
    counter = detection_model.model.cap_counter
    passes = len(detection_model.model.calls)
    assert passes == 5 and counter.images == passes  # 2 x 2 slices and the whole image
    cap_messages = [m for m in messages if "reached the cap" in m]
    if warned:
        assert counter.images_at_cap == passes
        assert len(cap_messages) == 1  # once, at the first pass at the cap
        assert cap_messages[0].startswith("SAHI detector passes: 1 of 1 images reached the cap of 3 "
                                          "detections per image (TEST.DETECTIONS_PER_IMAGE)")
        assert "5 of 5" in counter.message()
    else:
        assert counter.images_at_cap == 0 and cap_messages == []
