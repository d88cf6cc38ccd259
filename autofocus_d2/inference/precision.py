"""Mixed-precision inference: the detector passes of the pipeline under autocast.

Chip generation, frame mapping and focus stacking stay in float32: only the detector pass (the
convolutions and heads) runs in the reduced precision, and its outputs are cast back.
"""
import contextlib
from typing import ContextManager, Optional

import torch
from detectron2.structures import Boxes, Instances

from ..config import INFERENCE_DTYPE_NAMES

__all__ = ["INFERENCE_DTYPES", "inference_autocast", "outputs_to_float32"]

# MODEL.AUTOFOCUS.INFERENCE_DTYPE values -> torch dtypes (None: no autocast).
INFERENCE_DTYPES = dict(zip(INFERENCE_DTYPE_NAMES, (None, torch.float16, torch.bfloat16)))


def inference_autocast(device: torch.device, dtype: str) -> ContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype`` ("float16"/"bfloat16"), or a no-op
    for "float32". float16 needs CUDA (CPU kernels are bfloat16): it raises on another device."""
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(
            f"Invalid MODEL.AUTOFOCUS.INFERENCE_DTYPE {dtype!r}; choose from {sorted(INFERENCE_DTYPES)}"
        )
    torch_dtype: Optional[torch.dtype] = INFERENCE_DTYPES[dtype]
    if torch_dtype is None:
        return contextlib.nullcontext()
    device = torch.device(device)
    if torch_dtype == torch.float16 and device.type != "cuda":
        raise ValueError(
            f"MODEL.AUTOFOCUS.INFERENCE_DTYPE 'float16' needs CUDA; the model is on {device.type} "
            "(use 'bfloat16' or 'float32' there)"
        )
    return torch.autocast(device_type=device.type, dtype=torch_dtype)


def outputs_to_float32(instances: Instances) -> Instances:
    """Cast every floating-point field of ``instances`` (boxes included) to float32, in place."""
    for name, value in list(instances.get_fields().items()):
        if isinstance(value, Boxes) and value.tensor.dtype != torch.float32:
            instances.set(name, Boxes(value.tensor.float()))
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            instances.set(name, value.float())
    return instances
