"""Multi-process training on the CPU: the plugin's DDP wrapper and train_net.py with 2 processes."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch

from autofocus_d2.utils.distributed import check_amp_device, create_ddp_model



def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same initial weights in both processes
        model = torch.nn.Linear(3, 2)
        ddp = create_ddp_model(model, broadcast_buffers=False)
        x = torch.full((4, 3), float(rank + 1))  # different data per process
        ddp(x).sum().backward()
        torch.save({"type": type(ddp).__name__, "grad": model.weight.grad.clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_create_ddp_model_averages_gradients_of_cpu_processes(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["type"] == r1["type"] == "DistributedDataParallel"
    # d(sum(Wx + b))/dW = 4 * x per row: 4 in process 0, 8 in process 1; DDP averages to 6.
    assert torch.equal(r0["grad"], torch.full((2, 3), 6.0))
    assert torch.equal(r1["grad"], r0["grad"])


def test_one_process_keeps_the_plain_model():
    model = torch.nn.Linear(3, 2)
    assert create_ddp_model(model) is model


def test_amp_on_cpu_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED"):
        check_amp_device(True, "cpu")
    check_amp_device(False, "cpu")
    check_amp_device(True, "cuda")


def _launch_needs_cuda() -> bool:
    """Detectron2 0.6's launch() asserts CUDA for more than one process; newer ones use gloo."""
    import inspect

    return '"GLOO"' not in inspect.getsource(sys.modules[d2_launch.__module__])


@pytest.mark.skipif(_launch_needs_cuda() and not torch.cuda.is_available(),
                    reason="this Detectron2's launch() starts several processes only with CUDA (0.6); "
                           "upstream main uses gloo on the CPU")
def test_train_net_trains_with_two_cpu_processes(repo_root, tmp_path):
    config = os.path.join(repo_root, "configs/Synthetic/autofocus_compact_fpn.yaml")
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "train_net.py"), "--config-file", config, "--num-gpus", "2",
         "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("autofocus_synth_tiny",)', "DATASETS.TEST", "()",
         "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6",
         "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, cwd=repo_root, timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "World size: 2" in log, log[-2000:]
    state = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 5  # 6 iterations (0..5) of 1 chip per process
    assert any(k.startswith("focus_head.") for k in state["model"])  # saved unwrapped
