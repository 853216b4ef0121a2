"""z-stacks in the widgets (issue 22): Split nuclei in 3D, its preview, time series per frame."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet.core.metrics import match_objects
from napari_unet.samples import synthetic_nuclei_stack
from tests._gui_helpers import error_messages, open_widget, wait_idle


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images hold the same objects (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def test_split_nuclei_splits_a_z_stack_in_3d_and_its_preview_agrees(viewer, qtbot):
    _, truth, pairs = synthetic_nuclei_stack((16, 128, 128), n=14, seed=4)
    assert pairs  # some nuclei touch
    viewer.add_labels((truth > 0).astype(np.uint8), name="mask", scale=(1.5, 0.5, 0.5))
    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("mask")
    assert split.first_axis.isEnabled()
    assert split.layer_axes(viewer.layers["mask"]) == ("ZYX", (1.5, 0.5, 0.5))
    assert split.params()["spacing"] == (3.0, 1.0, 1.0)  # z-step of 3 pixels
    split.h.setValue(1.0)
    split.min_size.setValue(30)
    click(qtbot, split.apply_button)
    wait_idle(qtbot, split)
    assert not error_messages()
    result = viewer.layers["mask_split"].data
    m = match_objects(truth, result, 0.5)
    assert int(m.tp[0]) >= truth.max() - 1 and int(m.fp[0]) <= 1, m
    assert tuple(viewer.layers["mask_split"].scale) == (1.5, 0.5, 0.5)

    # the preview of the current slice is the 3D result's slice
    viewer.dims.set_current_step(0, 8)
    split.preview.setChecked(True)
    qtbot.waitUntil(lambda: "mask_split_preview" in viewer.layers, timeout=60_000)
    preview = viewer.layers["mask_split_preview"]
    qtbot.waitUntil(lambda: preview.data.max() > 0, timeout=60_000)
    assert "split in 3D" in split.status.text()
    index, region = split.preview_region(viewer.layers["mask"])
    assert index == (8,)
    assert _same_partition(preview.data, result[(8,) + region])
    split.preview.setChecked(False)

    # read as a time series, every slice is split on its own: many more objects
    split.first_axis.setCurrentIndex(split.first_axis.findData("time"))
    assert split.params()["axes"] == "TYX"
    click(qtbot, split.apply_button)
    wait_idle(qtbot, split)
    frames = viewer.layers[-1].data
    assert len(np.unique(frames)) - 1 > 3 * truth.max()


def test_a_layer_named_like_time_is_split_per_frame(viewer, qtbot):
    _, truth, _ = synthetic_nuclei_stack((8, 96, 96), n=6, seed=2)
    viewer.add_labels(truth, name="movie", axis_labels=("t", "y", "x"))
    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("movie")
    assert split.layer_axes(viewer.layers["movie"]) == ("TYX", None)
    assert split.params()["spacing"] is None
    assert split._min_size_label.text() == "Minimum size (px)"
    split.first_axis.setCurrentIndex(split.first_axis.findData("z"))
    assert split._min_size_label.text() == "Minimum size (voxels)"


def test_predict_a_z_stack_gives_3d_nuclei_with_the_builtin_model(viewer, qtbot, monkeypatch):
    """The z-stack sample, as a user opens it, predicted with the built-in model: 3D objects."""
    from napari_unet import PLUGIN_NAME
    from napari_unet.core.builtin import ENV_VAR, PACKAGE_MODELS_DIR, read_index

    if not any(e.name == "nuclei" for e in read_index(PACKAGE_MODELS_DIR, strict=False)):
        pytest.skip("the package ships no 'nuclei' model")
    monkeypatch.delenv(ENV_VAR, raising=False)  # the package's own models
    viewer.open_sample(PLUGIN_NAME, "nuclei_zstack")
    truth = viewer.layers["nuclei_zstack_ground_truth"].data
    predict = open_widget(viewer, "Predict")
    predict.image.setCurrentText("nuclei_zstack")
    assert predict.first_axis.isEnabled()
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict, timeout=300_000)
    assert not error_messages()
    labels = viewer.layers["nuclei_zstack_labels"]
    assert labels.data.shape == truth.shape and tuple(labels.scale) == (1.5, 0.5, 0.5)
    m = match_objects(truth, labels.data, 0.5)
    f1 = 2 * int(m.tp[0]) / (2 * int(m.tp[0]) + int(m.fp[0]) + int(m.fn[0]))
    assert f1 >= 0.9, m
    assert "Labelled in 3D across 32 z-slices (ZYX); voxel size 1.5 x 0.5 x 0.5" in (
        predict.status.text()
    )
    # told it is a time series, the same image is labelled frame by frame
    predict.first_axis.setCurrentIndex(predict.first_axis.findData("time"))
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict, timeout=300_000)
    frames = viewer.layers["nuclei_zstack_labels"].data
    assert len(np.unique(frames)) - 1 > 3 * truth.max()
    assert "Labelled in 3D" not in predict.status.text()


def test_a_z_stack_saved_from_napari_keeps_its_voxel_size(viewer, tmp_path):
    """Labels of a calibrated z-stack saved through the plugin's writer open in Fiji calibrated."""
    from napari_unet import PLUGIN_NAME
    from napari_unet.core.io import read_calibration

    _, truth, _ = synthetic_nuclei_stack((8, 64, 64), n=4, seed=1)
    layer = viewer.add_labels(truth, name="nuclei", scale=(2.0, 0.5, 0.5), units=("um", "um", "um"))
    layer.save(str(tmp_path / "nuclei.tif"), plugin=PLUGIN_NAME)
    axes, size, unit = read_calibration(tmp_path / "nuclei.tif")
    assert axes == "ZYX" and unit == "um" and np.allclose(size, (2.0, 0.5, 0.5))


def test_correct_and_retrain_on_a_z_stack(viewer, qtbot, tmp_path):
    """A correction painted in one slice of 3D labels trains on that slice; the new
    prediction is 3D again."""
    from napari_unet._widgets._predict import COUNT_EDITS
    from tests._gui_helpers import tiny_model_file

    image, _, _ = synthetic_nuclei_stack((12, 96, 96), n=8, seed=11)
    viewer.add_image(image, name="stack", scale=(1.5, 0.5, 0.5))
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(tiny_model_file(tmp_path / "tiny.pt"))
    predict.tile_size.setValue(96)
    predict.retrain_steps.setValue(5)
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    layer = viewer.layers["stack_labels"]
    assert layer.data.shape == image.shape
    # paint one nucleus into slice 6 (napari's brush paints in the slice in view)
    viewer.dims.set_current_step(0, 6)
    layer.brush_size = 9
    layer.paint((6, 48, 48), 777)
    predict.counts.setCurrentText(COUNT_EDITS)
    # and a region checked in slice 3: a rectangle drawn there lies in that slice only
    click(qtbot, predict.new_regions_button)
    shapes = viewer.layers["stack_checked"]
    assert shapes.ndim == 3 and tuple(shapes.scale) == (1.5, 0.5, 0.5)
    shapes.add_rectangles(np.array([[3, 10, 10], [3, 10, 40], [3, 40, 40], [3, 40, 10]]))
    click(qtbot, predict.retrain_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    pair = predict.session.training_set["stack"]
    annotated = np.flatnonzero((np.asarray(pair.labels) > 0).any(axis=(1, 2)))
    assert annotated.tolist() == [3, 6]  # the slices painted or checked, not the others
    assert (np.asarray(pair.labels)[6, 48, 48]) >= 2
    assert (np.asarray(pair.labels)[3, 10:41, 10:41] > 0).all()
    again = viewer.layers["stack_labels_round_2"]
    assert again.data.shape == image.shape
    assert "Labelled in 3D across 12 z-slices (ZYX); voxel size 1.5 x 0.5 x 0.5" in (
        predict.status.text()
    )


def test_split_settings_follow_a_calibrated_layer_in_its_units(viewer, qtbot):
    """A layer in um: distances in um, the smallest size in um^3 for a z-stack; the split
    gets them in pixels and voxels."""
    _, truth, _ = synthetic_nuclei_stack((12, 96, 96), n=6, seed=3)
    viewer.add_labels(truth, name="plain")
    viewer.add_labels(truth, name="um", scale=(1.5, 0.5, 0.5), units=("um", "um", "um"))
    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("plain")
    split.min_distance.setValue(6)
    split.min_size.setValue(300)
    assert split._min_distance_label.text() == "Minimum distance (px)"
    assert split._min_size_label.text() == "Minimum size (voxels)"
    split.source.setCurrentText("um")  # the values shown follow: 6 px = 3 um
    assert split._min_distance_label.text() == "Minimum distance (\u00b5m)"
    assert split._min_size_label.text() == "Minimum size (\u00b5m\u00b3)"
    assert split.min_distance.value() == pytest.approx(3.0)
    assert split.min_size.value() == pytest.approx(300 * 1.5 * 0.25)
    params = split.params()
    assert params["min_distance"] == 6 and params["min_size"] == 300
    split.min_distance.setValue(5.0)  # 5 um = 10 px
    assert split.params()["min_distance"] == 10
    split.diameter.setValue(10.0)  # 10 um = 20 px: the defaults for 20 px nuclei
    assert split.params()["min_distance"] == 4 and split.params()["h"] == pytest.approx(1.4)
    # a time series in um: areas in um^2
    split.first_axis.setCurrentIndex(split.first_axis.findData("time"))
    assert split._min_size_label.text() == "Minimum size (\u00b5m\u00b2)"
