"""Negative SNIPER chips: the checks of the chips file INPUT.SNIPER.NEGATIVE_CHIPS_FILE
(autofocus_d2/data/sniper_records.py), mining them with the RPN of a random-weight model
(autofocus_d2/data/sniper_mining.py), and the tool tools/mine_negative_chips.py.

The registered two-image dataset is conftest.py's ``two_image_dataset``; the SNIPER loader config
(``loader_cfg``) comes from test_sniper_loader.py.
"""
import json

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from autofocus_d2.data import (
    build_sniper_train_loader,
    load_negative_chips,
    mine_negative_chips,
    sniper_chip_records,
)
from autofocus_d2.data import sniper_mining
from autofocus_d2.data.sniper_records import check_negative_chips
from autofocus_d2.structures import tile_views
from autofocus_d2.model_zoo import get_config_file
from tests.data.test_sniper_loader import loader_cfg

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")
MINING_SCALES = [[75.0, 100.0], [150.0, 200.0]]


def test_negative_chips_file_errors(two_image_dataset, tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="INPUT.SNIPER.NEGATIVE_CHIPS_FILE"):
        build_sniper_train_loader(loader_cfg(two_image_dataset, NEGATIVE_CHIPS_FILE=missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="INPUT.SNIPER.NEGATIVE_CHIPS_FILE.*not valid json"):
        build_sniper_train_loader(loader_cfg(two_image_dataset, NEGATIVE_CHIPS_FILE=str(bad)))
    other = tmp_path / "other_scales.json"
    other.write_text(json.dumps({"version": 1, "scales": [[100, 200]], "chips": {}}))
    with pytest.raises(ValueError, match="INPUT.SNIPER.NEGATIVE_CHIPS_FILE.*training scales"):
        build_sniper_train_loader(loader_cfg(two_image_dataset, NEGATIVE_CHIPS_FILE=str(other)))
    scales = [[150, 200], [300, 400]]
    for content, match in [
        ({"version": 2, "scales": scales, "chips": {}}, "version"),
        ({"scales": scales, "chips": {}}, "expected a dict"),
        ({"version": 1, "scales": scales, "chips": {"0": [[0, 0, 10, 10, 2]]}}, "bad chip"),
        ({"version": 1, "scales": scales, "chips": {"0": [[10, 0, 5, 10, 0]]}}, "bad chip"),
        ({"version": 1, "scales": scales, "chips": {"0": [[0, 0, 10]]}}, "bad chip"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_negative_chips(content, scales, "test")
    with pytest.raises(ValueError, match="no positive SNIPER chip"):
        build_sniper_train_loader(loader_cfg(two_image_dataset, VALID_RANGES=[[500, -1], [500, -1]]))


def _tiny_model_cfg(compact_cfg, name):
    """The synthetic CPU model's config on the tiny dataset, at two small training scales (zoom
    0.25 and 0.5 on its 300 x 400 images) to keep the random-weight forward passes cheap."""
    cfg = compact_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.SNIPER.SCALES = MINING_SCALES
    cfg.INPUT.SNIPER.VALID_RANGES = [[100, -1], [-1, 100]]
    cfg.INPUT.SNIPER.CHIP_SIZE = 32
    cfg.INPUT.SNIPER.CHIP_STRIDE = 16
    cfg.INPUT.SNIPER.NEGATIVE_MIN_PROPOSALS = 2
    cfg.INPUT.SNIPER.NEGATIVE_PROPOSALS_PER_IMAGE = 40
    return cfg


def test_mine_negative_chips_structure(compact_cfg, two_image_dataset):
    cfg = _tiny_model_cfg(compact_cfg, two_image_dataset)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    dicts = DatasetCatalog.get(two_image_dataset)
    content = mine_negative_chips(model, dicts, cfg)
    assert model.training  # put back in its former mode
    assert set(content) == {"version", "scales", "chips"} and content["version"] == 1
    assert content["scales"] == MINING_SCALES
    assert set(content["chips"]) == {"0", "1"}
    check_negative_chips(content, content["scales"], "mined")
    all_chips = [c for chips in content["chips"].values() for c in chips]
    assert all_chips, "a random RPN fires everywhere: some negative chips are expected"
    for x0, y0, x1, y1, scale in all_chips:
        zoom = 0.25 if scale == 0 else 0.5
        assert 0 <= x0 < x1 <= 400 + 1e-3 and 0 <= y0 < y1 <= 300 + 1e-3
        assert abs((x1 - x0) - 32 / zoom) < 1e-3 and abs((y1 - y0) - 32 / zoom) < 1e-3
    records, num_positive = sniper_chip_records(cfg, dicts, negative_chips=content)
    assert len(records) - num_positive == len(all_chips)


def test_rpn_proposals_at_zoom_tiles_in_the_original_frame(compact_cfg, two_image_dataset):
    cfg = _tiny_model_cfg(compact_cfg, two_image_dataset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 300, 400), dtype=torch.uint8)
    whole = sniper_mining.rpn_proposals_at_zoom(model, image, 0.25, 30, max_side=2048, tile_overlap=128)
    # 75 x 100 pixels of the scale in tiles of 48: the pipeline's tiling (tile_views), 6 tiles
    assert len(tile_views(0, 0, (0, 0, 400, 300), 0.25, 48, 8)) == 6
    tiled = sniper_mining.rpn_proposals_at_zoom(model, image, 0.25, 30, max_side=48, tile_overlap=8)
    for boxes in (whole, tiled):
        assert boxes.shape == (30, 4)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
    # Tiles of 48 px of the scale hold proposals of at most 48 px = 192 original px.
    assert ((tiled[:, 2:] - tiled[:, :2]) <= 192 + 1e-3).all()
    assert ((whole[:, 2:] - whole[:, :2]) > 192 + 1e-3).any()
    assert not torch.equal(whole, tiled)


def test_mine_negative_chips_tool(two_image_dataset, tmp_path, capsys):
    from tools import mine_negative_chips as tool

    out = str(tmp_path / "neg" / "chips.json")
    assert tool.main([
        "--config-file", CONFIG, "--output", out, "--max-images", "1",
        "DATASETS.TRAIN", f"('{two_image_dataset}',)", "INPUT.SNIPER.SCALES", str(MINING_SCALES),
        "INPUT.SNIPER.VALID_RANGES", "[[100, -1], [-1, 100]]", "INPUT.SNIPER.CHIP_SIZE", "32",
        "INPUT.SNIPER.CHIP_STRIDE", "16", "INPUT.SNIPER.NEGATIVE_MIN_PROPOSALS", "2",
    ]) == 0
    content = load_negative_chips(out, MINING_SCALES)
    assert set(content["chips"]) == {"0"}
    printed = capsys.readouterr().out
    counts = [sum(1 for c in content["chips"]["0"] if c[4] == s) for s in (0, 1)]
    assert f"scale (75, 100): {counts[0]}" in printed and f"scale (150, 200): {counts[1]}" in printed
