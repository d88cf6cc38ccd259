"""One validation: the yaml path (validate_autofocus_config) and the LazyConfig / Python path (the
constructors) reject the same bad values with the same rules; yaml errors name the key, LazyConfig
errors the argument."""
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from autofocus_d2 import model_zoo
from autofocus_d2.config_checks import check_scale_chain
from autofocus_d2.structures import ScaleChain
from autofocus_d2.inference.chip_policies import AutoFocusChipPolicy
from autofocus_d2.inference.pipeline import build_autofocus_pipeline

TWIN = "Synthetic/autofocus_compact_fpn"

# (LazyConfig override, yaml KEY VALUE, what the yaml error names, what the LazyConfig error names)
BAD_VALUES = [
    ("model.pipeline.policy.thresholds=[1.5]", ["MODEL.AUTOFOCUS.FOCUS_THRESHOLD", "[1.5]"],
     "MODEL.AUTOFOCUS.FOCUS_THRESHOLD: 1.5 is not in", "thresholds: 1.5 is not in"),
    ("model.pipeline.policy.dilations=[0]", ["MODEL.AUTOFOCUS.DILATION", "[0]"],
     "MODEL.AUTOFOCUS.DILATION: 0 is not an integer", "dilations: 0 is not an integer"),
    ("model.pipeline.policy.min_sizes=[-1.0]", ["MODEL.AUTOFOCUS.MIN_CHIP_SIZE", "[-1.0]"],
     "MODEL.AUTOFOCUS.MIN_CHIP_SIZE: -1.0", "min_sizes: -1.0"),
    ("model.pipeline.policy.max_chips=0", ["MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE", "0"],
     "MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE: must be an integer >= 1", "max_chips: must be an integer >= 1"),
    ("model.pipeline.max_chip_side=16", ["MODEL.AUTOFOCUS.MAX_CHIP_SIDE", "16"],
     "MODEL.AUTOFOCUS.MAX_CHIP_SIDE: must be a number >= 32", "max_chip_side: must be a number >= 32"),
    ("model.pipeline.tile_overlap=1500", ["MODEL.AUTOFOCUS.TILE_OVERLAP", "1500"],
     r"MODEL.AUTOFOCUS.TILE_OVERLAP: must be in \[0, MODEL.AUTOFOCUS.MAX_CHIP_SIDE / 2",
     r"tile_overlap: must be in \[0, max_chip_side / 2"),
    ("model.pipeline.chip_batch_size=0", ["MODEL.AUTOFOCUS.CHIP_BATCH_SIZE", "0"],
     "MODEL.AUTOFOCUS.CHIP_BATCH_SIZE: must be an integer >= 1", "chip_batch_size: must be an integer >= 1"),
    ("model.pipeline.max_batch_pixels=-1", ["MODEL.AUTOFOCUS.MAX_BATCH_PIXELS", "-1"],
     "MODEL.AUTOFOCUS.MAX_BATCH_PIXELS: must be a number >= 0", "max_batch_pixels: must be a number >= 0"),
    ("model.pipeline.valid_ranges=[[10.0, 5.0], [-1.0, -1.0]]",
     ["MODEL.AUTOFOCUS.VALID_RANGES", "[[10.0, 5.0], [-1.0, -1.0]]"],
     r"MODEL.AUTOFOCUS.VALID_RANGES: range \[10.0, 5.0\] has min > max", r"valid_ranges: range \[10.0, 5.0\]"),
    ("model.pipeline.valid_ranges=[[-1.0, -1.0]]", ["MODEL.AUTOFOCUS.VALID_RANGES", "[[-1.0, -1.0]]"],
     "MODEL.AUTOFOCUS.VALID_RANGES: 1 ranges for 2 scales", "valid_ranges: 1 ranges for 2 scales"),
    ("model.pipeline.nms_method='greedy'", ["MODEL.AUTOFOCUS.NMS_METHOD", "greedy"],
     "MODEL.AUTOFOCUS.NMS_METHOD: 'greedy' is not one of", "nms_method: 'greedy' is not one of"),
    ("model.pipeline.nms_thresh=0.0", ["MODEL.AUTOFOCUS.NMS_THRESH", "0.0"],
     r"MODEL.AUTOFOCUS.NMS_THRESH: must be in \(0, 1\]", r"nms_thresh: must be in \(0, 1\]"),
    ("model.pipeline.inference_dtype='int8'", ["MODEL.AUTOFOCUS.INFERENCE_DTYPE", "int8"],
     "MODEL.AUTOFOCUS.INFERENCE_DTYPE: 'int8'", "inference_dtype: 'int8'"),
    ("model.pipeline.detections_per_image=0", ["MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE", "0"],
     "MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE: must be an integer >= 1", "detections_per_image: must be"),
    ("model.pipeline.scale_chain.scales=[[-1, 768], [-1, 512]]", ["MODEL.AUTOFOCUS.SCALES", "[[-1, 768], [-1, 512]]"],
     "MODEL.AUTOFOCUS.SCALES: scales must go from coarse to fine", "scales: scales must go from coarse to fine"),
    ("model.pipeline.scale_chain.scales=[[-1, -1], [-1, -1]]", ["MODEL.AUTOFOCUS.SCALES", "[[-1, -1], [-1, -1]]"],
     "MODEL.AUTOFOCUS.SCALES: .* is the same scale", "scales: .* is the same scale"),
]


def _lazy_pipeline(override):
    cfg = model_zoo.get_config(TWIN + ".py")
    LazyConfig.apply_overrides(cfg, [override])
    return instantiate(cfg.model.pipeline)


def _yaml_pipeline(opts):
    cfg = model_zoo.get_config(TWIN + ".yaml")
    cfg.merge_from_list(opts)
    return build_autofocus_pipeline(cfg)


def test_the_twins_build_their_pipelines():
    assert _lazy_pipeline("model.pipeline.chip_batch_size=8").chip_batch_size == 8
    assert _yaml_pipeline(["MODEL.AUTOFOCUS.CHIP_BATCH_SIZE", "8"]).chip_batch_size == 8


@pytest.mark.parametrize("override, opts, yaml_message, lazy_message", BAD_VALUES,
                         ids=[b[0].split("=")[0].rsplit(".", 1)[-1] + "=" + b[0].split("=", 1)[1] for b in BAD_VALUES])
def test_lazyconfig_and_yaml_reject_the_same_bad_value(override, opts, yaml_message, lazy_message):
    with pytest.raises(ValueError, match="Invalid config " + yaml_message):
        _yaml_pipeline(opts)
    with pytest.raises(ValueError, match="Invalid config " + lazy_message):
        _lazy_pipeline(override)


@pytest.mark.parametrize("override, opts, yaml_message, lazy_message", [
    ("model.focus_loss_weight=-1.0", ["MODEL.FOCUS_HEAD.LOSS_WEIGHT", "-1.0"],
     "MODEL.FOCUS_HEAD.LOSS_WEIGHT: must be a number >= 0", "focus_loss_weight: must be a number >= 0"),
    ("model.focus_small_range=[70.0, 64.0]", ["MODEL.FOCUS_HEAD.SMALL_RANGE", "[70.0, 64.0]"],
     "MODEL.FOCUS_HEAD.SMALL_RANGE: need 0 <= min <= max", "focus_small_range: need 0 <= min <= max"),
    ("model.focus_head.conv_dim=0", ["MODEL.FOCUS_HEAD.CONV_DIM", "0"],
     "MODEL.FOCUS_HEAD.CONV_DIM: must be an integer >= 1", "conv_dim: must be an integer >= 1"),
])
def test_lazyconfig_and_yaml_models_reject_the_same_bad_focus_values(override, opts, yaml_message, lazy_message):
    yaml_cfg = model_zoo.get_config(TWIN + ".yaml")
    yaml_cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match="Invalid config " + yaml_message):
        build_model(yaml_cfg)
    lazy = model_zoo.get_config(TWIN + ".py")
    LazyConfig.apply_overrides(lazy, [override])
    with pytest.raises(ValueError, match="Invalid config " + lazy_message):
        instantiate(lazy.model)


@pytest.mark.parametrize("scales, match", [
    ([[-1, 768], [-1, 512]], r"smaller longer-side cap \(512 < 768\)"),
    ([[512, 768], [-1, 300]], r"smaller longer-side cap \(300 < 768\)"),
    ([[512, 768], [200, -1]], r"smaller shorter-side target \(200 < 512\)"),
    ([[-1, -1], [-1, -1]], "is the same scale"),
    ([[480, 512], [800, 1280], [800, 1280]], r"scale 2 \[800.0, 1280.0\] after scale 1 .* is the same scale"),
    ([[480, 512], [-1, 0]], "must be -1 .* or a positive number"),
    ([[800, 512]], "cap is below the shorter side"),
    ([], "at least one"),
])
def test_chains_not_coarse_to_fine_are_rejected(scales, match):
    with pytest.raises(ValueError, match=r"Invalid config MODEL.AUTOFOCUS.SCALES: .*" + match):
        check_scale_chain(scales, "MODEL.AUTOFOCUS.SCALES")
    with pytest.raises(ValueError, match=r"Invalid config scales: "):
        ScaleChain(scales=scales)


@pytest.mark.parametrize("scales", [
    [[480, 512], [800, 1280], [1400, 2000]],  # the paper's
    [[512, 768], [-1, -1]],  # the compact chain: coarse-to-fine above 512 x 768, skipped below
    [[-1, -1], [512, 768]],  # finer only on small images
    [[-1, 512], [1024, -1]],
])
def test_chains_coarse_to_fine_for_some_image_sizes_are_accepted(scales):
    check_scale_chain(scales, "MODEL.AUTOFOCUS.SCALES")
    assert len(ScaleChain(scales=scales)) == len(scales)


def test_constructor_arguments_are_checked_without_any_config():
    with pytest.raises(ValueError, match=r"Invalid config thresholds: 1.5 is not in \[0, 1\]"):
        AutoFocusChipPolicy(thresholds=[1.5], dilations=[3], min_sizes=[64.0], max_chips=8)
    with pytest.raises(ValueError, match=r"Invalid config thresholds: 1 values for 2 scale transitions"):
        # The pipeline checks the policy's per-transition lists against its scale chain.
        _lazy_pipeline("model.pipeline.scale_chain.scales=[[480, 512], [800, 1280], [1400, 2000]]")


@pytest.mark.slow  # a tool start in a subprocess (about 6 s)
def test_benchmark_sweep_outside_0_1_is_rejected(repo_root):
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "benchmark.py"), "--config-file",
         os.path.join(repo_root, "configs", TWIN + ".yaml"), "--sweep", "0.3", "1.5", "-0.2"],
        capture_output=True, text=True, cwd=repo_root, timeout=300,
    )
    assert proc.returncode == 2
    assert "Invalid config --sweep: 1.5 is not in [0, 1]" in proc.stderr
