"""Built-in models in the widgets (real viewer, Xvfb): Predict, Train's Start from, retrain.

A tiny real model is installed as the built-in model 'tiny' (``NAPARI_UNET_MODELS_DIR``).
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet import PLUGIN_NAME
from napari_unet._widgets._predict import COUNT_ALL, MODEL_FILE, MODEL_SESSION
from napari_unet._widgets._process import LazyBundle
from napari_unet._widgets._train import START_FILE, START_NEW
from napari_unet.core.builtin import ENV_VAR
from tests._gui_helpers import error_messages, make_tiny, open_widget, tiny_model_file, wait_idle

pytestmark = pytest.mark.gui

TITLE = "Tiny nuclei (built-in, for tests)"


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


@pytest.fixture
def builtin_file(tmp_path, monkeypatch):
    """Install a tiny 3-channel model as the built-in 'tiny'; return its file."""
    folder = tmp_path / "builtin"
    from napari_unet.core.checkpoint import install_model, load_checkpoint, save_checkpoint

    source = tiny_model_file(tmp_path / "source.pt", in_channels=3)
    bundle = load_checkpoint(source)
    bundle.meta["train_config"] = {"patch_size": 64, "batch_size": 2}  # a fast fine-tune
    entry = install_model(save_checkpoint(bundle, source), "tiny", TITLE, folder=folder)
    monkeypatch.setenv(ENV_VAR, str(folder))
    # a model fine-tuned from it is saved here, not in the user's home
    monkeypatch.setattr("napari_unet._widgets._predict.DEFAULT_MODEL_DIR", tmp_path / "mine")
    return entry.path


@pytest.fixture
def loads(monkeypatch):
    """Count the model files loaded (the widgets must load one only when a job runs)."""
    import napari_unet.core.checkpoint as checkpoint

    loaded = []
    real = checkpoint.load_checkpoint

    def counting(path, *args, **kwargs):
        loaded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counting)
    return loaded


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def snapshot(path):
    return path.read_bytes(), path.stat().st_mtime_ns


def test_predict_uses_the_built_in_model_with_no_other_step(
    viewer, qtbot, builtin_file, loads, tmp_path
):
    before = snapshot(builtin_file)
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    predict = open_widget(viewer, "Predict")
    train = open_widget(viewer, "Train")
    items = [predict.model_choice.itemText(i) for i in range(predict.model_choice.count())]
    assert items == [MODEL_SESSION, TITLE, MODEL_FILE]
    assert predict.model_choice.currentText() == TITLE  # no session model: the built-in
    assert not loads and predict.session.bundle is None  # nothing loaded by opening
    assert not predict.model_path.native.isEnabled()
    predict.tile_size.setValue(128)

    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert not loads  # the child process predicting loaded it, not the viewer's
    assert "fluo_small_labels" in viewer.layers
    session = predict.session
    assert str(session.model_info.checkpoint) == str(builtin_file)
    assert isinstance(session.bundle, LazyBundle) and not session.bundle.loaded
    assert session.bundle.in_channels == 3
    assert session.describe_model().startswith(f"Built-in model: {TITLE}")
    assert "Shipped with napari-unet" in session.describe_model()
    assert "Saved as" not in session.describe_model()
    # the loaded model is the session's now: predicting again does not reload the file
    assert predict.model_choice.currentText() == MODEL_SESSION

    # Correct & retrain fine-tunes a copy and saves it in the user's folder
    layer = viewer.layers["fluo_small_labels"]
    truth = viewer.layers["fluo_small_ground_truth"].data
    layer.data = np.asarray(truth).copy()
    predict.corrected.setCurrentText("fluo_small_labels")
    predict.counts.setCurrentText(COUNT_ALL)
    predict.retrain_steps.setValue(3)
    assert str(tmp_path / "mine") in predict.finetune_config()["checkpoint_path"]
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert "fluo_small_labels_round_2" in viewer.layers
    assert snapshot(builtin_file) == before
    assert sorted(p.name for p in builtin_file.parent.iterdir()) == ["builtin.json", "tiny.pt"]
    assert train.start_from.currentText() == TITLE  # opened before: still the default


def test_a_model_trained_in_the_session_replaces_the_default_choice(
    viewer, qtbot, builtin_file, tmp_path
):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    predict = open_widget(viewer, "Predict")
    assert predict.model_choice.currentText() == TITLE
    from napari_unet.core.checkpoint import load_checkpoint

    predict.session.set_model(
        load_checkpoint(tiny_model_file(tmp_path / "mine.pt")), source="Trained"
    )
    assert predict.model_choice.currentText() == MODEL_SESSION
    # a choice the user made stays
    other = open_widget(viewer, "Predict")
    assert other.model_choice.currentText() == MODEL_SESSION  # a session model exists
    other.model_choice.setCurrentIndex(1)
    other.model_choice.activated.emit(1)
    predict.session.set_model(predict.session.bundle, source="Again")
    assert other.model_choice.currentText() == TITLE


def test_train_starts_from_the_built_in_model_when_the_channels_fit(
    viewer, qtbot, builtin_file, loads, tmp_path
):
    before = snapshot(builtin_file)
    viewer.open_sample(PLUGIN_NAME, "fluo_small")  # grey: fits the 3-channel model
    train = open_widget(viewer, "Train")
    items = [train.start_from.itemText(i) for i in range(train.start_from.count())]
    assert TITLE in items and items[-1] == START_FILE
    assert train.start_from.currentText() == TITLE
    assert not loads

    # an image of 2 channels does not fit it: a new model
    two = np.stack([viewer.layers["fluo_small"].data] * 2, axis=0)
    viewer.add_image(two, name="two_channels")
    viewer.add_labels(viewer.layers["fluo_small_ground_truth"].data, name="two_channels_labels")
    train.pairs.set_pairs([("two_channels", "two_channels_labels")])
    assert train.start_from.currentText() == START_NEW
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    assert train.start_from.currentText() == TITLE

    # saving over the built-in file is refused before anything starts
    make_tiny(train)
    train.train_in_child_process = False
    train.save_path.value = str(builtin_file)
    click(qtbot, train.start_button)
    assert train._worker is None
    assert any("never overwritten" in m for m in error_messages())

    train.save_path.value = str(tmp_path / "tuned.pt")
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    assert loads == [str(builtin_file)]
    assert (tmp_path / "tuned.pt").is_file()
    assert train.session.bundle.in_channels == 3  # fine-tuned from the built-in model
    assert snapshot(builtin_file) == before

    # the user's own choice stays when the images change
    train.start_from.setCurrentText(START_NEW)
    train.start_from.activated.emit(0)
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    assert train.start_from.currentText() == START_NEW


def test_a_retrain_predicts_unlike_images_with_the_built_in_statistics(viewer, qtbot, builtin_file):
    """Predict with a retrain of the built-in model whose statistics fit nothing like the
    image: the built-in model's are used, and the user is told (core.norm_sets)."""
    import torch
    from napari.utils.notifications import notification_manager

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.norm_sets import NOTE, first_norm_pair

    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    predict = open_widget(viewer, "Predict")
    predict.tile_size.setValue(128)
    retrained = load_checkpoint(builtin_file)
    assert retrained.meta["retrain_base"]["name"] == "tiny"  # tied to the built-in model
    _, bn, _ = first_norm_pair(retrained.model)
    with torch.no_grad():
        bn.running_mean.fill_(1e3)  # as if retrained on images very unlike this one
    predict.session.set_model(retrained, source="Retrained")
    assert predict.model_choice.currentText() == MODEL_SESSION

    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert "fluo_small_labels" in viewer.layers
    said = [str(n.message) for n in notification_manager.records]
    assert any(NOTE in m for m in said), said
    assert float(bn.running_mean[0]) == 1e3  # the session's model is not changed

    # the built-in model itself has one set of statistics: nothing to choose, nothing said
    notification_manager.records.clear()
    predict.model_choice.setCurrentText(TITLE)
    predict.model_choice.activated.emit(predict.model_choice.currentIndex())
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert not any(NOTE in str(n.message) for n in notification_manager.records)
