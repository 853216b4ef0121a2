"""Faults and bad input in the widgets, in a real viewer (Xvfb).

Closing the viewer or deleting layers while a worker runs, two trainings at once,
simulated out-of-memory and full-disk errors, and inputs the widgets must refuse with a
napari notification while leaving every layer as it was.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
import tifffile
import torch
from qtpy.QtCore import Qt

from napari_unet import PLUGIN_NAME
from napari_unet._widgets._predict import COUNT_ALL
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.model import UNet
from tests._gui_helpers import (
    assert_unchanged,
    error_messages,
    layer_snapshot,
    make_tiny,
    open_widget,
    tiny_model_file,
    wait_idle,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def messages(severity):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    level = getattr(NotificationSeverity, severity)
    return [str(n.message) for n in notification_manager.records if n.severity == level]


def watch(worker):
    """Record what a worker returns and when it finishes (outliving the widget)."""
    seen = {"finished": False, "returned": []}
    worker.returned.connect(lambda value: seen["returned"].append(value))
    worker.finished.connect(lambda: seen.update(finished=True))
    return seen


def long_training(viewer, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    make_tiny(train, epochs=0)
    train.minutes.setValue(10.0)  # only Stop (or closing) ends it
    train.save_path.value = str(tmp_path / "model.pt")
    return train


# ------------------------------------------------------------------ closing, deleting
def test_closing_the_viewer_while_training_ends_the_worker_and_keeps_the_model(
    viewer, qtbot, tmp_path
):
    train = long_training(viewer, tmp_path)
    click(qtbot, train.start_button)
    stop, seen = train._stop, watch(train._worker)
    qtbot.waitUntil(lambda: len(train.plot.data.loss.get("loss", [])) >= 3, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: seen["finished"], timeout=120_000)
    assert stop.is_set()
    (result,) = seen["returned"]
    assert result.stopped == "user" and result.checkpoint == tmp_path / "model.pt"
    model = load_checkpoint(tmp_path / "model.pt")
    assert model.meta["steps"] == result.steps >= 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_closing_the_viewer_while_predicting_ends_the_worker(viewer, qtbot, tmp_path):
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((1536, 1536), dtype=np.float32), name="big")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(64)  # hundreds of tiles: still running when closed
    click(qtbot, predict.predict_button)
    stop, seen = predict._stop, watch(predict._worker)
    qtbot.waitUntil(lambda: predict.progress.value() > 0, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: seen["finished"], timeout=60_000)
    assert stop.is_set()
    assert seen["returned"][0].result is None  # stopped: nothing to add anywhere


def test_layers_deleted_while_training_lose_nothing(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    truth = np.array(viewer.layers["fluo_small_ground_truth"].data, copy=True)
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    make_tiny(train)
    train.save_path.value = str(tmp_path / "model.pt")
    click(qtbot, train.start_button)
    viewer.layers.clear()  # the user deletes both layers while it trains
    wait_idle(qtbot, train)
    assert not error_messages()
    assert train.session.bundle is not None and (tmp_path / "model.pt").is_file()
    np.testing.assert_array_equal(train.session.training_set["fluo_small"].labels, truth)
    assert train.pairs.pairs() == []  # nothing left to pick
    assert not train.start_button.isEnabled()


def test_layers_deleted_while_predicting_and_retraining(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(128)
    # the image is deleted while it is predicted: its results still arrive
    click(qtbot, predict.predict_button)
    source = viewer.layers["fluo_dense"]
    scale = tuple(source.scale)
    viewer.layers.remove(source)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert any("was removed while it was predicted" in m for m in messages("INFO"))
    assert tuple(viewer.layers["fluo_dense_labels"].scale) == scale

    # the corrected layer is deleted while retraining: the corrections are already kept
    viewer.add_image(source.data, name="fluo_dense")
    corrected = viewer.layers["fluo_dense_labels"]
    truth = viewer.layers["fluo_dense_ground_truth"].data
    corrected.data = np.array(truth, copy=True)
    predict.image.setCurrentText("fluo_dense")
    predict.corrected.setCurrentText("fluo_dense_labels")
    predict.counts.setCurrentText(COUNT_ALL)
    predict.retrain_steps.setValue(10)
    click(qtbot, predict.retrain_button)
    viewer.layers.remove(corrected)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert "fluo_dense_labels_round_2" in viewer.layers
    np.testing.assert_array_equal(predict.session.training_set["fluo_dense"].labels, truth + 1)


def test_two_trainings_at_once_are_impossible(viewer, qtbot, tmp_path):
    train = long_training(viewer, tmp_path)
    predict = open_widget(viewer, "Predict")
    click(qtbot, train.start_button)
    assert not train.start_button.isEnabled()
    assert not predict.retrain_button.isEnabled()
    with pytest.raises(NapariUnetError, match="Wait until training has finished"):
        train.start()
    with pytest.raises(NapariUnetError, match="Wait until training has finished"):
        predict.retrain()
    click(qtbot, train.stop_button)
    wait_idle(qtbot, train)
    assert train.start_button.isEnabled()


# ------------------------------------------------------------------ simulated resource faults
@pytest.fixture
def memory_limit(monkeypatch):
    limit = {"eval": None, "train": None}
    forward = UNet.forward

    def limited(self, x):
        cap = limit["train" if self.training else "eval"]
        if cap is not None and x.shape[0] * x.shape[-2] * x.shape[-1] > cap:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", limited)
    return limit


def test_out_of_memory_in_predict_retries_with_smaller_tiles(viewer, qtbot, tmp_path, memory_limit):
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(256)
    predict.predict_in_child_process = False  # the fault is injected into this process
    memory_limit["eval"] = 128 * 128
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert any("out of memory" in m and "128 pixels" in m for m in messages("WARNING"))
    assert viewer.layers["fluo_dense_labels"].data.shape == (256, 256)


def test_out_of_memory_in_training_continues_with_a_smaller_batch(
    viewer, qtbot, tmp_path, memory_limit
):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    make_tiny(train)
    train.train_in_child_process = False  # the fault is injected into this process
    train.save_path.value = str(tmp_path / "model.pt")
    memory_limit["train"] = 64 * 64  # batch 2 of 64x64 patches does not fit, batch 1 does
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    assert not error_messages()
    assert "batch size 1" in train.status.text()
    assert any("out of memory" in m for m in messages("WARNING"))
    assert load_checkpoint(tmp_path / "model.pt").meta["memory_adjustments"]["batch_size"] == 1


def test_full_disk_when_training_keeps_the_model_in_the_session(
    viewer, qtbot, tmp_path, monkeypatch
):
    from napari_unet.core import io as io_module

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    make_tiny(train)
    train.train_in_child_process = False  # the fault is injected into this process
    train.save_path.value = str(tmp_path / "model.pt")
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    assert any("could not be saved" in m and "is full" in m for m in error_messages())
    assert train.session.bundle is not None  # Predict can still use it
    assert not (tmp_path / "model.pt").exists() and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ export
def test_export_never_overwrites_and_explains_what_is_wrong(viewer, qtbot, tmp_path, monkeypatch):
    from napari_unet.core import io as io_module

    labels = np.zeros((300, 300), np.uint32)
    labels.flat[::1] = np.arange(labels.size) % 70_000  # more objects than uint16 holds
    viewer.add_labels(labels, name="many")
    predict = open_widget(viewer, "Predict")
    folder = tmp_path / "exports ü 名前"  # spaces and non-ASCII characters
    predict.export_folder.value = str(folder)
    # a layer the user made is not ticked for export: nothing is written
    click(qtbot, predict.export_button)
    assert "Tick at least one Labels layer" in error_messages()[-1]
    assert not folder.exists()
    predict.set_export_choices(["many"])
    predict.export_measure.setChecked(False)  # 70,000 objects: the label image only

    def export():  # the export runs in a worker: wait for it
        click(qtbot, predict.export_button)
        qtbot.waitUntil(lambda: predict._export_worker is None, timeout=60_000)

    export()
    np.testing.assert_array_equal(tifffile.imread(folder / "many.tif"), labels)  # exact
    first = (folder / "many.tif").read_bytes()

    viewer.layers["many"].data = labels[::-1].copy()
    before = layer_snapshot(viewer)
    # an existing file is never silently replaced
    export()
    assert "already exist" in error_messages()[-1]
    assert (folder / "many.tif").read_bytes() == first
    # a path under a file cannot be written
    (tmp_path / "a file").write_text("x")
    predict.export_folder.value = str(tmp_path / "a file" / "sub")
    export()
    assert "is a file" in error_messages()[-1]
    # a full disk: the previous file stays as it was
    predict.export_folder.value = str(folder)
    predict.export_overwrite.setChecked(True)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    export()
    assert "is full" in error_messages()[-1]
    assert (folder / "many.tif").read_bytes() == first
    assert not list(folder.glob(".*.tmp"))
    assert_unchanged(viewer, before)


# ------------------------------------------------------------------ bad input
BAD_TRAINING = {
    "nan image": (np.full((64, 64), np.nan, np.float32), None, "NaN"),
    "infinite image": (np.where(np.eye(64) > 0, np.inf, 1.0).astype(np.float32), None, "infinite"),
    "constant image": (np.full((64, 64), 5.0, np.float32), None, "constant"),
    "negative labels": (None, np.full((64, 64), -1, np.int16), "negative"),
    "2D labels for a stack": (np.random.default_rng(0).random((12, 64, 64)), None, "stack"),
    "stack labels for 2D": (None, np.ones((3, 64, 64), np.uint16), "shape"),
}


@pytest.mark.parametrize("case", list(BAD_TRAINING))
def test_bad_training_input_is_notified_and_changes_nothing(viewer, qtbot, case):
    image, labels, needle = BAD_TRAINING[case]
    rng = np.random.default_rng(1)
    if image is None:
        image = rng.random((64, 64)).astype(np.float32)
    if labels is None:
        labels = np.zeros((64, 64), np.uint16)
        labels[10:20, 10:20] = 1
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="img_labels")
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("img", "img_labels")])
    make_tiny(train)
    before = layer_snapshot(viewer)
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    errors = error_messages()
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), errors
    assert_unchanged(viewer, before)
    assert train.session.bundle is None and train.start_button.isEnabled()


@pytest.mark.parametrize(
    ("image", "expect"),
    [
        (np.full((40, 40), np.nan, np.float32), "NaN"),
        (np.zeros((5, 3), np.float32), None),  # smaller than the network's input: works
        (np.full((64, 64), 3.0, np.float32), None),  # constant: works, no nuclei
    ],
    ids=["nan", "tiny", "constant"],
)
def test_predict_odd_images(viewer, qtbot, tmp_path, image, expect):
    viewer.add_image(image, name="img")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    before = layer_snapshot(viewer)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    if expect is None:
        assert not error_messages()
        assert viewer.layers["img_labels"].data.shape == image.shape
    else:
        assert expect in error_messages()[-1]
        assert_unchanged(viewer, before)
