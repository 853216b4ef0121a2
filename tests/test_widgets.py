"""The napari widgets in a real viewer (Xvfb), opened through the manifest.

The workers run in threads, as for a user; tests wait for them with qtbot.
"""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
import roifile
import tifffile
from qtpy.QtCore import Qt

from napari_unet import PLUGIN_NAME
from tests._gui_helpers import (
    assert_unchanged,
    error_messages,
    layer_snapshot,
    make_tiny,
    open_widget,
    wait_idle,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()  # error_messages() sees this test's only
    return make_napari_viewer()


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_three_widgets_open_from_the_plugin_menu(viewer):
    from napari_unet._widgets._predict import PredictWidget
    from napari_unet._widgets._split import SplitWidget
    from napari_unet._widgets._train import TrainWidget

    train = open_widget(viewer, "Train")
    predict = open_widget(viewer, "Predict")
    split = open_widget(viewer, "Split nuclei")
    assert isinstance(train, TrainWidget)
    assert isinstance(predict, PredictWidget)
    assert isinstance(split, SplitWidget)
    # one session per viewer, shared by the widgets
    assert train.session is predict.session is split.session
    # nothing to work on yet: the buttons say so
    assert not train.start_button.isEnabled()
    assert not predict.predict_button.isEnabled()
    assert not predict.retrain_button.isEnabled()
    assert not split.apply_button.isEnabled()


def test_the_panels_open_as_tabs_of_one_column(viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    viewer.window._qt_window.show()
    panels = [open_widget(viewer, name) for name in ("Train", "Predict", "Split nuclei")]
    window = viewer.window._qt_window
    docks = []
    for panel in panels:
        dock = panel.parentWidget()
        while not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        docks.append(dock)
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(docks[-1])) == 2, timeout=5_000)
    assert set(window.tabifiedDockWidgets(docks[0])) == set(docks[1:])

    # the panel opened last is the tab shown
    def shown():  # tabs behind the current one are covered, not hidden
        return [not panel.visibleRegion().isEmpty() for panel in panels]

    qtbot.waitUntil(lambda: shown() == [False, False, True], timeout=5_000)


def test_sample_data_menu_opens_image_and_ground_truth(viewer):
    viewer.open_sample(PLUGIN_NAME, "he_tissue")
    image, labels = viewer.layers
    assert image.name == "he_tissue" and image.rgb
    assert labels.name == "he_tissue_ground_truth"
    assert labels.data.max() == 82
    # the Train widget pairs them by name on its own
    train = open_widget(viewer, "Train")
    assert train.pairs.pairs() == [("he_tissue", "he_tissue_ground_truth")]


def test_whole_loop_train_predict_split_correct_retrain_export(viewer, qtbot, tmp_path):
    """What a new user does on the sample data, start to end."""
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    predict = open_widget(viewer, "Predict")
    split = open_widget(viewer, "Split nuclei")

    assert not train.bioimageio_button.isEnabled()  # no model yet
    # --- Train on two image + labels pairs, a few steps
    train.pairs.set_pairs(
        [("fluo_dense", "fluo_dense_ground_truth"), ("fluo_small", "fluo_small_ground_truth")]
    )
    make_tiny(train)
    train.val_fraction.setValue(0.5)  # one image validates: the plot gets scores
    checkpoint = tmp_path / "models" / "nuclei.pt"
    train.save_path.value = str(checkpoint)
    click(qtbot, train.start_button)
    assert not train.start_button.isEnabled()  # no second training while one runs
    assert train.stop_button.isEnabled()
    assert not predict.retrain_button.isEnabled()
    wait_idle(qtbot, train)
    assert not error_messages()
    assert "CPU" in train.device_label.text()
    assert train.progress.value() == 1000
    assert len(train.plot.data.loss["loss"]) >= 10
    assert train.plot.data.scores  # validation dice / f1
    assert checkpoint.is_file()
    session = train.session
    assert session.bundle is not None and session.model_info.checkpoint == checkpoint
    assert set(session.training_set) == {"fluo_dense", "fluo_small"}
    assert train.start_button.isEnabled()

    # --- Share the model as a bioimage.io package (Fiji / deepImageJ, ilastik)
    from napari_unet.core.bioimageio import bioimageio_problem

    assert bioimageio_problem() is None, bioimageio_problem()
    assert train.bioimageio_button.isEnabled()
    train.export_for_bioimageio(tmp_path / "shared" / "nuclei")  # .zip is added
    qtbot.waitUntil(lambda: train._bioimageio_worker is None, timeout=120_000)
    assert not error_messages()
    with zipfile.ZipFile(tmp_path / "shared" / "nuclei.zip") as z:
        test_input = np.load(io.BytesIO(z.read("test_input.npy")))
        assert "weights_torchscript.pt" in z.namelist()
    assert test_input.shape == (1, 1, 256, 256)  # the first training image

    # --- Predict the first image with the session's model
    predict.image.setCurrentText("fluo_dense")
    predict.tile_size.setValue(128)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    labels_layer = viewer.layers["fluo_dense_labels"]
    probability = viewer.layers["fluo_dense_probability"]
    assert labels_layer.data.shape == (256, 256)
    assert probability.data.dtype == np.float32
    assert 0 <= probability.data.min() and probability.data.max() <= 1

    # --- Split nuclei of the prediction; the live preview shows first
    split.source.setCurrentText("fluo_dense_ground_truth")
    split.preview.setChecked(True)
    qtbot.waitUntil(
        lambda: "fluo_dense_ground_truth_split_preview" in viewer.layers, timeout=30_000
    )
    split.preview.setChecked(False)
    assert "fluo_dense_ground_truth_split_preview" not in viewer.layers
    click(qtbot, split.apply_button)
    wait_idle(qtbot, split)
    split_layer = viewer.layers["fluo_dense_ground_truth_split"]
    assert split_layer.data.shape == (256, 256) and split_layer.data.max() >= 50

    # --- Correct the prediction with the brush (programmatically) and retrain
    truth = viewer.layers["fluo_dense_ground_truth"].data
    assert labels_layer.features.shape[1] > 0
    labels_layer.data_setitem(np.nonzero(truth > 0), truth[truth > 0])  # a big correction
    assert labels_layer.features.shape[1] == 0  # painted: the predicted measurements go
    corrected = np.array(labels_layer.data, copy=True)
    assert not session.is_replaceable(labels_layer)  # painted: now the user's
    assert predict.corrected.currentText() == "fluo_dense_labels"  # offered after predicting
    predicted = session.baseline(labels_layer)
    painted = corrected != predicted
    assert painted.any()
    predict.retrain_steps.setValue(10)
    click(qtbot, predict.retrain_button)
    assert not train.start_button.isEnabled()  # the session is busy
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert set(session.training_set) == {"fluo_dense", "fluo_small"}
    pair = session.training_set["fluo_dense"]
    assert pair.sparse  # what was painted counts; objects are >= 2, background 1
    assert (pair.labels[painted & (corrected > 0)] >= 2).all()
    assert (pair.labels[painted & (corrected == 0)] == 1).all()
    status = predict.status.text()
    assert "F1 on your corrections" in status, status
    if "previous model is kept" not in status:
        assert session.model_info.source.startswith("Fine-tuned")
        assert session.model_info.checkpoint.is_file()
    # the corrected layer is the user's: kept as painted (hidden), the new prediction beside it
    assert viewer.layers["fluo_dense_labels"] is labels_layer
    np.testing.assert_array_equal(labels_layer.data, corrected)
    assert not labels_layer.visible
    labels_layer = viewer.layers["fluo_dense_labels_round_2"]
    assert predict.corrected.currentText() == "fluo_dense_labels_round_2"
    assert train.start_button.isEnabled()

    # --- the prediction carries its measurements (napari shows them under the cursor)
    features = labels_layer.features
    n_objects = len(np.unique(labels_layer.data)) - 1
    assert len(features) == n_objects and "mean_intensity" in features
    assert set(features["index"]) == set(np.unique(labels_layer.data)) - {0}
    assert len(split_layer.features) == len(np.unique(split_layer.data)) - 1

    # --- Export: napari-unet's layers are ticked, the ground truth is not
    all_labels = [layer.name for layer in viewer.layers if layer.__class__.__name__ == "Labels"]
    assert set(predict.export_choices()) == {
        "fluo_dense_labels",
        "fluo_dense_labels_round_2",
        split_layer.name,
    }
    predict.set_export_choices(all_labels)
    predict.export_rois.setChecked(True)
    predict.export_folder.value = str(tmp_path / "export")
    click(qtbot, predict.export_button)
    qtbot.waitUntil(lambda: predict._export_worker is None, timeout=60_000)
    assert not error_messages()
    rows = list(csv.DictReader(open(tmp_path / "export" / "measurements.csv", encoding="utf-8")))
    for layer in viewer.layers:
        if layer.__class__.__name__ == "Labels":
            back = tifffile.imread(tmp_path / "export" / f"{layer.name}.tif")
            np.testing.assert_array_equal(back, layer.data)
            ids = set(np.unique(layer.data)) - {0}
            zip_file = tmp_path / "export" / f"{layer.name}_rois.zip"
            assert zip_file.is_file() == bool(ids)  # no objects: no ROI set
            if ids:
                rois = roifile.roiread(zip_file)
                rois = rois if isinstance(rois, list) else [rois]
                assert len(rois) == len(ids)
            assert {int(r["label"]) for r in rows if r["image"] == layer.name} == ids


def test_stop_ends_training_on_partial_labels_and_keeps_the_best_model(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    truth = viewer.layers["fluo_small_ground_truth"].data
    partial = np.zeros_like(truth)  # only the top-left quarter is annotated
    partial[:128, :128] = np.where(truth[:128, :128] > 0, truth[:128, :128] + 1, 1)
    viewer.add_labels(partial, name="fluo_small_labels")
    train = open_widget(viewer, "Train")
    train.pairs.set_pairs([("fluo_small", "fluo_small_labels")])
    train.sparse.setChecked(True)
    make_tiny(train, epochs=0)
    train.minutes.setValue(5.0)  # long budget: only Stop ends it
    train.save_path.value = str(tmp_path / "stopped.pt")
    click(qtbot, train.start_button)
    assert not train.advanced.isEnabled()  # settings are fixed while training
    qtbot.waitUntil(lambda: len(train.plot.data.loss.get("loss", [])) >= 3, timeout=60_000)
    click(qtbot, train.stop_button)
    assert not train.stop_button.isEnabled()
    wait_idle(qtbot, train)
    assert not error_messages()
    assert "stopped by you" in train.status.text()
    assert train.session.bundle is not None
    assert train.session.bundle.meta["train_config"]["sparse"] is True
    assert train.session.training_set["fluo_small"].sparse
    assert (tmp_path / "stopped.pt").is_file()
    assert train.start_button.isEnabled() and train.advanced.isEnabled()


def test_training_errors_are_notified_and_change_nothing(viewer, qtbot):
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    viewer.open_sample(PLUGIN_NAME, "he_tissue")
    train = open_widget(viewer, "Train")
    make_tiny(train)
    before = layer_snapshot(viewer)
    # labels of another image: 256 x 320 labels against a 256 x 256 image
    train.pairs.set_pairs([("fluo_dense", "he_tissue_ground_truth")])
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    assert any("does not match labels shape" in m for m in error_messages())
    assert train.session.bundle is None
    assert train.start_button.isEnabled()
    # empty labels
    viewer.add_labels(np.zeros((256, 256), np.uint16), name="empty")
    before["empty"] = np.zeros((256, 256), np.uint16)
    train.pairs.set_pairs([("fluo_dense", "empty")])
    n_errors = len(error_messages())
    click(qtbot, train.start_button)
    wait_idle(qtbot, train)
    assert len(error_messages()) == n_errors + 1
    assert_unchanged(viewer, before)
    assert train.session.bundle is None


def test_predict_from_model_file_never_replaces_painted_layers(viewer, qtbot, tmp_path):
    from tests._gui_helpers import tiny_model_file

    viewer.open_sample(PLUGIN_NAME, "fluo_mixed")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(128)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    first = viewer.layers["fluo_mixed_labels"]
    assert predict.session.model_info.source == "Loaded from tiny.pt"  # now the session's

    # an untouched result is updated in place
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert [layer.name for layer in viewer.layers].count("fluo_mixed_labels") == 1
    assert viewer.layers["fluo_mixed_labels"] is first

    # a painted one is kept, the new result goes to a new layer
    first.data_setitem((np.array([10]), np.array([10])), 999)
    painted = np.array(first.data, copy=True)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    np.testing.assert_array_equal(first.data, painted)
    assert (
        len([layer for layer in viewer.layers if layer.name.startswith("fluo_mixed_labels")]) == 2
    )

    # ... unless the user asks for it
    predict.overwrite.setChecked(True)
    n_layers = len(viewer.layers)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert len(viewer.layers) == n_layers


def test_predict_uses_the_models_fitted_settings_unless_unticked(viewer, qtbot, tmp_path):
    from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint
    from napari_unet.core.predict import PredictConfig, predict
    from tests._gui_helpers import tiny_model_file

    path = tiny_model_file(tmp_path / "tiny.pt")
    bundle = load_checkpoint(path)
    bundle.meta["postprocess"] = {"threshold": 0.45, "h": 3.0}  # as if fitted by training
    save_checkpoint(bundle, path)
    viewer.open_sample(PLUGIN_NAME, "fluo_mixed")
    image = np.asarray(viewer.layers["fluo_mixed"].data)
    predict_w = open_widget(viewer, "Predict")
    predict_w.model_choice.setCurrentText("A model file")
    predict_w.model_path.value = str(path)
    predict_w.tile_size.setValue(128)
    predict_w.overwrite.setChecked(True)
    assert predict_w.fitted.isChecked() and not predict_w.threshold.isEnabled()
    click(qtbot, predict_w.predict_button)
    wait_idle(qtbot, predict_w)
    fitted = np.asarray(viewer.layers["fluo_mixed_labels"].data)
    expected = predict(bundle, image, config=PredictConfig.for_model(bundle, tile_size=128))
    np.testing.assert_array_equal(fitted, expected.labels)
    assert "threshold 0.45, split depth 3 px" in predict_w.status.text()  # what was used

    predict_w.fitted.setChecked(False)  # the user's own values
    assert predict_w.threshold.isEnabled() and predict_w.h.isEnabled()
    predict_w.threshold.setValue(0.05)
    click(qtbot, predict_w.predict_button)
    wait_idle(qtbot, predict_w)
    own = np.asarray(viewer.layers["fluo_mixed_labels"].data)
    cfg = PredictConfig(tile_size=128, threshold=0.05, h=predict_w.h.value() or None)
    np.testing.assert_array_equal(own, predict(bundle, image, config=cfg).labels)
    assert own.max() > 0
    assert "threshold 0.05, split depth 1 px" in predict_w.status.text()
    assert not error_messages()

    plain = np.array(viewer.layers["fluo_mixed_probability"].data)
    predict_w.flips.setChecked(True)  # test-time flips reach the prediction
    click(qtbot, predict_w.predict_button)
    wait_idle(qtbot, predict_w)
    cfg = PredictConfig(tile_size=128, threshold=0.05, h=predict_w.h.value() or None, flips=True)
    expected = predict(bundle, image, config=cfg)
    np.testing.assert_array_equal(viewer.layers["fluo_mixed_labels"].data, expected.labels)
    flipped = np.asarray(viewer.layers["fluo_mixed_probability"].data)
    np.testing.assert_allclose(flipped, expected.probabilities["foreground"], atol=1e-6)
    assert np.abs(flipped - plain).max() > 1e-4
    assert not error_messages()


def test_predict_errors_are_notified_and_change_nothing(viewer, qtbot, tmp_path):
    from tests._gui_helpers import tiny_model_file

    viewer.open_sample(PLUGIN_NAME, "he_cells")
    predict = open_widget(viewer, "Predict")
    before = layer_snapshot(viewer)
    predict.model_choice.setCurrentText("A model file")
    # an unreadable model file
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    predict.model_path.value = str(bad)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert error_messages()
    # a grey model on an RGB image
    predict.model_path.value = str(tiny_model_file(tmp_path / "grey.pt"))
    n_errors = len(error_messages())
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert len(error_messages()) == n_errors + 1
    assert "channels" in error_messages()[-1]
    assert_unchanged(viewer, before)
    assert predict.predict_button.isEnabled()


def test_predict_a_lazy_3d_stack_and_split_its_probabilities(viewer, qtbot, tmp_path):
    da = pytest.importorskip("dask.array")
    from napari_unet.samples import load_sample
    from tests._gui_helpers import tiny_model_file

    image, _ = load_sample("fluo_crowded")
    stack = da.from_array(np.stack([image, image[::-1]]), chunks=(1, 128, 128))
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(128)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    labels = viewer.layers["stack_labels"]
    assert labels.data.shape == (2, 256, 256)
    assert tuple(labels.scale) == (2.0, 0.5, 0.5)

    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("stack_probability")
    assert split.threshold.isEnabled()
    click(qtbot, split.apply_button)
    wait_idle(qtbot, split)
    assert viewer.layers["stack_probability_split"].data.shape == (2, 256, 256)


def test_split_preview_follows_the_current_slice_and_the_settings(viewer, qtbot):
    from napari_unet.samples import load_sample

    _, labels = load_sample("fluo_dense")
    touching = np.stack([labels > 0, np.zeros_like(labels, bool)]).astype(np.uint8)
    viewer.add_labels(touching, name="mask")
    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("mask")
    split.first_axis.setCurrentIndex(split.first_axis.findData("time"))  # frame by frame
    viewer.dims.set_current_step(0, 0)
    split.preview.setChecked(True)
    qtbot.waitUntil(lambda: "mask_split_preview" in viewer.layers, timeout=30_000)
    preview = viewer.layers["mask_split_preview"]
    qtbot.waitUntil(lambda: preview.data.max() > 1, timeout=30_000)
    assert preview.data.ndim == 2
    n_default = len(np.unique(preview.data))
    split.min_distance.setValue(15)  # markers further apart: fewer nuclei
    qtbot.waitUntil(lambda: len(np.unique(preview.data)) < n_default, timeout=30_000)
    viewer.dims.set_current_step(0, 1)  # an empty slice
    qtbot.waitUntil(lambda: preview.data.max() == 0, timeout=30_000)
    split.preview.setChecked(False)
    assert "mask_split_preview" not in viewer.layers


def test_labels_layer_saves_through_the_plugin_writer(viewer, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    layer = viewer.layers["fluo_small_ground_truth"]
    layer.save(str(tmp_path / "gt.tif"), plugin=PLUGIN_NAME)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "gt.tif"), layer.data)


def test_export_measures_a_calibrated_time_series_per_frame(viewer, qtbot, tmp_path):
    image = np.zeros((3, 40, 50), np.uint16)
    labels = np.zeros((3, 40, 50), np.uint16)
    labels[0, 5:15, 5:10] = 1
    labels[2, 20:30, 30:40] = 2
    image[labels > 0] = 500
    geometry = {
        "scale": (5.0, 0.5, 0.5),
        "units": ("s", "um", "um"),
        "axis_labels": ("t", "y", "x"),
    }
    viewer.add_image(image, name="movie", **geometry)
    viewer.add_labels(labels, name="movie_labels", **geometry)
    predict = open_widget(viewer, "Predict")
    assert predict.export_choices() == []  # not made by napari-unet: not ticked
    predict.set_export_choices(["movie_labels"])
    predict.export_rois.setChecked(True)
    predict.export_folder.value = str(tmp_path)
    click(qtbot, predict.export_button)
    qtbot.waitUntil(lambda: predict._export_worker is None, timeout=60_000)
    assert not error_messages()
    rows = list(csv.DictReader(open(tmp_path / "measurements.csv", encoding="utf-8")))
    assert [(r["frame"], r["label"], r["area"], r["area_um2"]) for r in rows] == [
        ("0", "1", "50", "12.5"),
        ("2", "2", "100", "25"),
    ]
    assert {r["mean_intensity"] for r in rows} == {"500"}  # from the image named like it
    rois = roifile.roiread(tmp_path / "movie_labels_rois.zip")
    assert [r.name for r in rois] == ["t1-0001", "t3-0002"]
    from napari_unet.core.io import read_calibration

    axes, size, unit = read_calibration(tmp_path / "movie_labels.tif")
    assert (axes, size, unit) == ("TYX", (0.5, 0.5), "um")  # a time series, calibrated
    # a layer that cannot be exported leaves the folder as it was
    viewer.add_labels(np.ones((2, 2, 2, 4, 4, 4), np.uint8), name="six_d")
    predict.set_export_choices(["movie_labels", "six_d"])
    predict.export_overwrite.setChecked(True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    click(qtbot, predict.export_button)
    qtbot.waitUntil(lambda: predict._export_worker is None, timeout=60_000)
    assert "six_d" in error_messages()[-1] and "Nothing was written" in error_messages()[-1]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
