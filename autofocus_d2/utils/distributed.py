"""Multi-process training helpers that work for CPU models as well as CUDA ones."""
import inspect
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["create_ddp_model", "check_amp_device", "launch_starts_cpu_processes"]


def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False, **kwargs) -> nn.Module:
    """
    Detectron2's ``create_ddp_model`` (DistributedDataParallel when there is more than one process,
    else ``model`` itself), also for a model on the CPU: Detectron2 always passes
    ``device_ids=[local rank]``, which DistributedDataParallel refuses for CPU modules (on the CPU
    the gloo backend averages the gradients and ``device_ids`` must be None).

    Args:
        model: the model, already on its device.
        fp16_compression: compress gradients to fp16 for the all-reduce (CUDA only, as Detectron2).
        kwargs: other arguments of DistributedDataParallel (e.g. ``broadcast_buffers=False``).
    """
    if comm.get_world_size() == 1:
        return model
    on_cpu = next(model.parameters()).device.type == "cpu"
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = None if on_cpu else [comm.get_local_rank()]
    if fp16_compression and on_cpu:
        raise ValueError("fp16_compression needs CUDA (NCCL); the model is on the CPU")
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def check_amp_device(amp_enabled: bool, device: str, key: str = "SOLVER.AMP.ENABLED") -> None:
    """Detectron2's AMPTrainer needs CUDA (it asserts so at the first step); say it up front, naming
    the key, rather than after the data loader and model are built."""
    if amp_enabled and torch.device(device).type != "cuda":
        raise ValueError(
            f"{key} is True but the model runs on {device!r}: Detectron2's AMPTrainer (mixed-precision "
            "training) needs CUDA. Set it False on the CPU (the FocusPixel loss is computed in float32 "
            "under autocast either way)"
        )


def launch_starts_cpu_processes() -> bool:
    """Whether this Detectron2's ``launch`` can start several processes without CUDA: upstream
    main initializes gloo when CUDA is absent, 0.6 asserts CUDA in every worker."""
    return '"GLOO"' in inspect.getsource(sys.modules[launch.__module__])
