"""Take the user guide's screenshots in a real napari viewer.

Re-run it after changing a widget, so the pictures stay true::

    python docs/make_screenshots.py            # starts a virtual display if needed
    python docs/make_screenshots.py --quick    # a few seconds of training (layout checks)

It drives the widgets as a user does (sample data, Train, Predict, Split nuclei, a
correction and a retrain) and writes PNGs to ``docs/images/``. Without a display it
starts Xvfb through PyVirtualDisplay (installed with pytest-xvfb) or asks to be run
under ``xvfb-run``. Training takes about two minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_unet import PLUGIN_NAME

IMAGES = Path(__file__).resolve().parent / "images"
WINDOW = (1400, 900)


def _start_display() -> object | None:
    if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):
        return None
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        sys.exit("No display: run under `xvfb-run -a python docs/make_screenshots.py`.")
    display = Display(visible=False, size=(1920, 1080), color_depth=24)
    display.start()
    return display


def _wait(condition, timeout: float = 600.0, widget=None) -> None:
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            status = widget.status.text() if widget is not None else ""
            raise TimeoutError(f"the widget did not finish in time. {status}")
        errors = [n for n in notification_manager.records if n.severity == "error"]
        if errors:
            raise RuntimeError(f"napari-unet reported: {errors[-1].message}")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas and the widgets repaint
        QApplication.processEvents()
        time.sleep(0.02)


def _save(image: np.ndarray | None, path: Path, *, widget=None) -> None:
    """Write a small PNG (256-colour palette) of a window or a widget screenshot."""
    from PIL import Image

    if widget is not None:
        from qtpy.QtWidgets import QScrollArea

        from napari_unet._widgets._common import widget_body

        # all of a napari-unet widget, also the part scrolled away; or one part of it
        part = widget_body(widget) if widget.findChild(QScrollArea) else widget
        pixmap = part.grab()
        tmp = path.with_suffix(".tmp.png")
        pixmap.save(str(tmp))
        picture = Image.open(tmp).convert("RGB")
        tmp.unlink()
    else:
        picture = Image.fromarray(np.asarray(image)[..., :3])
    picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
    picture.save(path, optimize=True)
    print(f"{path.relative_to(IMAGES.parent.parent)}: {path.stat().st_size // 1024} KB")


def _shot(viewer, name: str) -> None:
    """Screenshot the whole window, at the same size every time, image in view."""
    viewer.window._qt_window.resize(*WINDOW)
    _wait(lambda: True)
    viewer.reset_view()
    _wait(lambda: True)
    _save(viewer.screenshot(canvas_only=False), IMAGES / name)


def z_stack(viewer) -> None:
    """Predict the synthetic z-stack sample with the built-in model; show it in 3D."""
    viewer.open_sample(PLUGIN_NAME, "nuclei_zstack")
    dock, predict = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Predict")
    predict.image.setCurrentText("nuclei_zstack")
    predict.predict_button.click()
    _wait(lambda: predict._worker is None, widget=predict)
    for layer in viewer.layers:
        layer.visible = layer.name in ("nuclei_zstack", "nuclei_zstack_labels")
    viewer.layers["nuclei_zstack"].opacity = 0.5
    viewer.dims.ndisplay = 3
    viewer.window._qt_window.resize(*WINDOW)
    _wait(lambda: True)
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.angles = (-10.0, 35.0, 70.0)
    camera.zoom = camera.zoom * 1.2
    _wait(lambda: True)
    _save(viewer.screenshot(canvas_only=False), IMAGES / "predict_3d.png")
    viewer.dims.ndisplay = 2
    viewer.window.remove_dock_widget(dock)
    for name in (
        "nuclei_zstack",
        "nuclei_zstack_ground_truth",
        "nuclei_zstack_labels",
        "nuclei_zstack_probability",
    ):
        if name in viewer.layers:
            viewer.layers.remove(name)


def main() -> None:
    """Drive the widgets on the sample data and save the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="train a few seconds only")
    parser.add_argument("--only-3d", action="store_true", help="the z-stack picture only")
    args = parser.parse_args()

    display = _start_display()
    import napari

    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="napari-unet-docs-"))
    viewer = napari.Viewer(title="napari-unet", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    _wait(lambda: True)
    z_stack(viewer)
    if args.only_3d:
        viewer.close()
        if display is not None:
            display.stop()
        return

    for name in ("fluo_dense", "fluo_crowded", "fluo_mixed"):
        viewer.open_sample(PLUGIN_NAME, name)
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("fluo_dense")
    _shot(viewer, "sample_data.png")

    # ---- Predict with the built-in model, before any training
    predict_dock, predict = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Predict")
    predict.image.setCurrentText("fluo_dense")
    predict.predict_button.click()
    _wait(lambda: predict._worker is None, widget=predict)
    for layer in viewer.layers:
        layer.visible = layer.name in ("fluo_dense", "fluo_dense_labels")
    viewer.layers.selection.active = viewer.layers["fluo_dense_labels"]
    _wait(lambda: True)
    _shot(viewer, "predict_builtin.png")
    viewer.window.remove_dock_widget(predict_dock)
    viewer.layers.remove("fluo_dense_labels")
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("fluo_dense")

    # ---- Train
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Train")
    train.pairs.set_pairs(
        [
            ("fluo_dense", "fluo_dense_ground_truth"),
            ("fluo_crowded", "fluo_crowded_ground_truth"),
            ("fluo_mixed", "fluo_mixed_ground_truth"),
        ]
    )
    train.minutes.setValue(0.2 if args.quick else 3.0)
    train.val_fraction.setValue(0.3)  # one of the three images measures progress
    train.advanced.expand(animate=False)
    train.patch_size.setValue(128)  # more steps per minute on a laptop CPU
    train.save_path.value = str(work / "nuclei.pt")
    train.start_button.click()
    _wait(lambda: len(train.plot.data.loss.get("loss", [])) >= 5 or train._worker is None)
    _save(None, IMAGES / "train_running.png", widget=train)
    _wait(lambda: train._worker is None, widget=train)
    _save(None, IMAGES / "train_widget.png", widget=train)
    train.advanced.collapse(animate=False)
    _shot(viewer, "train.png")

    # ---- Predict
    viewer.window.remove_dock_widget(train_dock)  # one widget at a time: more room
    predict_dock, predict = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Predict")
    predict.image.setCurrentText("fluo_dense")
    predict.predict_button.click()
    _wait(lambda: predict._worker is None, widget=predict)
    for layer in viewer.layers:
        layer.visible = layer.name in ("fluo_dense", "fluo_dense_labels")
    viewer.layers.selection.active = viewer.layers["fluo_dense_labels"]
    _wait(lambda: True)
    _shot(viewer, "predict.png")
    _save(None, IMAGES / "predict_widget.png", widget=predict)

    # ---- Correct & retrain: paint corrections as a user would, one nucleus at a time
    labels = viewer.layers["fluo_dense_labels"]
    truth = viewer.layers["fluo_dense_ground_truth"].data
    painted = 0
    for g in np.unique(truth[(truth > 0) & (labels.data == 0)]):
        nucleus = truth == g
        if np.count_nonzero(labels.data[nucleus]) < 0.5 * np.count_nonzero(nucleus):
            labels.data_setitem(np.nonzero(nucleus), int(labels.data.max()) + 1)  # the brush
            painted += 1
        if painted == 10:
            break
    labels.mode = "paint"
    predict.corrected.setCurrentText("fluo_dense_labels")
    predict.retrain_button.click()
    _wait(lambda: predict._worker is None, widget=predict)
    for layer in viewer.layers:
        layer.visible = layer.name in ("fluo_dense", "fluo_dense_labels_round_2")
    viewer.layers.selection.active = viewer.layers["fluo_dense_labels_round_2"]
    _shot(viewer, "retrain.png")

    # ---- Measurements under the cursor (the layer's features), then Export
    labels = viewer.layers["fluo_dense_labels_round_2"]
    table = labels.features
    biggest = table.sort_values("area").iloc[-1]
    for layer in viewer.layers:
        layer.visible = layer.name in ("fluo_dense", labels.name)
    viewer.layers.selection.active = labels
    labels.mode = "pan_zoom"
    viewer.window._qt_window.resize(*WINDOW)
    _wait(lambda: True)
    viewer.reset_view()
    _wait(lambda: True)
    # as when the mouse rests on the biggest nucleus: its measurements in the status bar
    viewer.mouse_over_canvas = True
    viewer.cursor.position = (biggest["centroid_y"], biggest["centroid_x"])
    viewer.update_status_from_cursor()
    _wait(lambda: True)
    _save(viewer.screenshot(canvas_only=False), IMAGES / "measure.png")
    predict.set_export_choices([labels.name])
    predict.export_rois.setChecked(True)
    predict.export_folder.value = str(work / "export")
    predict.export_button.click()
    _wait(lambda: predict._export_worker is None, widget=predict)
    _save(None, IMAGES / "export.png", widget=predict.export_button.parentWidget())

    # ---- A checked region: a rectangle around a part checked completely (fixed first)
    round2 = viewer.layers["fluo_dense_labels_round_2"]
    h, w = round2.data.shape
    box = (slice(h // 4, h // 2), slice(w // 4, w // 2))
    inside = np.setdiff1d(np.unique(truth[box]), [0])
    wrong = np.setdiff1d(np.unique(round2.data[box]), [0])
    round2.data_setitem(np.nonzero(np.isin(round2.data, wrong)), 0)  # the eraser
    for g in inside:  # and the brush: every nucleus in it, right
        round2.data_setitem(np.nonzero(truth == g), int(round2.data.max()) + 1)
    predict.new_regions_button.click()
    checked = viewer.layers["fluo_dense_checked"]
    y0, y1, x0, x1 = h // 4, h // 2 - 1, w // 4, w // 2 - 1
    checked.add_rectangles(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]))
    for layer in viewer.layers:
        layer.visible = layer.name in ("fluo_dense", round2.name, checked.name)
    _wait(lambda: True)
    _save(None, IMAGES / "retrain_widget.png", widget=predict.retrain_button.parentWidget())
    _shot(viewer, "checked_region.png")
    viewer.layers.remove(checked)

    # ---- Split nuclei, with the live preview
    viewer.window.remove_dock_widget(predict_dock)
    # a binary mask of touching nuclei, as thresholding or another tool gives
    viewer.open_sample(PLUGIN_NAME, "he_tissue")
    mask = (viewer.layers["he_tissue_ground_truth"].data > 0).astype(np.uint8)
    viewer.add_labels(mask, name="he_tissue_mask", opacity=0.5)
    _, split = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Split nuclei")
    split.source.setCurrentText("he_tissue_mask")
    for layer in viewer.layers:
        layer.visible = layer.name == "he_tissue"
    split.preview.setChecked(True)
    _wait(lambda: "he_tissue_mask_split_preview" in viewer.layers)
    _wait(lambda: split._preview_worker is None)
    _shot(viewer, "split.png")

    # ---- On a laptop screen (1366x768): the three panels as tabs of one column
    viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Train")
    viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Predict")
    viewer.window._qt_window.resize(1366, 768)
    _wait(lambda: True)
    viewer.reset_view()
    _wait(lambda: True)
    _save(viewer.screenshot(canvas_only=False), IMAGES / "laptop_1366x768.png")

    viewer.close()
    if display is not None:
        display.stop()


if __name__ == "__main__":
    main()
