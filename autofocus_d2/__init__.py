"""AutoFocus (Najibi, Singh, Davis, ICCV 2019) for Detectron2.

``import autofocus_d2`` registers the meta-architectures ``AutoFocusRCNN`` and
``AutoFocusRetinaNet``, the FocusPixel heads, the inference pipeline, the compact backbones and the
built-in datasets; ``add_autofocus_config(cfg)`` adds the config keys.
"""
import warnings

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "autofocus_d2 needs detectron2, which is not on PyPI. Install it with "
        "`python tools/install_detectron2.py` from the autofocus-d2 source tree (see README.md)."
    ) from e

# Importing Detectron2's modeling scripts two box functions with torch.jit.script, which recent torch
# reports as deprecated (a FutureWarning each): ignored here, for these imports only. The tools'
# other known third-party warnings: autofocus_d2.utils.quiet_logs.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from .config import add_autofocus_config
    from . import modeling  # noqa: F401  (registers AutoFocusRCNN/RetinaNet, FocusPixel heads, backbones)
    from . import inference  # noqa: F401  (registers the pipelines the models build by name)
    from .data import register_synthetic_datasets

# The built-in datasets, under $AUTOFOCUS_DATA (default ./datasets/autofocus_synth); generated on
# first use. Detectron2 registers its own built-in datasets at import in the same way.
register_synthetic_datasets()

__all__ = ["add_autofocus_config"]
__version__ = "0.1.0"
