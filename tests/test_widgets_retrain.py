"""Correct & retrain in a real viewer: brush strokes, rounds, panels closed mid-job.

Issue 19's "done when": two rounds of corrections on one image and one on another, with
napari's brush (``Labels.paint``) and the Retrain button; every painted pixel stays in
the training set and in a layer, the prediction settings survive, and closing and
reopening the panels while a job runs works.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet import PLUGIN_NAME
from napari_unet._widgets._predict import COUNT_ALL, COUNT_EDITS
from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint
from napari_unet.core.errors import NapariUnetError
from tests._gui_helpers import (
    TIMEOUT,
    error_messages,
    make_tiny,
    open_widget,
    tiny_model_file,
    wait_idle,
)

pytestmark = pytest.mark.gui

FITTED = {"threshold": 0.55, "h": 2.0, "f1": 0.5, "dsb_score": 0.3, "n_images": 1}


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def fitted_model(tmp_path):
    """A tiny model file that carries fitted prediction settings."""
    path = tiny_model_file(tmp_path / "tiny.pt")
    bundle = load_checkpoint(path)
    bundle.meta["postprocess"] = dict(FITTED)
    return save_checkpoint(bundle, path)


def predict_panel(viewer, tmp_path, *samples):
    """Open the sample images and the Predict panel, set to a tiny fitted model file."""
    for sample in samples:
        viewer.open_sample(PLUGIN_NAME, sample)
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(fitted_model(tmp_path))
    return predict


def brush(layer, centres, label, size=7):
    """Paint round brush strokes into a Labels layer, as the brush tool does."""
    layer.brush_size = size
    for centre in centres:
        layer.paint(centre, label)


def painted_since(layer, session):
    """Pixels where the layer differs from what napari-unet predicted into it."""
    return np.asarray(layer.data) != session.baseline(layer)


def test_two_rounds_on_one_image_and_one_on_another(viewer, qtbot, tmp_path):
    predict = predict_panel(viewer, tmp_path, "fluo_dense", "fluo_small")
    predict.tile_size.setValue(128)
    predict.retrain_steps.setValue(10)
    session = predict.session

    # --- round 1 on fluo_dense: predict, paint two nuclei and erase a region
    predict.image.setCurrentText("fluo_dense")
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert "threshold 0.55" in predict.status.text()  # the model's fitted settings
    first = viewer.layers["fluo_dense_labels"]
    brush(first, [(40, 40), (42, 44)], 1001)
    brush(first, [(120, 200)], 1002)
    brush(first, [(200, 60)], 0)  # the eraser
    painted1 = painted_since(first, session)
    assert painted1.any()
    corrected1 = np.array(first.data, copy=True)
    assert predict.corrected.currentText() == "fluo_dense_labels"
    predict.counts.setCurrentText(COUNT_EDITS)
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    pair = session.training_set["fluo_dense"]
    assert pair.sparse
    assert (pair.labels[painted1 & (corrected1 > 0)] >= 2).all()  # painted: objects
    assert (pair.labels[painted1 & (corrected1 == 0)] == 1).all()  # erased: background
    assert 0 < np.count_nonzero(pair.labels) < pair.labels.size  # the rest: not annotated
    np.testing.assert_array_equal(first.data, corrected1)  # the user's layer is kept
    second = viewer.layers["fluo_dense_labels_round_2"]
    assert predict.corrected.currentText() == second.name
    assert session.bundle.meta["postprocess"]["threshold"] == FITTED["threshold"]
    assert "F1 on your corrections" in predict.status.text()

    # --- round 2 on fluo_dense: correct the new prediction elsewhere
    brush(second, [(220, 220)], 2001)
    painted2 = painted_since(second, session)
    corrected2 = np.array(second.data, copy=True)
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    pair = session.training_set["fluo_dense"]
    # both rounds' strokes are in the training set (later strokes win where they overlap)
    only1 = painted1 & ~painted2
    assert (pair.labels[only1 & (corrected1 > 0)] >= 2).all()
    assert (pair.labels[only1 & (corrected1 == 0)] == 1).all()
    assert (pair.labels[painted2 & (corrected2 > 0)] >= 2).all()
    np.testing.assert_array_equal(second.data, corrected2)
    assert "fluo_dense_labels_round_3" in viewer.layers
    # and visible in a layer: round 1's and round 2's corrected layers are still there
    assert viewer.layers["fluo_dense_labels"] is first and viewer.layers[second.name] is second

    # --- one round on another image, the whole layer counting
    predict.image.setCurrentText("fluo_small")
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    other = viewer.layers["fluo_small_labels"]
    truth = viewer.layers["fluo_small_ground_truth"].data
    other.data_setitem(np.nonzero(truth > 0), truth[truth > 0])
    predict.corrected.setCurrentText("fluo_small_labels")
    predict.counts.setCurrentText(COUNT_ALL)
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert set(session.training_set) == {"fluo_dense", "fluo_small"}
    assert not np.any(session.training_set["fluo_small"].labels == 0)  # all of it counts
    text = predict.training_set_label.text()
    assert "fluo_dense" in text and "fluo_small: " in text and "all of it annotated" in text
    assert session.bundle.meta["postprocess"]["threshold"] == FITTED["threshold"]

    # --- the day's work survives a restart: save, forget, load
    predict.save_training_set(tmp_path / "set")
    saved = {n: np.array(p.labels) for n, p in session.training_set.items()}
    click(qtbot, predict.clear_button)
    assert not session.training_set
    predict.load_training_set(tmp_path / "set")
    for name, labels in saved.items():
        np.testing.assert_array_equal(session.training_set[name].labels, labels)
    with pytest.raises(NapariUnetError, match="overwrite"):
        predict.save_training_set(tmp_path / "set")


def test_retrain_without_edits_says_what_to_do(viewer, qtbot, tmp_path):
    predict = predict_panel(viewer, tmp_path, "fluo_small")
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    predict.counts.setCurrentText(COUNT_EDITS)
    with pytest.raises(NapariUnetError, match="Nothing was painted or erased"):
        predict.retrain()
    assert not predict.session.training_set and predict.session.busy is None


def test_checked_regions_count_whole_and_are_learned_once(viewer, qtbot, tmp_path):
    """A rectangle drawn around a checked part counts whole (every object, every empty
    pixel); an eraser stroke outside it counts too; a later round skips the learned
    rectangle, so it never takes a new prediction for checked."""
    from napari_unet._widgets._predict import LEARNED_COLOR, NO_REGIONS

    predict = predict_panel(viewer, tmp_path, "fluo_dense")
    predict.tile_size.setValue(128)
    predict.retrain_steps.setValue(10)
    session = predict.session
    predict.image.setCurrentText("fluo_dense")
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    first = viewer.layers["fluo_dense_labels"]
    # a prediction that found the true nuclei (the tiny model finds few): as if predicted
    first.data = np.asarray(viewer.layers["fluo_dense_ground_truth"].data, first.data.dtype)
    session.record_baseline(first, np.array(first.data, copy=True))
    assert predict.regions.currentText() == NO_REGIONS
    predict.counts.setCurrentText(COUNT_EDITS)
    click(qtbot, predict.new_regions_button)
    shapes = viewer.layers["fluo_dense_checked"]
    assert predict.regions.currentText() == shapes.name
    assert shapes.mode == "add_rectangle" and viewer.layers.selection.active is shapes
    assert shapes.ndim == first.ndim
    shapes.add_rectangles(np.array([[20, 30], [20, 110], [90, 110], [90, 30]]))
    ids_inside = np.setdiff1d(np.unique(first.data[20:91, 30:111]), [0])
    assert ids_inside.size > 0  # the region holds predicted nuclei, none of them edited
    # and one eraser stroke elsewhere, on a nucleus far below the region
    far = [k for k in np.unique(first.data[150:, :])[1:] if not np.any(first.data[:130] == k)]
    ys, xs = np.nonzero(first.data == far[0])
    spot = (int(np.median(ys)), int(np.median(xs)))
    assert first.data[spot] == far[0]
    brush(first, [spot], 0)
    corrected1 = np.array(first.data, copy=True)
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    labels = np.asarray(session.training_set["fluo_dense"].labels)
    box = (slice(20, 91), slice(30, 111))
    assert (labels[box][corrected1[box] == 0] == 1).all()  # empty pixels: background
    whole = np.isin(corrected1, ids_inside)
    assert (labels[whole] >= 2).all()  # its nuclei, whole (also past the edge)
    assert np.unique(labels[whole]).size == ids_inside.size
    assert labels[spot] == 1  # the eraser stroke
    assert not labels[150, 40]  # neither checked nor edited: not annotated
    np.testing.assert_allclose(shapes.edge_color[0], LEARNED_COLOR)  # learned: grey

    # round 2 on the new prediction: the learned rectangle is skipped, so nothing is new
    second = viewer.layers["fluo_dense_labels_round_2"]
    assert predict.corrected.currentText() == second.name
    with pytest.raises(NapariUnetError, match="no new checked region"):
        predict.retrain()
    # a second rectangle elsewhere counts; the first one's annotation stays round 1's
    shapes.add_rectangles(np.array([[150, 150], [150, 230], [230, 230], [230, 150]]))
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    merged = np.asarray(session.training_set["fluo_dense"].labels)
    np.testing.assert_array_equal(merged[box] > 0, labels[box] > 0)
    np.testing.assert_array_equal(merged[box] == 1, labels[box] == 1)
    assert np.all(merged[150:231, 150:231] > 0)
    np.testing.assert_allclose(shapes.edge_color[1], LEARNED_COLOR)

    # Forget keeps them learned: the layers they were checked on are gone or re-predicted
    click(qtbot, predict.clear_button)
    third = viewer.layers["fluo_dense_labels_round_3"]
    with pytest.raises(NapariUnetError, match=r"2 checked region\(s\) .* learned"):
        predict.retrain()
    # "Every object in the layer": the whole layer counts, the choice is disabled, and a
    # region drawn meanwhile is in that layer, so it is learned too (grey, skipped later)
    shapes.add_rectangles(np.array([[100, 20], [100, 60], [140, 60], [140, 20]]))
    third.data = np.asarray(viewer.layers["fluo_dense_ground_truth"].data, third.data.dtype)
    predict.counts.setCurrentText(COUNT_ALL)
    assert not predict.regions.isEnabled() and not predict.new_regions_button.isEnabled()
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert not np.any(session.training_set["fluo_dense"].labels == 0)
    np.testing.assert_allclose(shapes.edge_color[2], LEARNED_COLOR)
    predict.counts.setCurrentText(COUNT_EDITS)
    assert predict.corrected.currentText() != third.name  # the round-4 prediction
    with pytest.raises(NapariUnetError, match=r"3 checked region\(s\) .* learned"):
        predict.retrain()
    # another day: the saved training set brings back which regions were learned
    predict.save_training_set(tmp_path / "set")
    session.learned_regions.clear()
    session.clear_training_set()
    predict.load_training_set(tmp_path / "set")
    with pytest.raises(NapariUnetError, match=r"3 checked region\(s\) .* learned"):
        predict.retrain()
    predict.load_training_set(tmp_path / "set")  # again: each region is kept once
    assert len(session.learned_regions["fluo_dense"]) == 3


def test_checked_regions_layer_placement_and_errors(viewer, qtbot, tmp_path):
    from napari_unet._widgets._predict import LEARNED_COLOR, NO_REGIONS

    predict = predict_panel(viewer, tmp_path, "fluo_small")
    predict.counts.setCurrentText(COUNT_EDITS)
    viewer.layers.remove("fluo_small_ground_truth")
    with pytest.raises(NapariUnetError, match="predict the image first"):
        predict.new_regions_layer()  # no labels to draw on yet
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    labels = viewer.layers["fluo_small_labels"]
    labels.scale = (0.5, 0.5)
    labels.translate = (10.0, 5.0)
    # a layer of the user's own, at another scale and offset: placed through world coordinates
    own = viewer.add_shapes(
        [np.array([[10, 10], [10, 20], [20, 20], [20, 10]]), np.array([[0, 0], [5, 5]])],
        shape_type=["rectangle", "line"],
        edge_color="red",
        scale=(2.0, 2.0),
        translate=(4.0, 1.0),
        name="own",
    )
    predict.regions.setCurrentText("own")
    notes: list[str] = []
    mask = predict._checked_regions("fluo_small", labels, notes)
    # world (24..44, 21..41) -> labels pixels ((24 - 10) / 0.5.., (21 - 5) / 0.5..) = 28..68, 32..72
    expected = np.zeros(labels.data.shape, bool)
    expected[28:69, 32:73] = True
    np.testing.assert_array_equal(mask, expected)
    assert any("1 checked region(s)" in n for n in notes)
    assert any("1 line(s) or path(s)" in n for n in notes)
    # learned: grey; the user's own layer keeps its other colours
    predict._mark_learned("fluo_small")
    np.testing.assert_allclose(own.edge_color[0], LEARNED_COLOR)
    np.testing.assert_allclose(own.edge_color[1], [1, 0, 0, 1])
    assert predict._checked_regions("fluo_small", labels, []) is None  # learned: skipped

    rotated = viewer.add_shapes(
        [np.array([[2, 2], [2, 40], [40, 40], [40, 2]])], shape_type="rectangle", rotate=30
    )
    predict.regions.setCurrentText(rotated.name)
    with pytest.raises(NapariUnetError, match="rotated.* made with 'New'"):
        predict.retrain()
    labels.rotate = 10
    with pytest.raises(NapariUnetError, match="Labels layer 'fluo_small_labels' is rotated"):
        predict.retrain()
    labels.rotate = 0
    viewer.add_shapes([np.array([[2, 2], [40, 40]])], shape_type="line", name="lines")
    predict.regions.setCurrentText("lines")
    with pytest.raises(NapariUnetError, match="enclose nothing"):
        predict.retrain()  # nothing painted, and the reason is in the message
    # a regions layer removed after it was picked: the choice falls back, and says so
    predict.regions.setCurrentText("own")
    viewer.layers.remove("own")
    assert predict.regions.currentText() == NO_REGIONS
    assert "'own' is gone" in predict.status.text()
    assert not predict.session.training_set and predict.session.busy is None


def _close(viewer, name):
    viewer.window.remove_dock_widget(viewer.window.dock_widgets[name])


def test_closing_the_train_panel_mid_training_hands_the_model_over(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    session = train.session
    train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
    make_tiny(train, epochs=200)  # long: still running when the panel is closed
    train.save_path.value = str(tmp_path / "model.pt")
    click(qtbot, train.start_button)
    bar = train.progress
    qtbot.waitUntil(lambda: bar.value() > 0, timeout=TIMEOUT)
    names = [n for n in viewer.window.dock_widgets if n.startswith("Train")]
    _close(viewer, names[0])
    del train  # nothing of the user's holds the closed panel
    gc.collect()
    assert session.busy == "training"
    # a reopened panel knows a training runs, and can stop it
    again = open_widget(viewer, "Train")
    assert not again.start_button.isEnabled() and again.stop_button.isEnabled()
    click(qtbot, again.stop_button)
    qtbot.waitUntil(lambda: session.busy is None, timeout=TIMEOUT)
    assert session.bundle is not None  # the closed panel's model reached the session
    assert (tmp_path / "model.pt").is_file()
    assert again.start_button.isEnabled() and not again.stop_button.isEnabled()
    assert not error_messages()


def test_closing_the_predict_panel_mid_retrain_finishes_it(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    predict = open_widget(viewer, "Predict")
    session = predict.session
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(fitted_model(tmp_path))
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    brush(viewer.layers["fluo_small_labels"], [(30, 30)], 77)
    predict.retrain_steps.setValue(20)
    click(qtbot, predict.retrain_button)
    assert session.busy == "retraining"
    names = [n for n in viewer.window.dock_widgets if n.startswith("Predict")]
    _close(viewer, names[0])
    del predict  # nothing of the user's holds the closed panel
    gc.collect()
    qtbot.waitUntil(lambda: session.busy is None, timeout=TIMEOUT)
    # the job finished: its prediction arrived, the session is free, a new panel works
    assert "fluo_small_labels_round_2" in viewer.layers
    assert "fluo_small" in session.training_set
    again = open_widget(viewer, "Predict")
    again.corrected.setCurrentText("fluo_small_labels_round_2")
    assert again.retrain_button.isEnabled() and not again.stop_button.isEnabled()
    assert not error_messages()


def test_retrain_checks_the_layer_and_the_channels(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    predict = open_widget(viewer, "Predict")
    session = predict.session
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(fitted_model(tmp_path))  # a grey model
    predict.image.setCurrentText("fluo_small")
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    brush(viewer.layers["fluo_small_labels"], [(30, 30)], 77)
    # the labels of one image, the other image picked: refused, nothing added
    predict.image.setCurrentText("fluo_dense")
    predict.corrected.setCurrentText("fluo_small_labels")
    with pytest.raises(NapariUnetError, match="was predicted from image 'fluo_small'"):
        predict.retrain()
    # an RGB image cannot fine-tune a grey model: refused before it joins the set
    rgb = np.stack([viewer.layers["fluo_dense"].data] * 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    viewer.add_labels(np.zeros(rgb.shape[:2], np.uint16), name="colour_paint")
    brush(viewer.layers["colour_paint"], [(50, 50)], 3)
    predict.image.setCurrentText("colour")
    predict.corrected.setCurrentText("colour_paint")
    with pytest.raises(NapariUnetError, match="cannot fine-tune the session's model"):
        predict.retrain()
    assert not session.training_set and session.busy is None
    # a stack: the ring stays in the painted plane
    stack = np.stack([viewer.layers["fluo_small"].data] * 3)
    viewer.add_image(stack, name="stack")
    viewer.add_labels(np.zeros(stack.shape, np.uint16), name="stack_paint")
    paint = viewer.layers["stack_paint"]
    paint.data_setitem((np.full(9, 1), *np.nonzero(np.ones((3, 3)))), 5)  # 3x3 in plane 1
    predict.image.setCurrentText("stack")
    predict.corrected.setCurrentText("stack_paint")
    predict.retrain_steps.setValue(10)
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    annotation = session.training_set["stack"].labels
    assert annotation.shape == stack.shape
    assert annotation[1].any() and not annotation[0].any() and not annotation[2].any()
