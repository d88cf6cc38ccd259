"""Config keys of autofocus-d2: ``add_autofocus_config(cfg)`` and their validation."""
from typing import List, Sequence

from detectron2.config import CfgNode as CN

from .config_checks import (
    check,
    check_at_least,
    check_canvas_list,
    check_choice,
    check_dilations,
    check_focus_label_range,
    check_in_range,
    check_min_sizes,
    check_probabilities,
    check_ranges,
    check_scale_chain,
    check_tiling,
)

__all__ = [
    "add_autofocus_config",
    "load_autofocus_config",
    "coerce_autofocus_numbers",
    "merge_autofocus_file",
    "validate_autofocus_config",
    "validate_sniper_config",
    "sniper_training_scales",
    "sniper_valid_ranges",
    "check_scale_chain",
    "per_transition",
    "lookup_registry",
    "DEFAULT_MAX_IMAGE_MPIX",
    "INFERENCE_DTYPE_NAMES",
    "NMS_METHODS",
]

# Default of INPUT.MAX_IMAGE_MPIX, megapixels: PIL's own refusal limit (2 x Image.MAX_IMAGE_PIXELS
# of Pillow 10-13), which autofocus_d2.utils.read_image replaces.
DEFAULT_MAX_IMAGE_MPIX = 178.9
# The values of MODEL.AUTOFOCUS.INFERENCE_DTYPE and MODEL.AUTOFOCUS.NMS_METHOD.
INFERENCE_DTYPE_NAMES = ("float32", "float16", "bfloat16")
NMS_METHODS = ("nms", "soft_nms")


def add_autofocus_config(cfg: CN) -> None:
    """Add the AutoFocus keys, with their defaults, to a Detectron2 config (in place).

    Frames: "input image" is the image the network sees at one scale (after resize / crop, before
    batch padding); "original image" is the image as the dataset stores it.
    """
    # ---------------------------------------------------------------- FocusPixel head (training)
    cfg.MODEL.FOCUS_HEAD = CN()
    # Name of the head in FOCUS_HEAD_REGISTRY.
    cfg.MODEL.FOCUS_HEAD.NAME = "StandardFocusHead"
    # Backbone feature the head reads. "" = the backbone output of stride 16 (res4 for C4, p4 for FPN).
    cfg.MODEL.FOCUS_HEAD.IN_FEATURE = ""
    # Channels of the head's 3x3 conv and of its middle 1x1 conv (official head: 256, 256).
    cfg.MODEL.FOCUS_HEAD.CONV_DIM = 256
    # Weight of loss_focus (dimensionless) relative to Detectron2's detection losses.
    cfg.MODEL.FOCUS_HEAD.LOSS_WEIGHT = 1.0
    # [min, max] of sqrt(box area), in input-image pixels, of the objects whose cells are
    # FocusPixels (label 1). Paper: 5 <= r <= 64.
    cfg.MODEL.FOCUS_HEAD.SMALL_RANGE = [5.0, 64.0]
    # Frame of SMALL_RANGE[0]: "input" = pixels of the scale that predicts the map (the paper's
    # rule, made for its chain of 1.67x steps); "next_scale" = pixels of the next finer scale of the
    # chain, so an object is a FocusPixel whenever the scale its chip goes to sees it at a
    # detectable size (bound / zoom step in the predicting scale's pixels). With steps of 2-4x
    # the paper's rule drops objects of 10-20 px at the next scale (docs/training.md).
    cfg.MODEL.FOCUS_HEAD.SMALL_MIN_FRAME = "input"
    # Cells of objects with r < SMALL_RANGE[0] or SMALL_RANGE[1] < r <= IGNORE_MAX (input-image
    # pixels) are ignored (label -1) unless a FocusPixel; the paper uses 90.
    cfg.MODEL.FOCUS_HEAD.IGNORE_MAX = 90.0
    # FocusPixel labels of the boxes a SNIPER chip ignores (out of its valid range): "size" labels
    # them by size like every other box (official code: the coarse scale's chips then teach where
    # the small objects are); "ignore" ignores their cells (unless a valid box makes them positive).
    cfg.MODEL.FOCUS_HEAD.IGNORED_BOX_LABELS = "size"
    # Retrofit (bool): train only the FocusPixel head on a trained detector (MODEL.WEIGHTS, e.g. a
    # stock GeneralizedRCNN checkpoint). The detector is frozen (no gradients, no detection losses,
    # its modules kept in eval mode so BatchNorm statistics do not move); training gives loss_focus only.
    cfg.MODEL.FOCUS_HEAD.TRAIN_ONLY = False

    # ------------------------------------------------------------- coarse-to-fine inference
    cfg.MODEL.AUTOFOCUS = CN()
    # Coarse-to-fine pipeline in AUTOFOCUS_PIPELINE_REGISTRY.
    cfg.MODEL.AUTOFOCUS.PIPELINE = "CoarseToFinePipeline"
    # Chip policy (CHIP_POLICY_REGISTRY): "autofocus" (FocusChips), "pyramid" (whole image at
    # every scale), "single" (first scale only), "grid" (uniform overlapping tiles at finer scales).
    cfg.MODEL.AUTOFOCUS.CHIP_POLICY = "autofocus"
    # The scale chain, coarse to fine, one [short, cap] pair per scale, as in the paper: scale k
    # is the whole image resized so that its shorter side is `short` pixels and its longer side at
    # most `cap` pixels, so each image gets its own zoom per scale (autofocus_d2.inference.
    # ScaleChain). -1 = no constraint: [-1, 512] = longer side 512; [-1, -1] = the original
    # resolution (zoom 1). Scale 0 runs on the whole image, finer scales only inside FocusChips.
    # Paper (COCO): (480, 512), (800, 1280), (1400, 2000).
    cfg.MODEL.AUTOFOCUS.SCALES = [[480, 512], [800, 1280], [1400, 2000]]
    # FocusPixel probability above which a cell is a FocusPixel, one per scale transition
    # (0->1, 1->2, ...); a single value applies to every transition. Paper code: 0.02, 0.2.
    cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD = [0.02, 0.2]
    # Side of the square dilation kernel, in focus-map cells; one per transition or a single value.
    cfg.MODEL.AUTOFOCUS.DILATION = [3]
    # Minimum FocusChip side, in pixels of the image at the scale where the map was predicted;
    # one per transition or a single value (paper: 16 and 20 cells of stride 16).
    cfg.MODEL.AUTOFOCUS.MIN_CHIP_SIZE = [256.0, 320.0]
    # At most this many chips per image per scale (largest focus mass kept; a warning is logged).
    cfg.MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE = 32
    # Chips per forward pass at a finer scale (padded ImageList batches): bounds memory.
    cfg.MODEL.AUTOFOCUS.CHIP_BATCH_SIZE = 8
    # Pixels per detector batch, counted as the padded batch tensor's (views x padded height x
    # padded width, pixels of the scale): a view joins a batch only while the batch stays within
    # this; a single larger view runs alone. With CHIP_BATCH_SIZE, bounds peak memory: 2.7 GB of
    # CPU memory for a 12000 x 9000 frame with the compact model, 6.0 GB without it
    # (docs/bad_inputs_inference.md).
    # 0 = no pixel limit (CHIP_BATCH_SIZE alone).
    cfg.MODEL.AUTOFOCUS.MAX_BATCH_PIXELS = 8_000_000
    # Views share a detector batch only while the batch's padded area stays within (1 + this)
    # times their own padded areas (fraction; 0: equal shapes only; a large value: plain batching).
    # FocusChips come in every shape: a wide and a tall chip padded together cost their square.
    cfg.MODEL.AUTOFOCUS.MAX_BATCH_PADDING = 0.1
    # Fixed-shape chip canvases: [H, W] shapes, in pixels of the scale (multiples of the backbone's
    # size divisibility), into which the views of each finer scale are packed, one detector pass
    # per canvas, so every pass has one of these shapes (GPU: cuDNN autotuning per shape, CUDA
    # graphs, engines of a fixed profile). A view larger than every canvas keeps the batching above.
    # Empty = no canvases: views batched by shape (MAX_BATCH_PADDING). docs/speed.md.
    cfg.MODEL.AUTOFOCUS.CHIP_CANVASES = []
    # Zero band between two chips of a canvas, in pixels of the scale (docs/speed.md: why 64 is enough).
    cfg.MODEL.AUTOFOCUS.CHIP_CANVAS_GAP = 64
    # Scale-0 views made by an integer-factor area reduction plus a bilinear step instead of an
    # antialiased bilinear resize of the full-resolution image (bool; structures.views.area_downscale;
    # docs/speed.md has its measured AP effect).
    cfg.MODEL.AUTOFOCUS.AREA_DOWNSCALE = False
    # Precision of the detector passes: "float32", or autocast "bfloat16" / "float16" (CUDA only).
    # Chips, frame mapping and stacking stay float32 (docs/inference.md, "Mixed precision": what was
    # measured against float32).
    cfg.MODEL.AUTOFOCUS.INFERENCE_DTYPE = "float32"
    # A chip (or whole image) longer than this, in pixels of its scale, runs as overlapping tiles
    # of at most this side (bounds memory on very large images; every policy tiles alike).
    cfg.MODEL.AUTOFOCUS.MAX_CHIP_SIDE = 2048
    # Overlap of those tiles, in pixels of the scale.
    cfg.MODEL.AUTOFOCUS.TILE_OVERLAP = 128
    # RPN proposal budget per detector pass, proportional to the largest view of the batch:
    # this many proposals per megapixel (0 = off: always MODEL.RPN.PRE/POST_NMS_TOPK_TEST) ...
    cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX = 0.0
    # ... but at least this many, and never more than MODEL.RPN.PRE/POST_NMS_TOPK_TEST.
    cfg.MODEL.AUTOFOCUS.MIN_PROPOSALS = 300
    # Focus stacking 1: drop a chip detection with an edge within this many ORIGINAL-image pixels of
    # a chip border that is not an image border (the object was cut by the chip). Paper code: 10.
    cfg.MODEL.AUTOFOCUS.BORDER_MARGIN = 10.0
    # Focus stacking 2: drop a scale-k detection lying inside a scale-(k+1) chip when its
    # sqrt(area) in scale-k pixels is below this (the finer scale re-detects it). Not in the
    # paper's code (0 = off, as in the COCO configs, whose valid ranges do this job).
    cfg.MODEL.AUTOFOCUS.SMALL_DROP_SIZE = 64.0
    # Focus stacking 3: per-scale valid [min, max] of sqrt(area) in ORIGINAL-image pixels, one pair
    # per scale (-1 = no limit), as in SNIPER. Paper code on COCO: (75, -), (32, 180), (-, 75).
    # Not applied when a policy processes a single scale.
    cfg.MODEL.AUTOFOCUS.VALID_RANGES = [[75.0, -1.0], [32.0, 180.0], [-1.0, 75.0]]
    # Per-view detections entering focus stacking: "filtered" = Detectron2's own test-time output
    # of each view (MODEL.ROI_HEADS.SCORE_THRESH_TEST, NMS_THRESH_TEST, TEST.DETECTIONS_PER_IMAGE
    # applied per view); "raw" = the paper's: every class score > RAW_SCORE_THRESH of every
    # proposal, no per-view NMS and no per-view top-k (those three are switched off in the pass).
    cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS = "filtered"
    # Score threshold (probability) of "raw" view detections. Paper code: 0.001.
    cfg.MODEL.AUTOFOCUS.RAW_SCORE_THRESH = 0.001
    # Final merge over all views: "nms" (class-wise) or "soft_nms" (class-wise Gaussian
    # Soft-NMS). The paper's merge is VIEW_DETECTIONS "raw" + "soft_nms" with sigma 0.55.
    cfg.MODEL.AUTOFOCUS.NMS_METHOD = "nms"
    # IoU threshold of the final class-wise NMS.
    cfg.MODEL.AUTOFOCUS.NMS_THRESH = 0.5
    # Gaussian sigma of Soft-NMS (dimensionless, on IoU^2; paper code: 0.55).
    cfg.MODEL.AUTOFOCUS.SOFT_NMS_SIGMA = 0.55
    # Detections kept per image after the final merge (official code: 200; COCO's AP counts up to
    # 100 per image *and category*, so more than 100 per image still score). A larger
    # TEST.DETECTIONS_PER_IMAGE (the dense-scene setting, docs/configuration.md) raises it: the merge
    # keeps max(this, TEST.DETECTIONS_PER_IMAGE).
    cfg.MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE = 200
    # "grid" policy: square tile side, in pixels of the finer scale, and overlap ratio of tiles.
    cfg.MODEL.AUTOFOCUS.GRID_TILE_SIZE = 512
    cfg.MODEL.AUTOFOCUS.GRID_OVERLAP = 0.2

    # ------------------------------------------------------------------ reading image files
    # Largest image file read (demo.py, the data loaders, the benchmark), in megapixels (width x
    # height / 1e6); a larger one is refused naming the file. Guards against decompression bombs
    # as PIL's own limit (178.9 MP) does, which it replaces: raise it to read larger frames.
    cfg.INPUT.MAX_IMAGE_MPIX = DEFAULT_MAX_IMAGE_MPIX

    # ------------------------------------------------------- SNIPER chip training (data side)
    cfg.INPUT.SNIPER = CN()
    # Train on SNIPER chips (autofocus_d2.data.build_sniper_train_loader) instead of whole images:
    # every training scale's image is cut into CHIP_SIZE x CHIP_SIZE chips around its valid boxes.
    cfg.INPUT.SNIPER.ENABLED = False
    # Side of a training chip, in pixels of the training scale (paper: 512).
    cfg.INPUT.SNIPER.CHIP_SIZE = 512
    # Grid of candidate chip positions, in pixels of the training scale (paper: 32).
    cfg.INPUT.SNIPER.CHIP_STRIDE = 32
    # Training scales, [short, cap] pairs as MODEL.AUTOFOCUS.SCALES; empty = the inference chain
    # MODEL.AUTOFOCUS.SCALES, so every inference scale is trained.
    cfg.INPUT.SNIPER.SCALES = []
    # Per training scale, the valid [min, max] of sqrt(box area) in ORIGINAL-image pixels (-1 = no
    # limit). Boxes outside it are ignored in that scale's chips (no loss for anchors/proposals
    # that overlap them, see MODEL.SNIPER.IGNORE_IOU), not trained as background. Empty = the
    # inference MODEL.AUTOFOCUS.VALID_RANGES (only with INPUT.SNIPER.SCALES empty too). Paper code
    # (COCO), coarse to fine as here: scales (-1, 512), (800, 1280), (1400, 2000) with ranges
    # (120, -1), (32, 150), (-1, 80).
    cfg.INPUT.SNIPER.VALID_RANGES = []
    # FocusPixel chips (bool): at every training scale but the last, the objects that are
    # FocusPixels there (MODEL.FOCUS_HEAD.SMALL_RANGE / SMALL_MIN_FRAME) and lie in no positive chip
    # get chips of their own, so the focus head learns wherever the coarse scale must find small
    # objects, not only around the objects that scale detects. The official code needs none: its
    # coarsest scale (512 px) is one chip holding the whole image; the built-in chain's is not.
    cfg.INPUT.SNIPER.FOCUS_CHIPS = False
    # Negative chips (regions with proposals but no valid box), a json written by
    # tools/mine_negative_chips.py; "" = positive chips only.
    cfg.INPUT.SNIPER.NEGATIVE_CHIPS_FILE = ""
    # Negative chips drawn anew each epoch, as a share of the number of positive chips (>= 0).
    cfg.INPUT.SNIPER.NEGATIVES_PER_EPOCH = 0.2
    # Mining: a negative chip must hold at least this many proposals not covered by positive chips.
    cfg.INPUT.SNIPER.NEGATIVE_MIN_PROPOSALS = 10
    # Mining: proposals per image and training scale taken from the RPN (highest objectness first).
    cfg.INPUT.SNIPER.NEGATIVE_PROPOSALS_PER_IMAGE = 300

    # ---------------------------------------------------- SNIPER chip training (model side)
    cfg.MODEL.SNIPER = CN()
    # An anchor (RPN) or a background proposal (ROI heads) whose IoU with an ignored box (out of
    # the chip's valid range) is above this gives no loss. Paper code: 0.3 for anchors.
    cfg.MODEL.SNIPER.IGNORE_IOU = 0.3

    # ----------------------------------------------------- compact ResNet-FPN (CPU-sized model)
    cfg.MODEL.COMPACT_RESNET = CN()
    # Output channels of the stem (conv 7x7 stride 2 + max-pool: stride 4).
    cfg.MODEL.COMPACT_RESNET.STEM_OUT_CHANNELS = 16
    # Output channels of res2..res5 (strides 4, 8, 16, 32); BasicBlocks as in ResNet-18.
    cfg.MODEL.COMPACT_RESNET.STAGE_OUT_CHANNELS = [32, 64, 128, 256]
    # BasicBlocks per stage res2..res5.
    cfg.MODEL.COMPACT_RESNET.BLOCKS_PER_STAGE = [1, 1, 1, 1]


def load_autofocus_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """The tools' config: ``get_cfg()`` + :func:`add_autofocus_config` + ``config_file`` + ``opts``
    (KEY VALUE pairs), frozen."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_autofocus_config(cfg)
    merge_autofocus_file(cfg, config_file)
    cfg.merge_from_list(coerce_autofocus_numbers(cfg, opts))
    cfg.freeze()
    return cfg


def _autofocus_float_keys(cfg: CN) -> List[str]:
    """Keys of MODEL.AUTOFOCUS whose value is a float (an integer given for them is a number too)."""
    return [k for k, v in cfg.MODEL.AUTOFOCUS.items() if isinstance(v, float)]


def coerce_autofocus_numbers(cfg: CN, opts: Sequence) -> List:
    """
    ``opts`` (KEY VALUE pairs, as for ``cfg.merge_from_list``) with an integer value of a float-typed
    ``MODEL.AUTOFOCUS`` key made a float: yacs refuses ``MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX 0``
    ("Type mismatch (float vs int)"). Other keys and values are passed as given.
    """
    opts = list(opts)
    floats = {"MODEL.AUTOFOCUS." + k for k in _autofocus_float_keys(cfg)}
    for i in range(0, len(opts) - 1, 2):
        if opts[i] in floats:
            value = cfg._decode_cfg_value(opts[i + 1])
            if isinstance(value, int) and not isinstance(value, bool):
                opts[i + 1] = float(value)
    return opts


def merge_autofocus_file(cfg: CN, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``, with integers accepted for the float-typed
    MODEL.AUTOFOCUS keys (as :func:`coerce_autofocus_numbers`)."""
    from detectron2.config.compat import guess_version

    loaded = cfg.load_yaml_with_base(config_file, allow_unsafe=True)
    node = (loaded.get("MODEL") or {}).get("AUTOFOCUS") or {}
    changed = False
    for key in _autofocus_float_keys(cfg):
        if isinstance(node.get(key), int) and not isinstance(node[key], bool):
            node[key], changed = float(node[key]), True
    loaded = type(cfg)(loaded)
    version = loaded.get("VERSION", None) or guess_version(loaded, config_file)
    if changed and version == cfg.VERSION:
        cfg.merge_from_other_cfg(loaded)
    else:  # Detectron2's own path (and its upgrade of older config versions)
        cfg.merge_from_file(config_file)


def per_transition(values: Sequence, num_transitions: int, key: str) -> List:
    """Broadcast a one-per-scale-transition config value: a single entry applies to all."""
    values = list(values)
    if len(values) == 1:
        return values * num_transitions
    if len(values) != num_transitions:
        raise ValueError(
            f"{key} has {len(values)} entries; expected 1 or one per scale transition "
            f"({num_transitions}: one fewer than the scales of MODEL.AUTOFOCUS.SCALES)"
        )
    return values


def lookup_registry(registry, name: str, key: str):
    """``registry.get(name)``, or a ValueError naming the config ``key`` and the registered names."""
    try:
        return registry.get(name)
    except KeyError:
        raise ValueError(
            f"Invalid config {key}: {name!r} is not registered "
            f"(registered: {sorted(k for k, _ in registry)})"
        ) from None


def validate_autofocus_config(cfg: CN) -> None:
    """Check the AutoFocus keys for consistency; raise ValueError naming the offending key.

    The rules are those of :mod:`autofocus_d2.config_checks`, which the constructors of the
    pipeline, the chip policies, the scale chain and the focus settings also apply to their
    arguments (LazyConfig and plain Python); here they run first, with the yacs keys in the message.
    Checks that need the backbone (the head's input feature), MODEL.FOCUS_HEAD.TRAIN_ONLY and its
    LOSS_WEIGHT rule are done where the model is built (``FocusDetectorMixin.init_focus``), and
    MODEL.SNIPER.IGNORE_IOU where the SNIPER heads are; the SNIPER training keys (:func:`validate_sniper_config`) where the training chips are built, so an
    inference-only change of the scale chain does not trip over training settings.
    """
    head, af = cfg.MODEL.FOCUS_HEAD, cfg.MODEL.AUTOFOCUS
    check_focus_label_range(head.SMALL_RANGE, head.IGNORE_MAX, "MODEL.FOCUS_HEAD.SMALL_RANGE",
                            "MODEL.FOCUS_HEAD.IGNORE_MAX")
    check_choice(head.SMALL_MIN_FRAME, ("input", "next_scale"), "MODEL.FOCUS_HEAD.SMALL_MIN_FRAME")
    check_at_least(head.CONV_DIM, 1, "MODEL.FOCUS_HEAD.CONV_DIM", integer=True)
    check_choice(head.IGNORED_BOX_LABELS, ("size", "ignore"), "MODEL.FOCUS_HEAD.IGNORED_BOX_LABELS")
    check_at_least(head.LOSS_WEIGHT, 0, "MODEL.FOCUS_HEAD.LOSS_WEIGHT")

    check_scale_chain(af.SCALES, "MODEL.AUTOFOCUS.SCALES")
    n = len(af.SCALES) - 1
    if n > 0:
        check_probabilities(per_transition(af.FOCUS_THRESHOLD, n, "MODEL.AUTOFOCUS.FOCUS_THRESHOLD"),
                            "MODEL.AUTOFOCUS.FOCUS_THRESHOLD")
        check_dilations(per_transition(af.DILATION, n, "MODEL.AUTOFOCUS.DILATION"), "MODEL.AUTOFOCUS.DILATION")
        check_min_sizes(per_transition(af.MIN_CHIP_SIZE, n, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE"),
                        "MODEL.AUTOFOCUS.MIN_CHIP_SIZE")
    check_ranges(af.VALID_RANGES, "MODEL.AUTOFOCUS.VALID_RANGES", num_scales=n + 1)
    check_at_least(af.MAX_CHIPS_PER_IMAGE, 1, "MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE", integer=True)
    check_at_least(af.CHIP_BATCH_SIZE, 1, "MODEL.AUTOFOCUS.CHIP_BATCH_SIZE", integer=True)
    check_at_least(af.MAX_BATCH_PIXELS, 0, "MODEL.AUTOFOCUS.MAX_BATCH_PIXELS")
    check_choice(af.INFERENCE_DTYPE, INFERENCE_DTYPE_NAMES, "MODEL.AUTOFOCUS.INFERENCE_DTYPE")
    check_at_least(af.MAX_BATCH_PADDING, 0, "MODEL.AUTOFOCUS.MAX_BATCH_PADDING")
    check_tiling(af.MAX_CHIP_SIDE, af.TILE_OVERLAP, "MODEL.AUTOFOCUS.MAX_CHIP_SIDE", "MODEL.AUTOFOCUS.TILE_OVERLAP")
    check_at_least(af.PROPOSALS_PER_MPIX, 0, "MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX")
    check_at_least(af.MIN_PROPOSALS, 1, "MODEL.AUTOFOCUS.MIN_PROPOSALS", integer=True)
    check_at_least(af.BORDER_MARGIN, 0, "MODEL.AUTOFOCUS.BORDER_MARGIN")
    check_at_least(af.SMALL_DROP_SIZE, 0, "MODEL.AUTOFOCUS.SMALL_DROP_SIZE")
    check_choice(af.VIEW_DETECTIONS, ("filtered", "raw"), "MODEL.AUTOFOCUS.VIEW_DETECTIONS")
    check_in_range(af.RAW_SCORE_THRESH, 0.0, 1.0, "MODEL.AUTOFOCUS.RAW_SCORE_THRESH", hi_open=True)
    check_choice(af.NMS_METHOD, NMS_METHODS, "MODEL.AUTOFOCUS.NMS_METHOD")
    check_in_range(af.NMS_THRESH, 0.0, 1.0, "MODEL.AUTOFOCUS.NMS_THRESH", lo_open=True)
    check_at_least(af.SOFT_NMS_SIGMA, 1e-6, "MODEL.AUTOFOCUS.SOFT_NMS_SIGMA")
    check_at_least(af.DETECTIONS_PER_IMAGE, 1, "MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE", integer=True)
    check_at_least(af.GRID_TILE_SIZE, 1, "MODEL.AUTOFOCUS.GRID_TILE_SIZE")
    check_in_range(af.GRID_OVERLAP, 0.0, 1.0, "MODEL.AUTOFOCUS.GRID_OVERLAP", hi_open=True)
    check_at_least(cfg.INPUT.MAX_IMAGE_MPIX, 0.001, "INPUT.MAX_IMAGE_MPIX")
    check_canvas_list(af.CHIP_CANVASES, "MODEL.AUTOFOCUS.CHIP_CANVASES")
    check_at_least(af.CHIP_CANVAS_GAP, 0, "MODEL.AUTOFOCUS.CHIP_CANVAS_GAP", integer=True)
    check_choice(af.AREA_DOWNSCALE, (True, False), "MODEL.AUTOFOCUS.AREA_DOWNSCALE")


def validate_sniper_config(cfg: CN) -> None:
    """Check the INPUT.SNIPER and MODEL.SNIPER keys; raise ValueError naming the offending key."""
    sn = cfg.INPUT.SNIPER
    check(sn.CHIP_SIZE >= 32, "INPUT.SNIPER.CHIP_SIZE", f"must be >= 32, got {sn.CHIP_SIZE}")
    check(1 <= sn.CHIP_STRIDE <= sn.CHIP_SIZE, "INPUT.SNIPER.CHIP_STRIDE",
          f"must be in [1, CHIP_SIZE], got {sn.CHIP_STRIDE}")
    scales = sniper_training_scales(cfg)
    check_scale_chain(scales, "INPUT.SNIPER.SCALES")
    check(not sn.SCALES or sn.VALID_RANGES, "INPUT.SNIPER.VALID_RANGES",
          "is empty while INPUT.SNIPER.SCALES is set: give one training range per training scale")
    ranges = sniper_valid_ranges(cfg)
    check(len(ranges) == len(scales), "INPUT.SNIPER.VALID_RANGES",
          f"{len(ranges)} ranges for {len(scales)} training scales (INPUT.SNIPER.SCALES)")
    check_ranges(ranges, "INPUT.SNIPER.VALID_RANGES")
    check_choice(sn.FOCUS_CHIPS, (True, False), "INPUT.SNIPER.FOCUS_CHIPS")
    check(sn.NEGATIVES_PER_EPOCH >= 0, "INPUT.SNIPER.NEGATIVES_PER_EPOCH",
          f"must be >= 0, got {sn.NEGATIVES_PER_EPOCH}")
    check(sn.NEGATIVE_MIN_PROPOSALS >= 1, "INPUT.SNIPER.NEGATIVE_MIN_PROPOSALS",
          f"must be >= 1, got {sn.NEGATIVE_MIN_PROPOSALS}")
    check(sn.NEGATIVE_PROPOSALS_PER_IMAGE >= 1, "INPUT.SNIPER.NEGATIVE_PROPOSALS_PER_IMAGE",
          f"must be >= 1, got {sn.NEGATIVE_PROPOSALS_PER_IMAGE}")


def sniper_training_scales(cfg: CN) -> List[List[float]]:
    """The SNIPER training scales: INPUT.SNIPER.SCALES, or the inference chain when empty."""
    scales = cfg.INPUT.SNIPER.SCALES or cfg.MODEL.AUTOFOCUS.SCALES
    return [list(map(float, s)) for s in scales]


def sniper_valid_ranges(cfg: CN) -> List[List[float]]:
    """The training valid ranges: INPUT.SNIPER.VALID_RANGES, or the inference ones when empty."""
    ranges = cfg.INPUT.SNIPER.VALID_RANGES or cfg.MODEL.AUTOFOCUS.VALID_RANGES
    return [list(map(float, r)) for r in ranges]
