"""Object size in the widgets: Predict's object diameter, Split nuclei's nucleus diameter."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from tests._gui_helpers import error_messages, open_widget, tiny_model_file, wait_idle
from tests._synthetic import sized_nuclei

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _sized_model(path):
    from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint

    bundle = load_checkpoint(tiny_model_file(path))
    bundle.meta["object_diameter"] = 20.0
    return save_checkpoint(bundle, path)


def test_predict_object_diameter_in_layer_units_and_the_size_used(viewer, qtbot, tmp_path):
    from napari_unet.core.size import median_diameter

    img, lab = sized_nuclei(60, seed=1, shape=(300, 280), n=16)
    viewer.add_image(img, name="big", scale=(0.5, 0.5), units=("um", "um"))
    viewer.add_image(img, name="plain")
    predict = open_widget(viewer, "Predict")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(_sized_model(tmp_path / "sized.pt"))
    predict.tile_size.setValue(128)
    predict.device.setCurrentText("cpu")

    predict.image.setCurrentText("plain")
    assert predict.diameter_label.text() == "Object diameter (px)"
    assert predict.predict_config()["diameter"] == "auto"  # the default
    predict.image.setCurrentText("big")
    assert predict.diameter_label.text() == "Object diameter (µm)"
    predict.diameter.setValue(15.0)  # µm: 30 pixels of 0.5 µm
    assert predict.predict_config()["diameter"] == pytest.approx(30.0)

    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    assert not error_messages()
    assert viewer.layers["big_labels"].data.shape == img.shape
    status = predict.status.text()
    assert "Diameter 30 px = 15 µm (given), resized x0.67 to the model's 20 px" in status

    predict.diameter.setValue(0.0)  # auto: the estimate is shown
    click(qtbot, predict.predict_button)
    wait_idle(qtbot, predict)
    status = predict.status.text()
    assert "(estimated), resized x" in status
    shown = float(status.split("Diameter ")[1].split(" px")[0])
    truth = median_diameter(lab)
    assert truth / 1.3 < shown < truth * 1.3


def test_split_nucleus_diameter_sets_the_pixel_settings(viewer, qtbot):
    from napari_unet.core.split import split_settings

    _, lab = sized_nuclei(80, seed=2, shape=(500, 500), n=20)
    viewer.add_labels((lab > 0).astype(np.uint8), name="mask")
    split = open_widget(viewer, "Split nuclei")
    split.source.setCurrentText("mask")
    assert split.params()["min_distance"] == 4  # today's defaults until a diameter is set
    split.diameter.setValue(80.0)
    expected = split_settings(80.0)
    params = split.params()
    assert params["min_distance"] == expected["min_distance"]
    assert params["h"] == pytest.approx(expected["h"], abs=0.01)
    assert params["smooth"] == pytest.approx(expected["smooth"])
    assert params["min_size"] == expected["min_size"]

    split.diameter.setValue(0.0)
    click(qtbot, split.measure_button)
    qtbot.waitUntil(lambda: split.diameter.value() > 0, timeout=60_000)
    assert 80 / 1.3 < split.diameter.value() < 80 * 1.3
    assert "Nuclei about" in split.status.text()
    qtbot.waitUntil(lambda: split.measure_button.isEnabled(), timeout=10_000)
    assert not error_messages()
