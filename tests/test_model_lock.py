"""Only one run writes a model file: ``<model>.lock`` held by a real second process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import file_lock

REPO = Path(__file__).resolve().parents[1]
# A training of a second or two, so a broken lock fails the test instead of hanging it.
TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "16", "--batch-size", "1"]
TINY += ["--depth", "1", "--base-channels", "4", "--device", "cpu", "--val-fraction", "0"]

HOLDER = """
import sys, time
from napari_unet.core.io import file_lock
with file_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock on tmp_path/'M.pt'; yield (process, model path)."""
    model = tmp_path / "M.pt"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(model)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, model
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _data(root):
    (root / "images").mkdir()
    (root / "labels").mkdir()
    lab = np.zeros((32, 32), np.uint16)
    lab[4:12, 4:12] = 1
    lab[16:28, 14:28] = 2
    iio.imwrite(root / "images" / "a.png", (40 + 150 * (lab > 0)).astype(np.uint8))
    tifffile.imwrite(root / "labels" / "a.tif", lab)
    return root / "images", root / "labels"


def _train_argv(root, out, *extra):
    images, labels = _data(root)
    argv = ["train", "--images", str(images), "--labels", str(labels), "--out", str(out)]
    return argv + list(extra)


def test_lock_is_exclusive_and_released_on_error_and_ctrl_c(tmp_path):
    model = tmp_path / "m.pt"
    with file_lock(model) as lock:
        assert lock == tmp_path / "m.pt.lock"
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(
            NapariUnetError, match=f"being written by another run .process {os.getpid()}"
        ):
            with file_lock(model):
                pass
        assert lock.exists()  # the refused attempt left the holder's lock alone
    assert not lock.exists()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with file_lock(model):
                raise exc
        assert not lock.exists()
    assert os.listdir(tmp_path) == []


def test_train_refuses_a_model_another_process_is_writing(tmp_path, holder, capsys):
    proc, model = holder
    argv = _train_argv(tmp_path, model, "--overwrite", *TINY)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("napari-unet: error:")
    assert f"being written by another run (process {proc.pid}" in err
    assert str(model) + ".lock" in err
    assert not model.exists()
    assert (tmp_path / "M.pt.lock").read_text().split()[0] == str(proc.pid)  # still theirs


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, holder, capsys):
    proc, model = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lock = tmp_path / "M.pt.lock"
    assert lock.exists()  # SIGKILL runs no cleanup: the lock is stale
    capsys.readouterr()
    assert main(_train_argv(tmp_path, model, *TINY)) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"note: taking over the stale lock {lock} (process {proc.pid} has ended)" in err
    assert not lock.exists()
    assert load_checkpoint(model).spec.depth == 1


def test_empty_lock_is_held_while_young_and_stale_when_old(tmp_path):
    lock = tmp_path / "m.pt.lock"
    lock.write_text("")  # another run between creating the lock and writing its pid
    with pytest.raises(NapariUnetError, match="being written by another run"):
        with file_lock(tmp_path / "m.pt"):
            pass
    old = time.time() - 60
    os.utime(lock, (old, old))
    notes = []
    with file_lock(tmp_path / "m.pt", note=notes.append):
        pass
    assert notes == [f"note: taking over the stale lock {lock} (it was left empty)"]
    assert not lock.exists()
