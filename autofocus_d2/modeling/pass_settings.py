"""Per-pass detector settings without changing the detector.

A pipeline pass may need other test-time settings than the ones the detector was built with: a
proposal budget for the view's size (MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX) or raw per-view
detections (VIEW_DETECTIONS "raw"). Detectron2's heads read those settings from plain attributes
(the RPN's ``pre_nms_topk``/``post_nms_topk`` tables, the box predictors' ``test_score_thresh``,
``test_nms_thresh``, ``test_topk_per_image``, RetinaNet's ``test_score_thresh``, ``test_nms_thresh``
and ``max_detections_per_image``). The functions here return a *pass twin* of such a module: a
shallow copy that shares every parameter, buffer, submodule and hook of the original and holds the
pass's settings as its own attributes. The original module is never written to, so two pipelines
(or two threads) with different settings can run on one model at once, and nothing needs restoring
after an exception.
"""
import copy
import sys
from typing import List

from torch import nn

__all__ = [
    "pass_twin",
    "box_predictors",
    "capped_proposal_generator",
    "raw_roi_heads",
    "raw_dense_detector",
]


def pass_twin(module: nn.Module, **settings) -> nn.Module:
    """
    A shallow copy of ``module`` with ``settings`` (attribute name -> value) set on the copy only.

    The copy shares the original's parameters, buffers, submodules and hooks (one set of weights,
    no memory cost beyond the attribute dict); each setting must name an existing attribute. A
    setting whose value is an ``nn.Module`` shadows the original's submodule of that name for
    attribute access (``twin.name``), which is how Detectron2's heads reach their submodules; the
    original's module tree is left as it is.
    """
    twin = copy.copy(module)  # own __dict__; the parameter, buffer, module and hook dicts are shared
    for name, value in settings.items():
        if not hasattr(module, name):
            raise AttributeError(f"{type(module).__name__} has no attribute {name!r} to set for a pass")
        if isinstance(value, nn.Module):
            object.__setattr__(twin, name, value)  # shadows twin._modules[name] on lookup only
        else:
            setattr(twin, name, value)
    return twin


def box_predictors(roi_heads: nn.Module) -> List[nn.Module]:
    """The box predictors (FastRCNNOutputLayers) of Detectron2's ROI heads (Cascade: several).
    Raises ValueError, naming MODEL.AUTOFOCUS.VIEW_DETECTIONS, for heads without one."""
    predictor = getattr(roi_heads, "box_predictor", None)
    predictors = list(predictor) if isinstance(predictor, nn.ModuleList) else [predictor]
    if any(p is None or not hasattr(p, "test_score_thresh") for p in predictors):
        raise ValueError(
            "MODEL.AUTOFOCUS.VIEW_DETECTIONS 'raw' needs ROI heads whose box_predictor is Detectron2's "
            f"FastRCNNOutputLayers; {type(roi_heads).__name__} has none (use VIEW_DETECTIONS 'filtered')"
        )
    return predictors


def capped_proposal_generator(generator: nn.Module, cap: int) -> nn.Module:
    """A pass twin of Detectron2's RPN whose test-time ``pre_nms_topk`` and ``post_nms_topk``
    (proposals per feature level before NMS, per image after) are at most ``cap`` (never raised)."""
    settings = {}
    for attr in ("pre_nms_topk", "post_nms_topk"):
        table = getattr(generator, attr, None)
        if not isinstance(table, dict) or False not in table:
            raise ValueError(
                "MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX needs a proposal generator with Detectron2 RPN's "
                f"{attr} table; {type(generator).__name__} has none (set PROPOSALS_PER_MPIX to 0)"
            )
        settings[attr] = {**table, False: min(table[False], int(cap))}
    return pass_twin(generator, **settings)


def raw_roi_heads(roi_heads: nn.Module, score_thresh: float) -> nn.Module:
    """A pass twin of Detectron2's ROI heads whose box predictors return raw detections: test
    score threshold ``score_thresh`` (probability), no per-image NMS (IoU threshold 1.0 keeps every
    box, IoU is never above 1) and no per-image top-k (-1 keeps all)."""
    raw = {"test_score_thresh": float(score_thresh), "test_nms_thresh": 1.0, "test_topk_per_image": -1}
    twins = [pass_twin(p, **raw) for p in box_predictors(roi_heads)]
    predictor = nn.ModuleList(twins) if isinstance(roi_heads.box_predictor, nn.ModuleList) else twins[0]
    return pass_twin(roi_heads, box_predictor=predictor)


def raw_dense_detector(model: nn.Module, score_thresh: float) -> nn.Module:
    """
    A pass twin of a Detectron2 RetinaNet that returns raw detections: test score threshold
    ``score_thresh`` (probability), no per-image NMS (IoU threshold 1.0) and no per-image top-k
    (``max_detections_per_image`` unbounded).

    ``test_topk_candidates`` (MODEL.RETINANET.TOPK_CANDIDATES_TEST, candidates per feature level
    before NMS) is left as configured: it is RetinaNet's candidate budget, the counterpart of the
    RPN proposal budget that AutoFocusRCNN's raw pass keeps too, and it bounds the pass's output.
    """
    attrs = ("test_score_thresh", "test_nms_thresh", "max_detections_per_image")
    missing = [a for a in attrs if not hasattr(model, a)]
    if missing:
        raise ValueError(
            "MODEL.AUTOFOCUS.VIEW_DETECTIONS 'raw' needs Detectron2 RetinaNet's test-time attributes; "
            f"{type(model).__name__} lacks {missing} (use VIEW_DETECTIONS 'filtered')"
        )
    return pass_twin(
        model,
        test_score_thresh=float(score_thresh),
        test_nms_thresh=1.0,
        max_detections_per_image=sys.maxsize,  # slicing keep[:maxsize] keeps all
    )
