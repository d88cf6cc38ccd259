"""The registry of inference pipelines, below both modeling and inference.

The meta-architectures (:mod:`autofocus_d2.modeling`) build their pipeline by name from here and
:mod:`autofocus_d2.inference` registers its pipelines in it, so modeling imports nothing of
inference. ``import autofocus_d2`` imports both, so every built-in pipeline is registered before a
model is built.
"""
from detectron2.utils.registry import Registry

from .config import lookup_registry

__all__ = ["AUTOFOCUS_PIPELINE_REGISTRY", "build_autofocus_pipeline"]

AUTOFOCUS_PIPELINE_REGISTRY = Registry("AUTOFOCUS_PIPELINE")
AUTOFOCUS_PIPELINE_REGISTRY.__doc__ = """
Registry for inference pipelines, built as ``cls(cfg)`` and called as
``pipeline(model, batched_inputs, with_details=False)`` by the AutoFocus meta-architectures in eval
mode; ``model`` provides :class:`autofocus_d2.inference.FocusDetector`.
"""


def build_autofocus_pipeline(cfg):
    """The pipeline named by ``MODEL.AUTOFOCUS.PIPELINE`` in AUTOFOCUS_PIPELINE_REGISTRY."""
    name = cfg.MODEL.AUTOFOCUS.PIPELINE
    return lookup_registry(AUTOFOCUS_PIPELINE_REGISTRY, name, "MODEL.AUTOFOCUS.PIPELINE")(cfg)
