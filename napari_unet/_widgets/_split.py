"""The Split nuclei widget: separate touching nuclei, with a live preview.

A thin adapter over :func:`napari_unet.core.split.split_nuclei` (for a Labels layer or
a mask) and :func:`napari_unet.core.split.labels_from_probabilities` (for a probability
Image, e.g. ``<image>_probability`` from Predict). While "Live preview" is on, the
current plane (the part in view, with a margin) is split in a worker every time a
parameter, the slice or the view changes, and shown in a ``<layer>_split_preview``
layer; Apply splits everything in a worker and adds ``<layer>_split``.

A z-stack is split in 3D (:func:`napari_unet.core.volume.split_by_axes`: one object per
nucleus across slices, with the layer's z-step against its pixel size); its preview
splits the stack in view in 3D (the slices around the current one) and shows the
current slice, as Apply would give it. A time series is split frame by frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
)
from superqt.utils import create_worker

from napari_unet._widgets._common import (
    TabbedPanel,
    first_axis_box,
    help_label,
    layer_array,
    layer_geometry,
    notify_error,
    report_worker_error,
    scrollable_layout,
    set_features,
    source_image,
)
from napari_unet._widgets._jobs import Measured, split_and_measure_job, split_job
from napari_unet._widgets._predict import result_metadata
from napari_unet._widgets._session import Session, session_for
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.split import MAX_SMOOTH, SplitConfig, probability_mask, split_settings
from napari_unet.core.volume import (
    guess_axes,
    min_volume,
    spacing_from_voxel_size,
    voxel_size_from_scale,
)

if TYPE_CHECKING:
    import napari

#: Pixels added around the visible region when previewing (watershed needs context).
PREVIEW_MARGIN = 32
#: A z-stack's preview splits this many slices above and below the current one in 3D.
PREVIEW_SLICES = 12

SPLIT_HELP = (
    "Separates touching nuclei with a distance-transform watershed. Pick a Labels layer "
    "(instance labels or a mask) or a probability image from Predict. Larger 'minimum "
    "distance' or 'h' merge more, smaller split more. A nucleus diameter (typed, or "
    "measured in the layer) sets the settings in pixels to suit nuclei of that size."
)


class SplitWidget(TabbedPanel):
    """Split touching nuclei in a Labels/mask layer or a probability image.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Given by napari when the widget is opened from the Plugins menu.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self._worker: Any = None
        self._preview_worker: Any = None
        self._measure_worker: Any = None
        self._preview_dirty = False
        self._preview_layer: Labels | None = None
        self._apply_source: str | None = None
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(150)
        #: the settings' unit: None for pixels, else (pixel size, size of a pixel or voxel
        #: in unit^2 or unit^3, unit, 3D) from the chosen layer's scale and units
        self._calibration: tuple[float, float, str, bool] | None = None
        self._build()
        self._connect()
        self.reset_choices()

    # ---- layout ---------------------------------------------------------------------
    def _build(self) -> None:
        defaults = SplitConfig()  # the same as napari-unet split's
        layout = scrollable_layout(self)
        layout.addWidget(help_label(SPLIT_HELP))
        form = QFormLayout()
        self.source = QComboBox()
        self.source.setToolTip("A Labels layer (instance labels or mask) or a probability image.")
        form.addRow("Input layer", self.source)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(defaults.threshold)
        self.threshold.setToolTip(
            "Probability above which a pixel is a nucleus (probability input)."
        )
        form.addRow("Probability threshold", self.threshold)
        self.first_axis = first_axis_box("split")
        form.addRow("First axis", self.first_axis)
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0.0, 10000.0)
        self.diameter.setDecimals(1)
        self.diameter.setValue(0.0)
        self.diameter.setSpecialValueText("not set")
        self.diameter.setToolTip(
            "Typical nucleus diameter (px): sets the minimum distance, split depth, smoothing "
            "and minimum size below for nuclei of this size (you can still change them). "
            "Measure: from the objects of the current plane of the layer."
        )
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip(
            "Measure the typical nucleus diameter in the current plane of the layer (its "
            "touching nuclei may be merged)."
        )
        row = QHBoxLayout()
        row.addWidget(self.diameter, 1)
        row.addWidget(self.measure_button)
        form.addRow("Nucleus diameter (px)", row)
        self._diameter_label = form.labelForField(row)
        self.min_distance = QDoubleSpinBox()
        self.min_distance.setRange(0.01, 10000.0)
        self.min_distance.setDecimals(2)
        self.min_distance.setValue(defaults.min_distance)
        self.min_distance.setToolTip("Smallest distance (px) between the centres of two nuclei.")
        form.addRow("Minimum distance (px)", self.min_distance)
        self._min_distance_label = form.labelForField(self.min_distance)
        self.h = QDoubleSpinBox()
        self.h.setRange(0.0, 10000.0)
        self.h.setDecimals(2)
        self.h.setSingleStep(0.5)
        self.h.setValue(defaults.h or 0.0)
        self.h.setSpecialValueText("auto")
        self.h.setToolTip(
            "How deep the waist between two nuclei must be (px) to cut them; auto picks it."
        )
        form.addRow("Split depth h", self.h)
        self._h_label = form.labelForField(self.h)
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.0, 10000.0)
        self.smooth.setSingleStep(0.5)
        self.smooth.setValue(defaults.smooth)
        self.smooth.setToolTip("Gaussian smoothing (sigma, px) of the distance map.")
        form.addRow("Smoothing", self.smooth)
        self._smooth_label = form.labelForField(self.smooth)
        self.min_size = QDoubleSpinBox()
        self.min_size.setRange(0.0, 1e9)
        self.min_size.setDecimals(2)
        self.min_size.setValue(defaults.min_size)
        self.min_size.setToolTip(
            "Pieces smaller than this are removed: pixels, or voxels when a z-stack is split in 3D."
        )
        form.addRow("Minimum size (px)", self.min_size)
        self._min_size_label = form.labelForField(self.min_size)
        self.fill_holes = QCheckBox("Fill holes")
        self.fill_holes.setChecked(defaults.fill_holes)
        form.addRow(self.fill_holes)
        layout.addLayout(form)
        self.preview = QCheckBox("Live preview (current slice, in view)")
        self.preview.setToolTip(
            "Shows the result on the part of the current slice in view, updated as you "
            "change the settings, pan, zoom or move through the stack."
        )
        layout.addWidget(self.preview)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Split the whole layer and add the result as a new layer.")
        layout.addWidget(self.apply_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.apply_button.clicked.connect(self._on_apply_clicked)
        self.measure_button.clicked.connect(self._on_measure_clicked)
        self.diameter.valueChanged.connect(self._on_diameter_changed)
        self.preview.toggled.connect(self._on_preview_toggled)
        self.source.currentTextChanged.connect(self._on_source_changed)
        for box in (self.threshold, self.min_distance, self.h, self.smooth, self.min_size):
            box.valueChanged.connect(self._schedule_preview)
        self.fill_holes.toggled.connect(self._schedule_preview)
        self.first_axis.currentIndexChanged.connect(
            lambda _: self._on_source_changed(self.source.currentText())
        )
        self.h.valueChanged.connect(lambda _: self._on_source_changed(self.source.currentText()))
        self._preview_timer.timeout.connect(self._run_preview)
        self.viewer.dims.events.current_step.connect(self._schedule_preview)
        # napari >= 0.9 moved the camera to viewer.scene
        scene = getattr(self.viewer, "scene", None)
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.events.center.connect(self._schedule_preview)
        camera.events.zoom.connect(self._schedule_preview)

    # ---- napari hooks -----------------------------------------------------------------
    def reset_choices(self, event: Any = None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        names = [
            layer.name
            for layer in self.viewer.layers
            if (isinstance(layer, Labels) and layer is not self._preview_layer)
            or (isinstance(layer, Image) and not layer.rgb)
        ]
        current = self.source.currentText()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(names)
        if current in names:
            self.source.setCurrentText(current)
        else:
            # prefer a Labels layer: the usual input
            labels = [n for n in names if isinstance(self.viewer.layers[n], Labels)]
            if labels:
                self.source.setCurrentText(labels[-1])
        self.source.blockSignals(False)
        if self._preview_layer is not None and self._preview_layer not in self.viewer.layers:
            self._preview_layer = None
        self._on_source_changed(self.source.currentText())

    # ---- inputs -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Return the fields of a :class:`~napari_unet.core.split.SplitConfig`, in pixels.

        With the layer's ``axes`` (see :meth:`layer_axes`) and, for a z-stack, ``spacing``:
        its voxel size in y/x pixels (from the layer's scale).
        """
        params: dict[str, Any] = {
            "threshold": float(self.threshold.value()),
            "min_distance": max(1, int(round(self._to_px(self.min_distance.value())))),
            "h": self._to_px(self.h.value()) or None,
            "smooth": min(MAX_SMOOTH, self._to_px(self.smooth.value())),
            "min_size": int(round(self._to_px(self.min_size.value(), size=True))),
            "fill_holes": self.fill_holes.isChecked(),
            "axes": None,
            "spacing": None,
        }
        name = self.source.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if layer is not None:
            axes, voxel = self.layer_axes(layer)
            params["axes"] = axes
            if "Z" in axes:
                params["spacing"] = spacing_from_voxel_size(voxel)
        return params

    # ---- units ------------------------------------------------------------------------
    def _to_px(self, value: float, size: bool = False) -> float:
        """Return a displayed value in pixels (lengths), or pixels / voxels (sizes)."""
        cal = self._calibration
        if cal is None:
            return float(value)
        return float(value) / (cal[1] if size else cal[0])

    def _from_px(self, value: float, size: bool = False) -> float:
        cal = self._calibration
        if cal is None:
            return float(value)
        return float(value) * (cal[1] if size else cal[0])

    def layer_calibration(self, layer: Layer | None) -> tuple[float, float, str, bool] | None:
        """Return (pixel size, pixel area or voxel volume, unit, 3D) of a calibrated layer.

        None when the layer's scale is 1 or its unit is not a physical one: the settings are
        then in pixels (and voxels).
        """
        from napari_unet._widgets._predict import _pixel_size

        if layer is None:
            return None
        found = _pixel_size(layer)
        if found is None or found[1] == "units":
            return None
        size, unit = found
        axes, voxel = self.layer_axes(layer)
        if "Z" in axes:
            if voxel is None:
                return None
            return size, float(np.prod(voxel)), unit, True
        yx = [float(v) for v in layer.scale[-2:]]
        return size, yx[0] * yx[1], unit, False

    def _set_calibration(self, layer: Layer | None) -> None:
        """Show the settings in the layer's unit (converting the values shown), or in px."""
        new = self.layer_calibration(layer)
        old = self._calibration
        if new != old:
            boxes = (
                (self.diameter, False),
                (self.min_distance, False),
                (self.h, False),
                (self.smooth, False),
                (self.min_size, True),
            )
            in_px = [self._to_px(box.value(), size) for box, size in boxes]
            self._calibration = new
            for (box, size), value in zip(boxes, in_px, strict=True):
                box.blockSignals(True)
                box.setValue(self._from_px(value, size))
                box.blockSignals(False)
        axes = self.layer_axes(layer)[0] if layer is not None else "YX"
        unit = "px" if new is None else new[2]
        self._diameter_label.setText(f"Nucleus diameter ({unit})")
        self._min_distance_label.setText(f"Minimum distance ({unit})")
        self._h_label.setText("Split depth h" + ("" if new is None else f" ({unit})"))
        self._smooth_label.setText("Smoothing" + ("" if new is None else f" ({unit})"))
        if new is not None:
            size_unit = f"{unit}\u00b3" if new[3] else f"{unit}\u00b2"
        else:
            size_unit = "voxels" if "Z" in axes else "px"
        self._min_size_label.setText(f"Minimum size ({size_unit})")

    def layer_axes(self, layer: Layer) -> tuple[str, tuple[float, float, float] | None]:
        """Return the layer's axes (``YX``, ``ZYX``, ``TYX``, ``TZYX``) and its voxel size.

        The voxel size (z, y, x) comes from the layer's scale; None when it is napari's
        default (all 1: z-steps taken as long as the pixels).
        """
        ndim = layer.ndim
        axes = guess_axes(ndim, getattr(layer, "axis_labels", None), self.first_axis.currentData())
        return axes, voxel_size_from_scale(tuple(layer.scale), axes)

    def _source_layer(self) -> Layer:
        name = self.source.currentText()
        if not name or name not in self.viewer.layers:
            raise NapariUnetError(
                "Pick a Labels layer (or a probability image) to split; Predict makes both."
            )
        layer = self.viewer.layers[name]
        if not isinstance(layer, Labels | Image) or getattr(layer, "rgb", False):
            raise NapariUnetError(
                f"Layer '{name}' cannot be split: pick a Labels layer or a single-channel "
                "probability image."
            )
        return layer

    # ---- nucleus diameter -----------------------------------------------------------------
    def _on_diameter_changed(self, value: float) -> None:
        """Set the settings for nuclei of ``value`` across (in the unit shown; 0: leave them).

        In a z-stack split in 3D the smallest size is the ball whose cross-section is the
        2D setting's area.
        """
        if value <= 0:
            return
        settings = split_settings(self._to_px(value))
        min_size = float(settings["min_size"])
        params = self.params()
        if params["axes"] is not None and "Z" in params["axes"]:
            min_size = float(min_volume(min_size, params["spacing"] or (1.0, 1.0, 1.0)))
        self.min_distance.setValue(self._from_px(settings["min_distance"]))
        self.h.setValue(self._from_px(float(settings["h"])))
        self.smooth.setValue(min(self._from_px(float(settings["smooth"])), self.smooth.maximum()))
        self.min_size.setValue(self._from_px(min_size, size=True))

    def _on_measure_clicked(self) -> None:
        try:
            self.measure_diameter()
        except NapariUnetError as error:
            notify_error(error)

    def measure_diameter(self) -> None:
        """Measure the typical nucleus diameter in the current plane, in a worker.

        The result goes into the diameter box, which sets the pixel settings.
        """
        from napari_unet.core.size import mask_diameter

        layer = self._source_layer()
        index, _ = self.preview_region(layer)
        plane = np.asarray(layer_array(layer, in_memory=False)[index])
        if isinstance(layer, Image):
            mask = probability_mask(plane, float(self.threshold.value()))  # as Apply splits
        else:
            mask = plane > 0
        worker = create_worker(mask_diameter, mask, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_measured)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_measure_finished)
        self._measure_worker = worker
        self.measure_button.setEnabled(False)
        self.status.setText(f"Measuring the nuclei of {layer.name}...")
        worker.start()

    def _on_measured(self, estimate: Any) -> None:
        if not estimate.found:
            self.status.setText("No nuclei to measure in this plane; the settings are unchanged.")
            return
        self.diameter.setValue(round(self._from_px(float(estimate.diameter)), 2))
        note = f" ({estimate.notes})" if estimate.notes else ""
        self.status.setText(
            f"Nuclei about {estimate.diameter:.0f} px across ({estimate.n_objects} measured)"
            f"{note}: settings set for them."
        )

    def _on_measure_finished(self) -> None:
        self._measure_worker = None
        self.measure_button.setEnabled(bool(self.source.currentText()))

    # ---- apply ----------------------------------------------------------------------------
    def _on_apply_clicked(self) -> None:
        try:
            self.apply()
        except NapariUnetError as error:
            notify_error(error)

    def apply(self) -> None:
        """Split the whole chosen layer in a worker; the result becomes a new layer."""
        layer = self._source_layer()
        data = layer_array(layer)
        if (
            isinstance(layer, Image)
            and data.ndim >= 2
            and not np.issubdtype(data.dtype, np.floating)
        ):
            raise NapariUnetError(
                f"Image '{layer.name}' is not a probability map (its values are "
                f"{data.dtype}); pick a Labels layer, or the <image>_probability layer "
                "made by Predict."
            )
        shape = data.shape[:-1] if isinstance(layer, Image) and layer.rgb else data.shape
        image, axis = source_image(self.viewer, layer, tuple(shape))
        worker = create_worker(
            split_and_measure_job,
            data,
            from_probability=isinstance(layer, Image),
            params=self.params(),
            image=image,
            channel_axis=axis,
            measure={**layer_geometry(layer), "axes": self.layer_axes(layer)[0]},
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        worker.returned.connect(self._on_apply_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_apply_finished)
        self._worker = worker
        self._apply_source = layer.name
        self.apply_button.setEnabled(False)
        self.status.setText(f"Splitting {layer.name}...")
        worker.start()

    def _on_apply_returned(self, measured: Measured) -> None:
        labels = measured.labels
        name = self._apply_source or "labels"
        source = self.viewer.layers[name] if name in self.viewer.layers else None
        kwargs: dict[str, Any] = {}
        if source is not None:
            kwargs = {
                "scale": tuple(source.scale),
                "translate": tuple(source.translate),
                "units": tuple(str(u) for u in source.units),
                "axis_labels": tuple(str(a) for a in source.axis_labels),
            }
        self.preview.setChecked(False)
        layer = self.viewer.add_labels(
            labels, name=f"{name}_split", metadata=result_metadata(name, "split"), **kwargs
        )
        set_features(layer, measured.features)
        if measured.note:
            show_warning(measured.note)
        self.session.track_result(layer)
        self.session.record_baseline(layer, labels)  # to tell the user's edits later
        n = len(np.unique(labels)) - 1 if labels.size else 0
        self.status.setText(f"{n} nuclei in '{layer.name}'.")

    def _on_errored(self, error: BaseException) -> None:
        # shown as a napari notification; no layer was changed
        report_worker_error(error)
        self.status.setText(f"Failed: {error}")

    def _on_apply_finished(self) -> None:
        self._worker = None
        self._apply_source = None
        self._on_source_changed(self.source.currentText())

    # ---- live preview -------------------------------------------------------------------
    def _on_preview_toggled(self, on: bool) -> None:
        if on:
            self._schedule_preview()
        else:
            self._preview_timer.stop()
            self._remove_preview_layer()

    def _schedule_preview(self, *args: Any) -> None:
        if self.preview.isChecked():
            self._preview_timer.start()

    def preview_region(self, layer: Layer) -> tuple[tuple[int, ...], tuple[slice, slice]]:
        """Return the current plane (leading indices) and the (Y, X) region in view + margin."""
        data = layer_array(layer, in_memory=False)
        lead = data.ndim - 2
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        index = tuple(int(np.clip(round(point[i]), 0, data.shape[i] - 1)) for i in range(lead))
        height, width = data.shape[-2:]
        corners = np.asarray(getattr(layer, "corner_pixels", np.zeros((2, data.ndim))))
        y0, x0 = (int(v) for v in corners[0, -2:])
        y1, x1 = (int(v) for v in corners[1, -2:])
        if y1 <= y0 or x1 <= x0:  # not drawn yet: the whole plane
            y0, x0, y1, x1 = 0, 0, height, width
        region = (
            slice(max(0, y0 - PREVIEW_MARGIN), min(height, y1 + PREVIEW_MARGIN + 1)),
            slice(max(0, x0 - PREVIEW_MARGIN), min(width, x1 + PREVIEW_MARGIN + 1)),
        )
        return index, region

    def _run_preview(self) -> None:
        if not self.preview.isChecked():
            return
        if self._preview_worker is not None:  # one at a time; the newest request wins
            self._preview_dirty = True
            return
        try:
            layer = self._source_layer()
        except NapariUnetError as error:
            self.status.setText(str(error))
            return
        index, region = self.preview_region(layer)
        data = layer_array(layer, in_memory=False)
        params = self.params()
        axes = params["axes"] or "YX"
        plane = None
        if "Z" in axes:  # split the slices around the current one in 3D, show the current
            z_axis = len(index) - 1
            z = index[z_axis]
            z_range = slice(
                max(0, z - PREVIEW_SLICES), min(data.shape[z_axis], z + PREVIEW_SLICES + 1)
            )
            crop = np.array(data[index[:z_axis] + (z_range,) + region], copy=True)
            params = {**params, "axes": "ZYX"}
            plane = z - z_range.start
        else:
            crop = np.array(data[index + region], copy=True)
            params = {**params, "axes": None}
        worker = create_worker(
            split_job,
            crop,
            from_probability=isinstance(layer, Image),
            params=params,
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        offset = (region[0].start, region[1].start)

        def show(labels: np.ndarray) -> None:
            self._show_preview(layer, labels if plane is None else labels[plane], offset)

        worker.returned.connect(show)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_preview_finished)
        self._preview_worker = worker
        self._preview_dirty = False
        worker.start()

    def _show_preview(self, source: Layer, labels: np.ndarray, offset: tuple[int, int]) -> None:
        if not self.preview.isChecked() or source not in self.viewer.layers:
            return
        scale = np.asarray(source.scale)[-2:]
        translate = np.asarray(source.translate)[-2:] + np.asarray(offset) * scale
        name = f"{source.name}_split_preview"
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers:
            layer = self.viewer.add_labels(
                labels,
                name=name,
                scale=tuple(scale),
                translate=tuple(translate),
                opacity=0.6,
                metadata=result_metadata(source.name, "split_preview"),
            )
            self._preview_layer = layer
        else:
            layer.data = labels
            layer.translate = tuple(translate)
            layer.scale = tuple(scale)
            layer.name = name
        n = len(np.unique(labels)) - 1 if labels.size else 0
        axes = self.params()["axes"] or "YX"
        where = " (split in 3D; this slice shown)" if "Z" in axes else ""
        self.status.setText(f"Preview: {n} nuclei in view{where}.")

    def _on_preview_finished(self) -> None:
        self._preview_worker = None
        if self._preview_dirty:
            self._preview_dirty = False
            self._schedule_preview()

    def _remove_preview_layer(self) -> None:
        layer, self._preview_layer = self._preview_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    # ---- state ------------------------------------------------------------------------------
    def _on_source_changed(self, name: str) -> None:
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        is_probability = isinstance(layer, Image)
        self.threshold.setEnabled(is_probability)
        for box in (self.h, self.smooth):
            box.setEnabled(layer is not None)
        # with an explicit h the markers are h-maxima: min_distance is not used
        self.min_distance.setEnabled(layer is not None and not self.h.value())
        self.apply_button.setEnabled(layer is not None and self._worker is None)
        self.measure_button.setEnabled(layer is not None and self._measure_worker is None)
        self.preview.setEnabled(layer is not None)
        is_3d = layer is not None and layer.ndim == 3
        self.first_axis.setEnabled(is_3d)
        self._set_calibration(layer)
        self._schedule_preview()
