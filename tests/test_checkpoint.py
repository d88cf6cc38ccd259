"""AtomicCheckpointer: saves a kill cannot destroy, resume from the newest readable checkpoint,
weights that must fit the model, and unreadable files named."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from autofocus_d2.checkpoint import AtomicCheckpointer, CheckpointError, WeightsMismatchError, load_weights
from autofocus_d2.config import load_autofocus_config
from autofocus_d2.model_zoo import get_config_file

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")


def _net(out=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, out))


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _saved_run(folder, iterations=(1, 2)):
    """Checkpoints model_<i> for ``iterations`` and model_final, weights seeded by iteration;
    returns the models saved, by file name."""
    saved = {}
    for i, name in enumerate([f"model_{it:07d}" for it in iterations] + ["model_final"]):
        net = _net(seed=i)
        AtomicCheckpointer(net, str(folder)).save(name, iteration=i)
        os.utime(folder / f"{name}.pth", (1e9 + i, 1e9 + i))  # saved one after the other
        saved[f"{name}.pth"] = net
    return saved


def _half_writing_save(data, f):
    """torch.save that writes the first half of the file and then fails (a save interrupted)."""
    import io

    buf = io.BytesIO()
    _real_save(data, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise RuntimeError("interrupted half-way")


_real_save = torch.save


def test_a_save_interrupted_half_way_leaves_the_previous_checkpoint_and_last_checkpoint(tmp_path, monkeypatch):
    saved = _saved_run(tmp_path, iterations=())
    last = (tmp_path / "last_checkpoint").read_text()
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(torch, "save", _half_writing_save)
    with pytest.raises(RuntimeError, match="interrupted half-way"):
        AtomicCheckpointer(_net(seed=9), str(tmp_path)).save("model_final", iteration=9)
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == last == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == before  # no partial file left behind
    net = _net(seed=5)
    assert AtomicCheckpointer(net, str(tmp_path)).resume_or_load("", resume=True) == {"iteration": 0}
    assert _same_weights(net, saved["model_final.pth"])


_CHILD = textwrap.dedent("""
    import io, sys, time, torch
    from detectron2.checkpoint import DetectionCheckpointer
    from autofocus_d2.checkpoint import AtomicCheckpointer
    real = torch.save
    def half_then_hang(data, f):
        buf = io.BytesIO(); real(data, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        print("HALF", flush=True); time.sleep(120)
    torch.save = half_then_hang
    cls = {"atomic": AtomicCheckpointer, "detectron2": DetectionCheckpointer}[sys.argv[2]]
    torch.manual_seed(9)
    cls(torch.nn.Sequential(torch.nn.Linear(3, 4)), sys.argv[1]).save("model_final", iteration=9)
""")


@pytest.mark.slow
@pytest.mark.parametrize("checkpointer", ["atomic", "detectron2"])
def test_sigkill_during_a_save(repo_root, tmp_path, checkpointer):
    """A real process SIGKILLed half-way through rewriting model_final.pth: with AtomicCheckpointer
    the old file is intact; with Detectron2's own checkpointer (in place) it is destroyed."""
    saved = _saved_run(tmp_path, iterations=())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), checkpointer],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "HALF"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    net = _net(seed=5)
    if checkpointer == "detectron2":
        with pytest.raises(CheckpointError, match="model_final.pth: a PyTorch zip checkpoint cut short"):
            load_weights(net, str(tmp_path / "model_final.pth"))
        return
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".tmp")]) == 1  # the killed save's
    assert AtomicCheckpointer(net, str(tmp_path)).resume_or_load("", resume=True) == {"iteration": 0}
    assert _same_weights(net, saved["model_final.pth"])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # removed by the resume


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    path.write_bytes(path.read_bytes()[:300])


def _text(path):
    path.write_text("this is not a checkpoint\n")


def _deleted(path):
    path.unlink()


@pytest.mark.parametrize("damage, why", [
    (_empty, "the file is empty"),
    (_truncated, "a PyTorch zip checkpoint cut short"),
    (_text, "not a PyTorch or Detectron2 checkpoint"),
    (_deleted, "does not exist"),
])
def test_resume_skips_unreadable_newest_checkpoints_for_the_newest_readable(tmp_path, logged, damage, why):
    saved = _saved_run(tmp_path, iterations=(1, 2))
    damage(tmp_path / "model_final.pth")
    _truncated(tmp_path / "model_0000002.pth")
    net = _net(seed=7)
    messages = logged("autofocus_d2.checkpoint")
    extra = AtomicCheckpointer(net, str(tmp_path)).resume_or_load("", resume=True)
    assert extra == {"iteration": 0}  # model_0000001
    assert _same_weights(net, saved["model_0000001.pth"])
    text = "\n".join(messages)
    assert "Cannot resume from " + str(tmp_path / "model_final.pth") in text and why in text
    assert "Resumed from " + str(tmp_path / "model_0000001.pth") in text


def test_resume_with_no_readable_checkpoint_is_an_error_listing_them(tmp_path):
    _saved_run(tmp_path, iterations=(1,))
    for name in ("model_final.pth", "model_0000001.pth"):
        _empty(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"--resume: no readable checkpoint in .*model_final.pth: .*empty.*"
                                              r"model_0000001.pth: .*empty.*Remove .*last_checkpoint"):
        AtomicCheckpointer(_net(), str(tmp_path)).resume_or_load("", resume=True)


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    ("half", "a PyTorch zip checkpoint cut short"),
    (b"<html>404 Not Found</html>", "not a PyTorch or Detectron2 checkpoint (26 bytes starting with b'<htm')"),
    ("list", "is not a checkpoint: it holds a list"),
])
def test_an_unreadable_weights_file_is_named(tmp_path, content, why):
    path = tmp_path / "weights.pth"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "half":
        torch.save(_net().state_dict(), path)
        _truncated(path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_weights(_net(), str(path))
    assert str(path) in str(e.value) and why in str(e.value)
    assert "weights_only" not in str(e.value)


def _detector(num_classes):
    cfg = load_autofocus_config(CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)])
    torch.manual_seed(0)
    return build_model(cfg)


def test_weights_of_another_class_count_are_an_error_unless_finetuning(tmp_path):
    DetectionCheckpointer(_detector(3), save_dir=str(tmp_path)).save("three")
    path = str(tmp_path / "three.pth")
    model = _detector(6)
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert msg.startswith(f"The weights of {path} do not fit the model: 4 tensors differ in shape")
    assert "roi_heads.box_predictor.cls_score.weight: (4, 256) in the file vs (7, 256) in the model" in msg
    assert "the class count differs (3 classes in the file, 6 in the model)" in msg
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in msg and "--finetune" in msg
    # --finetune: Detectron2's behaviour, everything but the classifier outputs loaded.
    model = _detector(6)
    torch.nn.init.zeros_(model.backbone.bottom_up.stem.conv1.weight)
    load_weights(model, path, allow_mismatch=True)
    three = torch.load(path, weights_only=True)["model"]
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, three["backbone.bottom_up.stem.conv1.weight"])
    assert model.roi_heads.box_predictor.cls_score.weight.shape == (7, 256)


def test_weights_of_another_architecture_are_an_error(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(WeightsMismatchError, match="hold no tensor of this model"):
        load_weights(_net(), path)
    wide = str(tmp_path / "wide.pth")
    torch.save({"model": _net(out=5).state_dict()}, wide)
    with pytest.raises(WeightsMismatchError, match=r"0.weight: \(5, 3\) in the file vs \(4, 3\) in the model.*"
                                                   r"another architecture or width"):
        load_weights(_net(), wide)
