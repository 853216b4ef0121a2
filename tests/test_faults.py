"""Faults during work: out of memory, a full disk, stopping at any moment, resuming.

Out-of-memory and full-disk errors are simulated by making the model's forward pass or
``os.fsync`` raise the error PyTorch or the OS raises; everything else runs for real.
"""

import errno
import threading

import numpy as np
import pytest
import torch
from _synthetic import nuclei_image

from napari_unet.cli import main
from napari_unet.core import checkpoint as checkpoint_module
from napari_unet.core import io as io_module
from napari_unet.core import train as train_module
from napari_unet.core.checkpoint import load_checkpoint, new_bundle
from napari_unet.core.device import is_out_of_memory
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import read_labels, write_labels_tiff
from napari_unet.core.model import UNet, UNetSpec
from napari_unet.core.predict import PredictConfig, iter_predict, predict
from napari_unet.core.train import TrainConfig, iter_train, train

TINY = dict(depth=2, base_channels=8, patch_size=64, batch_size=4, steps_per_epoch=10, device="cpu")


@pytest.fixture(scope="module")
def data():
    pairs = [nuclei_image(seed=s) for s in range(4)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _oom():
    return torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
    )


@pytest.fixture
def memory_limit(monkeypatch):
    """Make the UNet raise CUDA's out-of-memory error above a number of input pixels.

    Returns a dict: set ``train`` / ``eval`` to the largest batch x height x width that
    fits in training / inference mode (None: no limit); ``calls`` counts the refusals.
    """
    limits = {"train": None, "eval": None, "calls": 0}
    forward = UNet.forward

    def limited(self, x):
        limit = limits["train" if self.training else "eval"]
        if limit is not None and x.shape[0] * x.shape[-2] * x.shape[-1] > limit:
            limits["calls"] += 1
            raise _oom()
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", limited)
    return limits


def _drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as e:
            return items, e.value


# ------------------------------------------------------------------ out of memory
def test_is_out_of_memory_recognises_the_allocators_errors():
    assert is_out_of_memory(_oom())
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_training_retries_with_a_smaller_batch_after_out_of_memory(data, memory_limit, tmp_path):
    memory_limit["train"] = 2 * 64 * 64  # batch 4 of 64x64 does not fit, batch 2 does
    ckpt = tmp_path / "m.pt"
    progress, result = _drain(
        iter_train(*data, TrainConfig(epochs=1, checkpoint_path=str(ckpt), **TINY))
    )
    assert memory_limit["calls"] == 1
    assert result.steps == 10 and result.stopped == "epochs"
    assert any("batch size 2" in n and "out of memory" in n for n in result.notes)
    assert any(p.kind == "step" and "out of memory" in p.message for p in progress)
    saved = load_checkpoint(ckpt)
    assert saved.meta["memory_adjustments"] == {"batch_size": 2, "patch_size": 64}
    assert all(torch.isfinite(p).all() for p in saved.model.parameters())


def test_training_shrinks_the_patch_when_batch_one_does_not_fit(data, memory_limit):
    memory_limit["train"] = 32 * 32
    result = train(*data, TrainConfig(epochs=1, **TINY))
    assert result.steps == 10
    assert result.bundle.meta["memory_adjustments"] == {"batch_size": 1, "patch_size": 32}


def test_training_that_never_fits_says_so_and_keeps_the_old_model(data, memory_limit, tmp_path):
    old = checkpoint_module.save_checkpoint(
        new_bundle(UNetSpec(depth=2, base_channels=4), {"outputs": ["foreground"]}),
        tmp_path / "m.pt",
    )
    before = old.read_bytes()
    memory_limit["train"] = 0
    cfg = TrainConfig(epochs=1, checkpoint_path=str(old), **TINY)
    with pytest.raises(NapariUnetError, match="ran out of memory even with one 32x32 patch"):
        train(*data, cfg)
    assert old.read_bytes() == before


def test_validation_retries_with_smaller_tiles(data, memory_limit):
    memory_limit["eval"] = 64 * 64  # validation tiles of 96x96 and more do not fit
    result = train(*data, TrainConfig(epochs=1, **TINY))
    assert memory_limit["calls"] >= 1
    assert result.history and np.isfinite(result.history[-1]["val_loss"])


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    spec = UNetSpec(in_channels=1, out_channels=2, depth=2, base_channels=4)
    return new_bundle(spec, {"outputs": ["foreground", "boundary"]})


def test_prediction_retries_with_fewer_then_smaller_tiles(small_model, memory_limit):
    img, _ = nuclei_image(shape=(300, 280), n=30, seed=3)
    memory_limit["eval"] = 128 * 128
    cfg = PredictConfig(tile_size=256, overlap=32, batch_size=4, device="cpu")
    progress, result = _drain(iter_predict(small_model, img, config=cfg))
    assert [n.split("retried with ")[1] for n in result.notes] == [
        "2 tile(s) of 256 pixels per step",
        "1 tile(s) of 256 pixels per step",
        "1 tile(s) of 128 pixels per step",
    ]
    assert progress[-1].done == progress[-1].total  # the progress bar ends full
    # the same as a prediction that used the small tile from the start
    memory_limit["eval"] = None
    expected = predict(
        small_model, img, config=PredictConfig(tile_size=128, overlap=32, batch_size=1)
    )
    np.testing.assert_array_equal(result.labels, expected.labels)
    for name in expected.probabilities:
        np.testing.assert_allclose(result.probabilities[name], expected.probabilities[name])


def test_prediction_that_never_fits_says_so(small_model, memory_limit):
    memory_limit["eval"] = 0
    with pytest.raises(NapariUnetError, match="even with one 64x64 tile"):
        predict(small_model, np.zeros((200, 200), np.float32), config=PredictConfig(device="cpu"))


def test_other_runtime_errors_are_not_taken_for_out_of_memory(small_model, monkeypatch):
    def broken(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(UNet, "forward", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        predict(small_model, np.zeros((64, 64), np.float32), config=PredictConfig(device="cpu"))


# ------------------------------------------------------------------ full disk
@pytest.fixture
def full_disk(monkeypatch):
    """While ``state["full"]`` is True, flushing a file fails as on a full disk."""
    state = {"full": False}
    fsync = io_module.os.fsync

    def failing_fsync(fd):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", failing_fsync)
    return state


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_full_disk_keeps_the_previous_tiff(tmp_path, full_disk):
    path = tmp_path / "labels.tif"
    first = np.arange(64, dtype=np.uint32).reshape(8, 8)
    write_labels_tiff(path, first)
    full_disk["full"] = True
    with pytest.raises(NapariUnetError, match="disk holding .* is full.*previous file"):
        write_labels_tiff(path, first[::-1] + 1, overwrite=True)
    np.testing.assert_array_equal(read_labels(path), first)
    assert _leftovers(tmp_path) == []
    with pytest.raises(NapariUnetError, match="nothing was written"):
        write_labels_tiff(tmp_path / "new.tif", first)
    assert not (tmp_path / "new.tif").exists()


def test_full_disk_during_training_keeps_training_and_the_last_saved_model(
    data, tmp_path, full_disk
):
    ckpt = tmp_path / "m.pt"
    cfg = TrainConfig(epochs=3, patience=None, checkpoint_path=str(ckpt), **TINY)
    gen = iter_train(*data, cfg)
    saved_steps = []
    while True:
        try:
            p = next(gen)
        except StopIteration as e:
            result = e.value
            break
        if p.kind == "validation" and ckpt.exists() and not full_disk["full"]:
            saved_steps.append(load_checkpoint(ckpt).meta["history"][-1]["step"])
            full_disk["full"] = True  # the disk fills up after the first save
    assert result.steps == 30 and result.stopped == "epochs"  # training went on
    assert result.save_error is not None and "is full" in result.save_error
    assert result.checkpoint is None
    assert any("could not save the model" in n for n in result.notes)
    on_disk = load_checkpoint(ckpt)  # the first version, intact
    assert on_disk.meta["history"][-1]["step"] == saved_steps[0] == 10
    assert _leftovers(tmp_path) == []


def test_full_disk_on_the_command_line_is_one_clear_line(tmp_path, full_disk, capsys, data):
    import tifffile

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for i, (img, lab) in enumerate(zip(*data, strict=True)):
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", img)
        tifffile.imwrite(tmp_path / "labels" / f"n{i}.tif", lab.astype(np.uint16))
    full_disk["full"] = True
    argv = ["train", "--images", tmp_path / "images", "--labels", tmp_path / "labels"]
    argv += ["--out", tmp_path / "out" / "m.pt", "--epochs", "1", "--depth", "2"]
    argv += ["--base-channels", "4", "--patch-size", "32", "--steps-per-epoch", "2"]
    argv += ["--device", "cpu"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("napari-unet: error: the trained model could not be saved")
    assert "is full" in err[-1]
    assert not (tmp_path / "out" / "m.pt").exists()
    assert _leftovers(tmp_path / "out") == []


# ------------------------------------------------------------------ stopping at any moment
def test_stop_during_the_first_step_keeps_a_loadable_model(data, tmp_path, monkeypatch):
    stop = threading.Event()
    forward = UNet.forward

    def stopping(self, x):
        if self.training:
            stop.set()  # the user presses Stop while the first step runs
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", stopping)
    ckpt = tmp_path / "m.pt"
    result = train(*data, TrainConfig(epochs=5, checkpoint_path=str(ckpt), **TINY), stop=stop)
    assert result.stopped == "user" and result.steps == 1
    assert result.checkpoint == ckpt
    assert load_checkpoint(ckpt).meta["steps"] == 1


def test_stop_during_validation_keeps_the_best_model_and_resumes(data, tmp_path, monkeypatch):
    stop = threading.Event()
    validate = train_module.validate

    def stopping(*args, **kwargs):
        stop.set()  # the user presses Stop while the model is being scored
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", stopping)
    ckpt = tmp_path / "m.pt"
    cfg = TrainConfig(epochs=5, checkpoint_path=str(ckpt), **TINY)
    result = train(*data, cfg, stop=stop)
    assert result.stopped == "user" and result.steps == 10
    first = load_checkpoint(ckpt)
    assert len(first.meta["history"]) == 1 and first.meta["steps"] == 10

    monkeypatch.setattr(train_module, "validate", validate)
    resumed = train(*data, TrainConfig(epochs=1, checkpoint_path=str(ckpt), **TINY), init=first)
    assert resumed.stopped == "epochs"
    again = load_checkpoint(ckpt)
    assert again.meta["steps"] == 20
    assert [h["step"] for h in again.meta["history"]] == [10, 10]


def test_stop_during_a_checkpoint_write_finishes_the_write(data, tmp_path, monkeypatch):
    stop = threading.Event()
    save = checkpoint_module.save_checkpoint
    written = []

    def stopping_save(bundle, path, **kwargs):
        stop.set()  # the user presses Stop while the best model is being written
        out = save(bundle, path, **kwargs)
        written.append(out.read_bytes())
        return out

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", stopping_save)
    ckpt = tmp_path / "m.pt"
    result = train(*data, TrainConfig(epochs=5, checkpoint_path=str(ckpt), **TINY), stop=stop)
    assert result.stopped == "user" and result.checkpoint == ckpt
    assert ckpt.read_bytes() == written[-1]
    loaded = load_checkpoint(ckpt)
    for name, value in result.bundle.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)
    assert _leftovers(tmp_path) == []


def test_a_stopped_command_line_run_resumes(tmp_path, capsys, data):
    import tifffile

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for i, (img, lab) in enumerate(zip(*data, strict=True)):
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", img)
        tifffile.imwrite(tmp_path / "labels" / f"n{i}.tif", lab.astype(np.uint16))
    out = tmp_path / "m.pt"
    base = ["train", "--images", tmp_path / "images", "--labels", tmp_path / "labels"]
    base += ["--out", out, "--epochs", "1", "--depth", "2", "--base-channels", "4"]
    base += ["--patch-size", "32", "--steps-per-epoch", "3", "--device", "cpu"]
    assert main([str(a) for a in base]) == 0
    assert main([str(a) for a in base + ["--resume", out]]) == 0
    model = load_checkpoint(out)
    assert model.meta["steps"] == 6 and len(model.meta["history"]) == 2


def test_out_of_memory_is_recognised_without_torch_by_the_error_s_name():
    from napari_unet.core.errors import is_out_of_memory as torch_free

    class OutOfMemoryError(RuntimeError):  # what torch raises on CUDA, by name
        pass

    assert torch_free(OutOfMemoryError("CUDA")) and torch_free(_oom())
    assert torch_free(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not torch_free(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
