"""The Predict widget: segment an image layer, correct the result, retrain, export.

Three parts, each a thin adapter over the core:

* **Predict** runs :func:`napari_unet.core.predict.iter_predict` in a child process (a
  worker thread relays it, see :mod:`._process`) and adds ``<image>_probability`` (Image)
  and ``<image>_labels`` (Labels) layers. A result layer
  that napari-unet made and nobody has painted on since is updated in place; a layer the
  user painted is never replaced unless "Replace layers I painted" is ticked (a new
  layer is added instead).
* **Correct & retrain**: what the user painted or erased in a Labels layer (or every
  object in it) becomes the image's annotation in the session's training set, merged
  with the earlier rounds' (:mod:`napari_unet.core.corrections`); the current model is
  fine-tuned on the whole set (:func:`napari_unet.core.finetune.iter_finetune`: a few
  hundred steps at most, then the old and new model compared on the corrections), and
  the image is predicted again into a new layer: the corrected layer stays as it is.
* **Export** writes the Labels layers the user ticks to a folder: label TIFFs
  (:mod:`napari_unet._writer`), ImageJ ROI sets for Fiji and one measurements CSV.

Predicted (and re-predicted) labels carry their objects' measurements as the layer's
``features`` (:mod:`napari_unet.core.measure`): napari shows them under the cursor.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from napari.utils.colormaps.standardize_color import transform_color
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible
from superqt.utils import create_worker

from napari_unet._widgets._common import (
    METADATA_KEY,
    JobGuard,
    TabbedPanel,
    file_edit,
    first_axis_box,
    help_label,
    is_alive,
    layer_array,
    layer_geometry,
    notify_error,
    path_value,
    precision_box,
    relay,
    report_worker_error,
    scrollable_layout,
    set_features,
    show_info,
    source_image,
)
from napari_unet._widgets._common import (
    spin_box as _spin,
)
from napari_unet._widgets._jobs import (
    ExportItem,
    Predicted,
    Retrained,
    export_job,
    predict_job,
    retrain_job,
)
from napari_unet._widgets._session import Session, session_for
from napari_unet._widgets._train import DEFAULT_MODEL_DIR
from napari_unet.core.builtin import builtin_entry, is_builtin, list_models
from napari_unet.core.data import guess_channel_axis
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.finetune import FinetuneConfig
from napari_unet.core.predict import SPLIT_METHODS, PredictConfig, settings_text

if TYPE_CHECKING:
    import napari

MODEL_SESSION, MODEL_FILE = "The session's model", "A model file"

RETRAIN_HELP = (
    "1. Predict an image.  2. Fix a few objects in its labels layer with napari's brush, "
    "eraser and fill, or fix everything inside a rectangle drawn with Checked regions > "
    "New.  3. Press Retrain: what you painted or erased joins the training set "
    "(with your earlier corrections, of this and other images), the model is fine-tuned "
    "and the image is predicted again into a new layer; your corrected layer is kept. "
    "Correct the new prediction and retrain again."
)
#: What of the corrected layer counts as annotation.
COUNT_EDITS = "Only what I painted or erased"
COUNT_ALL = "Every object in the layer (all checked)"
#: The "Checked regions" choice for no Shapes layer.
NO_REGIONS = "(none)"
#: Edge colours of the checked regions: new ones, and those a retrain has learned.
REGION_COLOR = "yellow"
LEARNED_COLOR = (0.55, 0.55, 0.55, 1.0)


def _settings_text(settings: dict[str, Any]) -> str:
    """' (threshold 0.6, split depth 0.5 px)' from a PredictConfig dict ('' if none)."""
    return f" ({settings_text(settings)})" if "threshold" in settings else ""


def result_metadata(source: str, kind: str) -> dict[str, Any]:
    """``layer.metadata`` of a result layer: what made it, from which image."""
    return {METADATA_KEY: {"source": source, "kind": kind}}


class PredictWidget(TabbedPanel):
    """Predict nuclei in an image layer; correct, retrain and export.

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
        self._stop: threading.Event | None = None
        # prediction and retraining run in a child process (the viewer never stalls);
        # tests that inject faults into this process switch it off
        self.predict_in_child_process = True
        self._job: dict[str, Any] | None = None
        self._guard: JobGuard | None = None
        self._export_worker: Any = None
        #: the checked regions of the retrain being started: (Shapes layer, indices used,
        #: those regions as (kind, vertices), indices of those learned before)
        self._regions_used: (
            tuple[Shapes, list[int], list[tuple[str, np.ndarray]], list[int]] | None
        ) = None
        self._build()
        self._connect()
        self.reset_choices()
        self._update_buttons()

    # ---- layout ---------------------------------------------------------------------
    def _build(self) -> None:
        layout = scrollable_layout(self)
        form = QFormLayout()
        self.image = QComboBox()
        self.image.setToolTip(
            "The image to segment: 2D, a z-stack or a time series; grey, RGB or "
            "multi-channel; also large (dask) images, predicted tile by tile."
        )
        form.addRow("Image", self.image)
        self.first_axis = first_axis_box("labelled")
        form.addRow("First axis", self.first_axis)
        self.model_choice = QComboBox()
        self.model_choice.addItem(MODEL_SESSION)
        # the built-in models by title (only the index is read here: each is loaded when a
        # prediction runs), chosen while the session has no model of its own
        self._builtins = {m.title: m for m in list_models()}
        self.model_choice.addItems(list(self._builtins))
        self.model_choice.addItem(MODEL_FILE)
        self.model_choice.setToolTip(
            "The model to predict with: the one trained or loaded in this session, a "
            "built-in model shipped with napari-unet, or a model file (.pt)."
        )
        #: True while the choice is the default one (a built-in model with no session
        #: model): a model trained or loaded later then becomes the choice
        self._default_choice = bool(self._builtins) and self.session.bundle is None
        if self._default_choice:
            self.model_choice.setCurrentText(next(iter(self._builtins)))
        form.addRow("Model", self.model_choice)
        self.model_path = file_edit("r", "*.pt", "A model file saved by napari-unet (.pt).")
        form.addRow("Model file", self.model_path.native)
        self.diameter = _spin(
            0.0,
            100000.0,
            0.0,
            step=1.0,
            decimals=2,
            tip="Typical object diameter in the image, for a model trained with object size "
            "normalisation: the image is resized so that its objects have the model's size, "
            "and the labels come back at the image's size. auto (0): estimated from the "
            "image. In the layer's units when it has a scale, else in pixels. Models "
            "trained without it predict images as they are.",
        )
        self.diameter.setSpecialValueText("auto")
        self.diameter_label = QLabel("Object diameter (px)")
        form.addRow(self.diameter_label, self.diameter)
        layout.addLayout(form)
        self.model_label = help_label(self.session.describe_model())
        layout.addWidget(self.model_label)

        self.advanced = QCollapsible("Advanced settings")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        d = PredictConfig()  # one source of truth for the defaults
        self.threshold = _spin(
            0.01,
            0.99,
            d.threshold,
            step=0.05,
            decimals=2,
            tip="Pixels with a nucleus probability above this are foreground.",
        )
        adv_form.addRow("Probability threshold", self.threshold)
        self.fitted = QCheckBox("Use the model's fitted threshold and split depth")
        self.fitted.setChecked(True)
        self.fitted.setToolTip(
            "Models trained by napari-unet store the probability threshold and split depth "
            "that worked best on their validation images; untick to set your own below."
        )
        adv_form.addRow(self.fitted)
        self.split = QCheckBox("Split touching nuclei")
        self.split.setChecked(d.split)
        adv_form.addRow(self.split)
        self.split_method = QComboBox()
        self.split_method.addItems(list(SPLIT_METHODS))
        self.split_method.setCurrentText(d.split_method)
        self.split_method.setToolTip(
            "distance: watershed on the distance transform of the foreground (default); "
            "boundary: cut where the model's boundary map is high."
        )
        adv_form.addRow("Split by", self.split_method)
        self.min_distance = _spin(
            1,
            1000,
            d.min_distance,
            tip="Minimum distance (pixels) between two nuclei centres (used when the split "
            "depth h is 0).",
        )
        adv_form.addRow("Min. distance (px)", self.min_distance)
        self.h = _spin(
            0.0,
            100.0,
            d.h or 0.0,
            step=0.25,
            decimals=2,
            tip="Split depth (px): cut two touching nuclei where the waist between them is "
            "at least this much narrower than they are. 0 = use the minimum distance instead.",
        )
        adv_form.addRow("Split depth h (px)", self.h)
        self.boundary_threshold = _spin(
            0.01,
            0.99,
            d.boundary_threshold,
            step=0.05,
            decimals=2,
            tip="Boundary probability above which touching nuclei are cut apart ('boundary').",
        )
        adv_form.addRow("Boundary threshold", self.boundary_threshold)
        self.min_size = _spin(
            0, 10**6, d.min_size, tip="Objects smaller than this (pixels) are removed."
        )
        adv_form.addRow("Minimum size (px)", self.min_size)
        self.fill_holes = QCheckBox("Fill holes in nuclei")
        self.fill_holes.setChecked(d.fill_holes)
        adv_form.addRow(self.fill_holes)
        self.flips = QCheckBox("Average over flips (3 to 4 times slower)")
        self.flips.setChecked(d.flips)
        self.flips.setToolTip(
            "Test-time augmentation: also predict each tile mirrored three ways and average. "
            "On DSB2018 validation images it changed the scores little (F1 +0.002, DSB score "
            "+0.006) for about 3 times the prediction time."
        )
        adv_form.addRow(self.flips)
        self.tile_size = _spin(
            64, 8192, d.tile_size, step=64, tip="Tile edge; smaller uses less memory."
        )
        adv_form.addRow("Tile size", self.tile_size)
        self.overlap = _spin(
            0, 1024, d.overlap, step=16, tip="Pixels shared by neighbouring tiles."
        )
        adv_form.addRow("Tile overlap", self.overlap)
        self.batch_size = _spin(1, 64, d.batch_size, tip="Tiles per forward pass.")
        adv_form.addRow("Batch size", self.batch_size)
        self.device = QComboBox()
        self.device.addItems(["auto", "cuda", "mps", "cpu"])
        self.device.setToolTip("auto: CUDA GPU if available, then Apple MPS, then the CPU.")
        adv_form.addRow("Device", self.device)
        self.precision = precision_box(d.precision)
        adv_form.addRow("Precision", self.precision)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)

        self.overwrite = QCheckBox("Replace result layers I painted on")
        self.overwrite.setToolTip(
            "Off: if you painted on <image>_labels, a new layer is added instead of "
            "replacing your work."
        )
        layout.addWidget(self.overwrite)
        buttons = QHBoxLayout()
        self.predict_button = QPushButton("Predict")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current tiles; layers are left unchanged.")
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)

        retrain_box = QGroupBox("Correct && retrain")
        retrain_layout = QVBoxLayout(retrain_box)
        retrain_layout.addWidget(help_label(RETRAIN_HELP))
        retrain_form = QFormLayout()
        self.corrected = QComboBox()
        self.corrected.setToolTip("The Labels layer you corrected (painted on the image above).")
        retrain_form.addRow("Corrected labels", self.corrected)
        self.counts = QComboBox()
        self.counts.addItems([COUNT_EDITS, COUNT_ALL])
        self.counts.setToolTip(
            f"'{COUNT_EDITS}': the objects you painted, split, merged or erased (and the "
            "empty pixels around them, out to about a nucleus's width) are learned; the rest "
            "of the image is 'not annotated', so a few fixes in a crowded image are enough. "
            f"'{COUNT_ALL}': every pixel of the layer counts (0 = background): pick it when "
            "you checked the whole image, or painted it all yourself."
        )
        retrain_form.addRow("What counts", self.counts)
        self.regions = QComboBox()
        self.regions.setToolTip(
            "A Shapes layer of rectangles (or polygons, ellipses) drawn around parts of the "
            "image you checked completely: everything in them counts, every nucleus (whole) "
            "and every empty pixel, fixed or not. One checked region of about 20 nuclei per "
            "image taught about as much as 20 nuclei fixed here and there, without touching "
            "the ones predicted right (measured: docs/user_guide.md). Regions already learned "
            "turn grey and are skipped next time."
        )
        self.new_regions_button = QPushButton("New")
        self.new_regions_button.setToolTip(
            "Add a Shapes layer '<image>_checked', ready to draw rectangles on the image."
        )
        regions_row = QHBoxLayout()
        regions_row.addWidget(self.regions, 1)
        regions_row.addWidget(self.new_regions_button)
        retrain_form.addRow("Checked regions", regions_row)
        self.retrain_steps = _spin(
            10,
            100_000,
            FinetuneConfig.steps,
            step=10,
            tip="Training steps of one retrain (batches of patches).",
        )
        retrain_form.addRow("Fine-tune steps", self.retrain_steps)
        self.retrain_seconds = _spin(
            5,
            3600,
            int(FinetuneConfig.max_seconds),
            step=5,
            tip="At most this long (seconds) for the steps; fewer are run when it is reached.",
        )
        retrain_form.addRow("Time limit (s)", self.retrain_seconds)
        retrain_layout.addLayout(retrain_form)
        retrain_buttons = QHBoxLayout()
        self.retrain_button = QPushButton("Retrain on corrections")
        self.clear_button = QPushButton("Forget")
        self.clear_button.setToolTip("Start collecting corrections from scratch.")
        retrain_buttons.addWidget(self.retrain_button)
        retrain_buttons.addWidget(self.clear_button)
        retrain_layout.addLayout(retrain_buttons)
        set_buttons = QHBoxLayout()
        self.save_set_button = QPushButton("Save training set...")
        self.save_set_button.setToolTip(
            "Write every image of the training set with its annotation (TIFFs and a "
            "training_set.json) to a folder, to go on another day."
        )
        self.load_set_button = QPushButton("Load training set...")
        self.load_set_button.setToolTip(
            "Add a training set saved earlier to this session's (an image of the same name "
            "is replaced)."
        )
        set_buttons.addWidget(self.save_set_button)
        set_buttons.addWidget(self.load_set_button)
        retrain_layout.addLayout(set_buttons)
        self.training_set_label = help_label("")
        retrain_layout.addWidget(self.training_set_label)
        layout.addWidget(retrain_box)

        export_box = QGroupBox("Export")
        export_layout = QVBoxLayout(export_box)
        export_layout.addWidget(help_label("Labels layers to export:"))
        self.export_layers = QListWidget()
        self.export_layers.setToolTip(
            "Tick the layers to export. Layers napari-unet made are ticked when they appear; "
            "ground truth and other layers are not."
        )
        self.export_layers.setMaximumHeight(90)
        export_layout.addWidget(self.export_layers)
        export_form = QFormLayout()
        self.export_folder = file_edit("d", None, "Folder for the exported files.")
        export_form.addRow("Folder", self.export_folder.native)
        export_layout.addLayout(export_form)
        self.export_tiff = QCheckBox("Label images (<layer>.tif, for Fiji and napari)")
        self.export_tiff.setChecked(True)
        export_layout.addWidget(self.export_tiff)
        self.export_rois = QCheckBox("ImageJ ROI sets (<layer>_rois.zip, Fiji's ROI Manager)")
        self.export_rois.setToolTip(
            "One polygon ROI per object, named by its label; stacks keep the slice position."
        )
        export_layout.addWidget(self.export_rois)
        self.export_measure = QCheckBox("Measure: one row per object (measurements.csv)")
        self.export_measure.setChecked(True)
        self.export_measure.setToolTip(
            "Area, centroid, bounding box, equivalent diameter, eccentricity, solidity, "
            "perimeter and the mean / max / min intensity of each channel of the image the "
            "labels were predicted from; in calibrated units too when the layer has a scale."
        )
        export_layout.addWidget(self.export_measure)
        self.export_overwrite = QCheckBox("Overwrite existing files")
        export_layout.addWidget(self.export_overwrite)
        self.export_button = QPushButton("Export")
        self.export_button.setToolTip(
            "Writes the ticked files for every ticked layer; nothing is written when a file "
            "exists and overwriting is off."
        )
        export_layout.addWidget(self.export_button)
        layout.addWidget(export_box)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.predict_button.clicked.connect(self._on_predict_clicked)
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.retrain_button.clicked.connect(self._on_retrain_clicked)
        self.clear_button.clicked.connect(self._on_clear_clicked)
        self.new_regions_button.clicked.connect(self._on_new_regions_clicked)
        self.counts.currentTextChanged.connect(self._update_buttons)
        self.save_set_button.clicked.connect(self._on_save_set_clicked)
        self.load_set_button.clicked.connect(self._on_load_set_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.model_choice.currentTextChanged.connect(self._on_model_choice_changed)
        self.model_choice.activated.connect(self._on_model_choice_activated)
        self.image.currentTextChanged.connect(self._on_image_changed)
        self.corrected.currentTextChanged.connect(self._update_buttons)
        self.session.model_changed.connect(self._on_session_model_changed)
        self.session.busy_changed.connect(self._on_session_busy_changed)
        self.fitted.toggled.connect(self._on_fitted_toggled)
        self._on_fitted_toggled(self.fitted.isChecked())
        self.session.training_set_changed.connect(self._on_training_set_changed)
        self._on_model_choice_changed(self.model_choice.currentText())
        self._on_training_set_changed()

    # ---- napari hooks -----------------------------------------------------------------
    def reset_choices(self, event: Any = None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        _refill(self.image, images)
        self._refill_export_layers()
        shapes = [layer.name for layer in self.viewer.layers if isinstance(layer, Shapes)]
        had_regions = self.regions.currentText()
        _refill(self.regions, [NO_REGIONS, *shapes])
        if had_regions not in ("", NO_REGIONS) and had_regions not in shapes:
            self.status.setText(
                f"The checked-regions layer '{had_regions}' is gone: Retrain counts only what "
                "you painted or erased, unless you pick or make another ('Checked regions')."
            )
        had_corrected = self.corrected.currentText()
        _refill(self.corrected, labels)
        if not had_corrected or had_corrected not in labels:
            # a new prediction layer appeared: offer it as the layer to correct
            self._on_image_changed(self.image.currentText())
        self._update_buttons()

    # ---- inputs -------------------------------------------------------------------------
    def predict_config(self) -> dict[str, Any]:
        """Return the widget's values as a :class:`~napari_unet.core.predict.PredictConfig` dict.

        With "Use the model's fitted threshold and split depth" ticked, the threshold,
        split depth and minimum distance are left out: the job then takes the model's
        (:meth:`~napari_unet.core.predict.PredictConfig.for_model`).
        """
        config = {
            "tile_size": int(self.tile_size.value()),
            "overlap": int(self.overlap.value()),
            "batch_size": int(self.batch_size.value()),
            "device": self.device.currentText(),
            "precision": self.precision.currentText(),
            "threshold": float(self.threshold.value()),
            "boundary_threshold": float(self.boundary_threshold.value()),
            "split": self.split.isChecked(),
            "split_method": self.split_method.currentText(),
            "min_distance": int(self.min_distance.value()),
            "h": float(self.h.value()) or None,
            "min_size": int(self.min_size.value()),
            "fill_holes": self.fill_holes.isChecked(),
            "flips": self.flips.isChecked(),
            "diameter": self.diameter_pixels(),
        }
        if self.fitted.isChecked():
            for key in ("threshold", "h", "min_distance"):  # min_distance only serves h = None
                del config[key]
        return config

    def diameter_pixels(self) -> float | str:
        """Return the object diameter in the image's pixels, or "auto".

        A value in the layer's units (when the chosen Image layer has a scale) is
        divided by its pixel size (the geometric mean of its Y and X scale).
        """
        value = float(self.diameter.value())
        if value <= 0:
            return "auto"
        name = self.image.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        size = _pixel_size(layer) if isinstance(layer, Image) else None
        return value / size[0] if size is not None else value

    def _update_diameter_units(self) -> None:
        name = self.image.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        size = _pixel_size(layer) if isinstance(layer, Image) else None
        self.diameter_label.setText(f"Object diameter ({size[1] if size else 'px'})")

    def stack_settings(self, layer: Image) -> dict[str, Any]:
        """Return what the job needs to tell a z-stack from a time series (``stack=``).

        The axes are decided in the job, once the model says whether the image has a
        channel axis (:func:`._jobs.predict_generator`).
        """
        return {
            "first_axis": self.first_axis.currentData(),
            "axis_labels": [str(a) for a in getattr(layer, "axis_labels", ())],
            "scale": tuple(float(v) for v in layer.scale),
        }

    def _image_layer(self) -> Image:
        name = self.image.currentText()
        if not name or name not in self.viewer.layers:
            raise NapariUnetError("Pick an Image layer to predict (or open a sample image).")
        layer = self.viewer.layers[name]
        if not isinstance(layer, Image):
            raise NapariUnetError(f"Layer '{name}' is not an Image layer.")
        return layer

    def _model(self) -> tuple[Any, str | None]:
        """(bundle, None) for the session's model, or (None, path) to load a file."""
        builtin = self._builtins.get(self.model_choice.currentText())
        if builtin is not None:  # loaded (and its checksum verified) in the worker
            return None, str(builtin.path)
        if self.model_choice.currentText() == MODEL_FILE:
            path = path_value(self.model_path)
            if path is None:
                raise NapariUnetError("Choose the model file (.pt) to predict with.")
            if not Path(path).expanduser().is_file():
                raise NapariUnetError(f"Model file {path} does not exist.")
            return None, str(Path(path).expanduser())
        if self.session.bundle is None:
            builtin = " or a built-in model" if self._builtins else ""
            raise NapariUnetError(
                "There is no model in this session yet: train one with the Train widget, "
                f"or choose '{MODEL_FILE}'{builtin}."
            )
        return self.session.bundle, None

    # ---- predict -----------------------------------------------------------------------
    def _on_predict_clicked(self) -> None:
        try:
            self.predict()
        except NapariUnetError as error:
            notify_error(error)

    def predict(self) -> None:
        """Start predicting the chosen image in a worker.

        Raises
        ------
        NapariUnetError
            When the inputs are unusable (nothing is started, nothing changed).
        """
        layer = self._image_layer()
        bundle, path = self._model()
        image = layer_array(layer, in_memory=False)  # dask/zarr stay lazy: tiled reading
        self._stop = threading.Event()
        worker = create_worker(
            predict_job,
            bundle,
            image,
            rgb=bool(layer.rgb),
            config=self.predict_config(),
            bundle_path=path,
            stop=self._stop,
            measure=layer_geometry(layer),
            in_child=self.predict_in_child_process,
            stack=self.stack_settings(layer),
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        self._start(worker, {"kind": "predict", "layer": layer}, "Predicting...")

    def _on_stop_clicked(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the running prediction or retraining to end.

        With no job of its own, it stops the session's (a retrain or training started
        from a panel that was closed since).
        """
        if self._stop is not None:
            self._stop.set()
        elif not self.session.request_stop():
            return
        self.status.setText("Stopping...")
        self.stop_button.setEnabled(False)

    # ---- retrain -----------------------------------------------------------------------
    def _on_retrain_clicked(self) -> None:
        try:
            self.retrain()
        except NapariUnetError as error:
            notify_error(error)

    def retrain(self) -> None:
        """Add the corrections to the training set, fine-tune, and predict again.

        The corrections (see :meth:`correction`) join the session's training set at once:
        they are kept even if the fine-tune fails or is stopped.

        Raises
        ------
        NapariUnetError
            When the inputs are unusable (nothing is started, nothing changed).
        """
        if self.session.busy:
            raise NapariUnetError(f"Wait until {self.session.busy} has finished.")
        bundle = self.session.bundle
        if bundle is None:
            raise NapariUnetError(
                "There is no model to fine-tune yet: train one, or predict with a model file "
                "first (it then becomes the session's model)."
            )
        layer = self._image_layer()
        image = training_image(layer_array(layer), bool(layer.rgb), bundle.in_channels, layer.name)
        corrected = self._corrected_layer(layer)
        self._regions_used = None
        annotation, notes = self.correction(layer, image, corrected)
        self.session.add_training_pair(layer.name, image, annotation, sparse=True)
        self._mark_learned(layer.name)
        # what is painted from now on is a new correction
        self.session.record_baseline(corrected, layer_array(corrected))
        names, images, annotations, _sparse = self.session.training_data()
        keep = [
            i
            for i, (img, ann) in enumerate(zip(images, annotations, strict=True))
            if _channels(img, ann) in (1, bundle.in_channels)
        ]
        left_out = [names[i] for i in range(len(names)) if i not in keep]
        if left_out:
            notes.append(
                f"left out of this retrain: {', '.join(left_out)} (their channels do not fit "
                f"the model's {bundle.in_channels}; they stay in the training set)"
            )
        names = [names[i] for i in keep]
        images = [images[i] for i in keep]
        annotations = [np.asarray(annotations[i]) for i in keep]
        config = self.finetune_config()
        self._stop = threading.Event()
        worker = create_worker(
            retrain_job,
            images,
            annotations,
            config,
            bundle,
            layer_array(layer, in_memory=False),
            names=names,
            scored=self._scored(names),
            rgb=bool(layer.rgb),
            predict_config=self.predict_config(),
            stop=self._stop,
            measure=layer_geometry(layer),
            in_child=self.predict_in_child_process,
            stack=self.stack_settings(layer),
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        job = {"kind": "retrain", "layer": layer, "corrected": corrected.name, "notes": notes}
        self.session.begin("retraining", self._stop)
        self._start(worker, job, f"Fine-tuning on {len(images)} image(s)...")
        _warn_notes(notes)

    def _corrected_layer(self, layer: Image) -> Labels:
        """Return the Labels layer picked as corrected, checked against the image."""
        name = self.corrected.currentText()
        if not name or name not in self.viewer.layers:
            raise NapariUnetError("Pick the Labels layer you corrected.")
        corrected = self.viewer.layers[name]
        if not isinstance(corrected, Labels):
            raise NapariUnetError(f"Layer '{name}' is not a Labels layer.")
        info = _result_info(corrected)
        source = info.get("source") if info.get("kind") == "prediction" else None
        if source and source != layer.name:
            raise NapariUnetError(
                f"'{name}' was predicted from image '{source}', not '{layer.name}': pick "
                f"'{source}' as the image, or the labels you corrected on '{layer.name}'."
            )
        return corrected

    def correction(
        self, layer: Image, image: np.ndarray, corrected: Labels
    ) -> tuple[np.ndarray, list[str]]:
        """Return the corrected layer's annotation (sparse convention) and notes for the user.

        With "What counts" = only my edits, the objects the user painted, split, merged
        or erased since napari-unet last predicted into the layer (or since the last
        retrain on it) count (see
        :func:`napari_unet.core.corrections.annotation_from_edits`); otherwise every
        pixel of the layer. The result is merged with the image's earlier annotation in
        the training set (later strokes win where they overlap).

        Raises
        ------
        NapariUnetError
            A layer of another shape, or nothing painted.
        """
        from napari_unet.core.corrections import (
            annotation_from_edits,
            merge_annotations,
            to_sparse,
            whole_layer_annotation,
        )

        name = corrected.name
        labels = layer_array(corrected)
        spatial = image.shape[: labels.ndim]
        if labels.shape != spatial or image.ndim > labels.ndim + 1:
            raise NapariUnetError(
                f"Labels layer '{name}' has shape {labels.shape} but image '{layer.name}' has "
                f"{tuple(image.shape)}: pick the labels painted on this image."
            )
        notes: list[str] = []
        ring = None
        if self.counts.currentText() == COUNT_ALL:
            if not np.any(labels):
                raise NapariUnetError(
                    f"Labels layer '{name}' is empty: paint the nuclei (or fix the prediction) "
                    "first."
                )
            annotation = whole_layer_annotation(labels)
            try:  # the regions drawn on this layer are in it: learned, never taken again
                self._checked_regions(layer.name, corrected, [])
            except NapariUnetError:
                self._regions_used = None
        else:
            baseline = self.session.baseline(corrected)
            if baseline is None or baseline.shape != labels.shape:
                baseline = None
                notes.append(
                    f"'{name}' was not predicted in this session, so every object in it counts "
                    "as painted by you"
                )
            checked = self._checked_regions(layer.name, corrected, notes)
            annotation, ring = annotation_from_edits(
                labels, baseline, return_ring=True, checked=checked
            )
            if not np.any(annotation):
                why = f" ({'; '.join(notes)})" if notes else ""
                raise NapariUnetError(
                    f"Nothing was painted or erased in '{name}' since it was predicted (or "
                    f"last retrained on), and no new checked region was drawn{why}: fix some "
                    "nuclei first (brush, eraser, fill), draw a rectangle around a part you "
                    f"checked ('Checked regions'), or set 'What counts' to '{COUNT_ALL}' if "
                    "the whole layer is right."
                )
        earlier = self.session.training_set.get(layer.name)
        if earlier is not None:
            same = earlier.labels.shape == annotation.shape and np.array_equal(earlier.image, image)
            if same:
                old = earlier.labels if earlier.sparse else to_sparse(earlier.labels)
                annotation = merge_annotations(old, annotation, new_ring=ring)
            else:
                notes.append(
                    f"the training set held another image named '{layer.name}': its "
                    "annotation is replaced by this one"
                )
        return annotation, notes

    def _checked_regions(
        self, image_name: str, corrected: Labels, notes: list[str]
    ) -> np.ndarray | None:
        """Rasterise the new regions of the "Checked regions" layer on `corrected`'s pixels.

        Regions learned in an earlier round (on this image) are skipped: the layer they
        were checked on may since have been replaced by a new prediction. Lines and
        paths enclose nothing and are skipped. What is used is kept in
        ``self._regions_used`` until the corrections join the training set.

        Raises
        ------
        NapariUnetError
            The Shapes layer is gone, is rotated or sheared, has more axes than the
            labels, or holds a region not flat in one plane.
        """
        from napari_unet.core.corrections import regions_mask, sort_regions

        name = self.regions.currentText()
        if not name or name == NO_REGIONS:
            return None
        if name not in self.viewer.layers or not isinstance(self.viewer.layers[name], Shapes):
            raise NapariUnetError(
                f"The checked-regions layer '{name}' is gone: pick another or '{NO_REGIONS}'."
            )
        shapes = self.viewer.layers[name]
        if not _plain_transform(corrected):
            raise NapariUnetError(
                f"Labels layer '{corrected.name}' is rotated, sheared or has an affine "
                "transform: checked regions cannot be placed on its pixels. Reset its "
                f"transform, or set 'Checked regions' to '{NO_REGIONS}'."
            )
        if not _plain_transform(shapes):
            raise NapariUnetError(
                f"Layer '{name}' is rotated, sheared or has an affine transform: the checked "
                "regions cannot be placed on the labels' pixels. Draw them in a layer made "
                "with 'New'."
            )
        labels_ndim = corrected.ndim
        d = shapes.ndim
        if d not in (2, labels_ndim):
            raise NapariUnetError(
                f"The checked-regions layer '{name}' has {d} axes but '{corrected.name}' has "
                f"{labels_ndim}: draw the regions in a layer made with 'New' (its regions lie "
                "in the plane they are drawn in)."
            )
        # shapes' data -> world -> the labels' pixels (the trailing axes line up, as napari
        # shows them)
        scale_in = np.asarray(shapes.scale, float)
        shift_in = np.asarray(shapes.translate, float)
        scale_out = np.asarray(corrected.scale, float)[-d:]
        shift_out = np.asarray(corrected.translate, float)[-d:]
        drawn = [
            (kind, ((np.asarray(data, float) * scale_in + shift_in) - shift_out) / scale_out)
            for kind, data in zip(shapes.shape_type, shapes.data, strict=True)
        ]
        used, was_learned, lines = sort_regions(
            drawn, self.session.learned_regions.get(image_name, [])
        )
        regions = [drawn[i] for i in used]
        if was_learned:
            notes.append(
                f"{len(was_learned)} checked region(s) of '{name}' were learned in an earlier "
                "round (grey) and are skipped: draw a new one around what you checked this time"
            )
        if lines:
            notes.append(f"{len(lines)} line(s) or path(s) in '{name}' enclose nothing: skipped")
        if not regions:
            return None
        checked = regions_mask(layer_array(corrected).shape, regions)
        share = float(checked.mean()) if checked.size else 0.0
        if not checked.any():
            notes.append(f"the checked regions of '{name}' lie outside '{corrected.name}'")
            return None
        notes.append(
            f"{len(regions)} checked region(s) ({share:.0%} of '{corrected.name}') count "
            "whole: every nucleus and every empty pixel in them"
        )
        if d == 2 < labels_ndim:
            planes = int(np.prod(checked.shape[:-2]))
            notes.append(
                f"'{name}' is 2D, so its regions cover all {planes} planes of "
                f"'{corrected.name}': make one with 'New' to check a single plane"
            )
        self._regions_used = (shapes, used, regions, was_learned)
        return checked

    def _mark_learned(self, image_name: str) -> None:
        """Record the regions just added to the training set as learned; draw them grey.

        In a layer made with 'New' the other regions are drawn yellow again (a region
        moved since it was learned is a new one), and so is the next one drawn; a Shapes
        layer of the user's own keeps its other colours.
        """
        if self._regions_used is None:
            return
        shapes, used, regions, was_learned = self._regions_used
        self._regions_used = None
        self.session.add_learned_regions(image_name, regions)
        ours = _result_kind(shapes) == "checked_regions"
        colors = np.array(shapes.edge_color, dtype=float, copy=True)
        if colors.shape[0] == len(shapes.data):
            if ours:
                colors[:] = transform_color(REGION_COLOR)[0]
            colors[used + was_learned] = LEARNED_COLOR
            shapes.edge_color = colors
        if ours:
            shapes.current_edge_color = REGION_COLOR

    def _on_new_regions_clicked(self) -> None:
        try:
            self.new_regions_layer()
        except NapariUnetError as error:
            notify_error(error)

    def new_regions_layer(self) -> Shapes:
        """Add an empty Shapes layer for checked regions over the corrected labels.

        It has the labels' axes, scale and offset, so a rectangle drawn on a plane of a
        stack covers that plane; it is selected in rectangle mode, ready to draw.
        """
        layer = self._image_layer()
        try:
            target = self._corrected_layer(layer)
        except NapariUnetError as error:
            raise NapariUnetError(
                f"{error} Checked regions are drawn on the labels you correct: predict the "
                "image first."
            ) from None
        # the labels' axes: on a stack, a region lies in the plane it is drawn in
        ndim = target.ndim
        base = f"{layer.name}_checked"
        name, n = base, 2
        while name in self.viewer.layers:
            name, n = f"{base}_{n}", n + 1
        shapes = self.viewer.add_shapes(
            ndim=ndim,
            name=name,
            edge_color=REGION_COLOR,
            face_color="transparent",
            edge_width=3,
            scale=tuple(target.scale),
            translate=tuple(target.translate),
            metadata=result_metadata(layer.name, "checked_regions"),
        )
        shapes.mode = "add_rectangle"
        self.viewer.layers.selection.active = shapes
        self.reset_choices()
        self.regions.setCurrentText(name)
        self.status.setText(
            f"Draw rectangles in '{name}' around parts of the image you have checked "
            "completely (fix what is wrong in them first), then select the labels layer to "
            "paint, or press Retrain."
        )
        return shapes

    def _scored(self, names: list[str]) -> list[int]:
        """Return the indices of the pairs that hold the user's corrections (made in Retrain)."""
        return [i for i, name in enumerate(names) if self.session.training_set[name].sparse]

    def finetune_config(self) -> dict[str, Any]:
        """:class:`~napari_unet.core.finetune.FinetuneConfig` dict of the widget's values.

        The model is saved next to the session's checkpoint; one fine-tuned from a
        built-in model goes to :data:`DEFAULT_MODEL_DIR` (the built-in file and its
        folder are never written).
        """
        info = self.session.model_info
        if info is not None and info.checkpoint is not None and is_builtin(info.checkpoint):
            stem = info.checkpoint.stem
            path = DEFAULT_MODEL_DIR / f"{stem}-retrained-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        elif info is not None and info.checkpoint is not None:
            base = info.checkpoint
            stem = base.stem.split("-retrained")[0]
            path = base.with_name(f"{stem}-retrained-{time.strftime('%H%M%S')}.pt")
        else:
            path = DEFAULT_MODEL_DIR / f"unet-retrained-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        return {
            "steps": int(self.retrain_steps.value()),
            "max_seconds": float(self.retrain_seconds.value()),
            "device": self.device.currentText(),
            "checkpoint_path": str(path.expanduser()),
        }

    def _on_clear_clicked(self) -> None:
        self.session.clear_training_set()

    def _on_save_set_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog, QMessageBox

        folder = QFileDialog.getExistingDirectory(self, "Save the training set to a folder")
        if not folder:
            return
        overwrite = False
        if (Path(folder) / "training_set.json").exists():
            answer = QMessageBox.question(
                self,
                "Replace the saved training set?",
                f"{folder} holds a saved training set. Replace it with this session's "
                "(files of images no longer in the set stay)?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            overwrite = True
        try:
            self.save_training_set(folder, overwrite=overwrite)
        except NapariUnetError as error:
            notify_error(error)

    def save_training_set(self, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write the session's training set to `folder` (see core.corrections)."""
        from napari_unet.core.corrections import save_training_set

        if not self.session.training_set:
            raise NapariUnetError("The training set is empty: retrain on a correction first.")
        files = save_training_set(
            folder,
            list(self.session.training_set.values()),
            overwrite=overwrite,
            checked_regions=self.session.learned_regions,
        )
        self.status.setText(
            f"Saved {len(self.session.training_set)} image(s) of the training set to {folder}."
        )
        return files

    def _on_load_set_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Load a saved training set")
        if folder:
            try:
                self.load_training_set(folder)
            except NapariUnetError as error:
                notify_error(error)

    def load_training_set(self, folder: str | Path) -> list[str]:
        """Add a saved training set to the session's (same names are replaced)."""
        from napari_unet.core.corrections import load_training_set

        pairs = load_training_set(folder)
        for pair in pairs:
            self.session.add_training_pair(pair.name, pair.image, pair.labels, sparse=pair.sparse)
            # regions learned in the session that saved it stay learned (skipped)
            self.session.add_learned_regions(pair.name, pair.checked_regions)
        self.status.setText(f"Loaded {len(pairs)} image(s) into the training set from {folder}.")
        return [pair.name for pair in pairs]

    # ---- export ------------------------------------------------------------------------
    def _on_export_clicked(self) -> None:
        try:
            self.export()
        except NapariUnetError as error:
            notify_error(error)

    def export_choices(self) -> list[str]:
        """Return the names of the Labels layers ticked for export."""
        return [
            self.export_layers.item(i).text()
            for i in range(self.export_layers.count())
            if self.export_layers.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_export_choices(self, names: list[str]) -> None:
        """Tick exactly the Labels layers `names` for export."""
        for i in range(self.export_layers.count()):
            item = self.export_layers.item(i)
            item.setCheckState(
                Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked
            )

    def _refill_export_layers(self) -> None:
        """List the Labels layers; keep ticks, tick new layers that napari-unet made."""
        ticked = set(self.export_choices())
        known = {self.export_layers.item(i).text() for i in range(self.export_layers.count())}
        self.export_layers.clear()
        for layer in self.viewer.layers:
            if not isinstance(layer, Labels) or _result_kind(layer) == "split_preview":
                continue
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            made_here = _result_kind(layer) in ("prediction", "split")
            tick = layer.name in ticked or (layer.name not in known and made_here)
            item.setCheckState(Qt.CheckState.Checked if tick else Qt.CheckState.Unchecked)
            self.export_layers.addItem(item)

    def export(self) -> Any:
        """Export the ticked layers in a worker (see :func:`~._jobs.export_job`).

        Raises
        ------
        NapariUnetError
            Nothing ticked, no folder (nothing is written).
        """
        folder = path_value(self.export_folder)
        if folder is None:
            raise NapariUnetError("Choose the folder to export to.")
        names = self.export_choices()
        if not names:
            raise NapariUnetError("Tick at least one Labels layer to export.")
        items = [self._export_item(self.viewer.layers[name]) for name in names]
        worker = create_worker(
            export_job,
            items,
            folder,
            tiff=self.export_tiff.isChecked(),
            rois=self.export_rois.isChecked(),
            measure=self.export_measure.isChecked(),
            overwrite=self.export_overwrite.isChecked(),
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        worker.yielded.connect(lambda text: self.status.setText(f"Export: {text}..."))
        empty = [item.name for item in items if not np.any(item.labels)]
        worker.returned.connect(lambda exported: self._on_exported(exported, folder, empty))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_export_finished)
        self._export_worker = worker
        self.export_button.setEnabled(False)
        worker.start()
        return worker

    def _export_item(self, layer: Labels) -> ExportItem:
        """Read a Labels layer (and the image it was predicted from) for export."""
        labels = layer_array(layer)
        image, axis = source_image(self.viewer, layer, labels.shape)
        note = ""
        if image is None:
            note = (
                f"no open image fits '{layer.name}' pixel for pixel, so it has no intensity "
                "columns (open the image it was made from, named like it)"
            )
        return ExportItem(
            name=layer.name,
            labels=labels,
            meta={"scale": layer.scale, "units": layer.units, "axis_labels": layer.axis_labels},
            geometry=layer_geometry(layer),
            image=image,
            channel_axis=axis,
            note=note,
        )

    def _on_export_finished(self) -> None:
        self._export_worker = None
        self._update_buttons()

    def _on_exported(self, exported: Any, folder: str, empty: list[str]) -> None:
        text = f"Exported {len(exported.files)} file(s) to {folder}."
        if empty and self.export_rois.isChecked():
            text += f" No objects (no ROI set) in: {', '.join(empty)}."
        show_info(text)
        if exported.notes:
            show_warning("; ".join(exported.notes))
            text += " Note: " + "; ".join(exported.notes)
        self.status.setText(text)

    # ---- worker plumbing -----------------------------------------------------------------
    def _start(self, worker: Any, job: dict[str, Any], message: str) -> None:
        # a panel closed while its job runs still handles its result (see relay)
        worker.yielded.connect(relay(self, self._on_progress))
        worker.returned.connect(relay(self, self._on_returned))
        worker.errored.connect(relay(self, self._on_errored, report_worker_error))
        session, retrain = self.session, job.get("kind") == "retrain"
        worker.finished.connect(
            relay(self, self._on_finished, lambda: session.end() if retrain else None)
        )
        self._worker, self._job = worker, job
        self._guard = JobGuard(self, self._stop)
        self.progress.setValue(0)
        self.status.setText(message)
        self._update_buttons()
        worker.start()

    def _on_progress(self, progress: Any) -> None:
        if hasattr(progress, "total"):  # PredictProgress
            fraction = progress.done / progress.total if progress.total else 0.0
            self.progress.setValue(int(1000 * fraction))
            text = f"Predicting: {progress.done}/{progress.total} tiles"
            if "out of memory" in progress.message:
                text = f"{progress.message}\n{text}"
            self.status.setText(text)
        elif hasattr(progress, "fraction"):  # TrainProgress
            self.progress.setValue(int(1000 * min(max(progress.fraction, 0.0), 1.0)))
            if progress.kind == "step" and progress.loss is None and progress.message:
                text = progress.message[0].upper() + progress.message[1:] + "..."
            else:
                loss = "" if progress.loss is None else f", loss {progress.loss:.3f}"
                text = (
                    f"Fine-tuning on {progress.device or 'device'}: step {progress.step} of "
                    f"{int(self.retrain_steps.value())}{loss}, {progress.elapsed:.0f} s"
                )
            self.status.setText(text)

    def _on_returned(self, value: Any) -> None:
        job = self._job or {}
        if isinstance(value, Retrained):
            self._on_retrained(value, job)
            return
        if isinstance(value, Predicted):
            if value.loaded_from is not None:
                builtin = builtin_entry(value.loaded_from)
                self.session.set_model(
                    value.bundle,
                    source=(
                        f"Built-in model: {builtin.title}"
                        if builtin is not None
                        else f"Loaded from {Path(value.loaded_from).name}"
                    ),
                    checkpoint=value.loaded_from,
                )
            if value.result is None:
                self.status.setText("Prediction stopped; no layer was changed.")
                return
            layers = self._add_results(job["layer"], value.result, measured=value.measured)
            self.corrected.setCurrentText(layers[-1].name)  # the layer to correct next
            n = int(value.result.labels.max()) if value.result.labels.size else 0
            stack_note, notes = _stack_note(value.result)
            self.status.setText(
                f"Found {n} nuclei{_settings_text(value.result.settings)}: "
                f"{', '.join(layer.name for layer in layers)}.\n"
                f"{_scale_text(value.result.scale, job['layer'])}"
                + (f"\n{stack_note[0].upper()}{stack_note[1:]}." if stack_note else "")
            )
            _warn_notes(notes)

    def _on_retrained(self, value: Retrained, job: dict[str, Any]) -> None:
        """Set the kept model; put the new prediction next to the corrected layer."""
        tuned = value.tuned
        n_images = len(self.session.training_set)
        if tuned.kept == "new":
            self.session.set_model(
                tuned.bundle,
                source=f"Fine-tuned at {time.strftime('%H:%M')} on {n_images} image(s)",
                checkpoint=tuned.checkpoint,
            )
        text = tuned.summary()
        notes = list(tuned.notes)
        predicted = value.predicted
        if predicted.result is None:
            self.status.setText(text + " Prediction skipped.")
            show_info(text)  # also when the panel was closed meanwhile
            _warn_notes(notes)
            return
        source = job["layer"]
        kept_layer = job.get("corrected")
        # a new layer every round, never one that exists (a painted one, or the corrected)
        n = 2
        while f"{source.name}_labels_round_{n}" in self.viewer.layers:
            n += 1
        layers = self._add_results(
            source,
            predicted.result,
            measured=predicted.measured,
            labels_name=f"{source.name}_labels_round_{n}",
        )
        new = layers[-1]
        if kept_layer in self.viewer.layers and self.viewer.layers[kept_layer] is not new:
            self.viewer.layers[kept_layer].visible = False  # kept, hidden under the new one
            text += f" Your corrections stay in '{kept_layer}' (hidden)."
        self.corrected.setCurrentText(new.name)  # the layer to correct next
        text += f" New prediction: '{new.name}'."
        stack_note, stack_others = _stack_note(predicted.result)
        if stack_note:
            text += f"\n{stack_note[0].upper()}{stack_note[1:]}."
        self.status.setText(text)
        show_info(text)
        _warn_notes(notes + stack_others)

    def _on_errored(self, error: BaseException) -> None:
        # shown as a napari notification; no layer was changed
        report_worker_error(error)
        self.status.setText(f"Failed: {error}")

    def _on_finished(self) -> None:
        if self._guard is not None:
            self._guard.done()
        self._guard = None
        if self._job is not None and self._job.get("kind") == "retrain":
            self.session.end()
        self._worker = self._stop = self._job = None
        self.progress.setValue(0)
        self._update_buttons()

    # ---- results -> layers (main thread) ------------------------------------------------
    def _add_results(
        self,
        source: Image,
        result: Any,
        measured: Any = None,
        labels_name: str | None = None,
    ) -> list[Layer]:
        """Put a PredictResult into ``<source>_probability`` and ``<source>_labels``.

        The labels layer gets the objects' measurements (`measured`, a
        :class:`~._jobs.Measured`) as its ``features``.

        `labels_name` names the labels layer instead (a retrain's new prediction). A
        source image deleted while it was predicted still gets its result layers (with
        its scale and position). The labels go into an existing layer only when no one
        has painted on it since napari-unet made it; the session remembers what was put
        there, to tell the user's edits later.
        """
        if source not in self.viewer.layers:
            show_info(
                f"'{source.name}' was removed while it was predicted: its results were "
                "added as new layers."
            )
        spatial = _spatial_transform(source, result.labels.shape)
        probabilities = result.probabilities or {}
        foreground = probabilities.get("foreground")
        if foreground is None and probabilities:
            foreground = next(iter(probabilities.values()))
        out: list[Layer] = []
        if foreground is not None:
            out.append(
                self._put_layer(
                    f"{source.name}_probability",
                    foreground,
                    "image",
                    source.name,
                    spatial,
                    {
                        "colormap": "magma",
                        "blending": "additive",
                        "contrast_limits": (0.0, 1.0),
                        "visible": False,
                    },
                )
            )
        out.append(
            self._put_layer(
                labels_name or f"{source.name}_labels",
                result.labels,
                "labels",
                source.name,
                spatial,
                {},
            )
        )
        self.session.record_baseline(out[-1], result.labels)
        if measured is not None:
            set_features(out[-1], measured.features)
            if measured.note:
                show_warning(measured.note)
        return out

    def _put_layer(
        self,
        name: str,
        data: np.ndarray,
        kind: str,
        source: str,
        spatial: dict[str, Any],
        extra: dict[str, Any],
    ) -> Layer:
        """Update layer `name` if it is replaceable, else add a new layer."""
        cls = Labels if kind == "labels" else Image
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if (
            isinstance(existing, cls)
            and existing.data.shape == data.shape
            and (self.session.is_replaceable(existing) or self.overwrite.isChecked())
        ):
            existing.data = data
            existing.metadata.update(result_metadata(source, "prediction"))
            self.session.track_result(existing)
            return existing
        if kind == "labels":
            layer = self.viewer.add_labels(
                data, name=name, metadata=result_metadata(source, "prediction"), **spatial
            )
        else:
            layer = self.viewer.add_image(
                data,
                name=name,
                metadata=result_metadata(source, "probability"),
                **spatial,
                **extra,
            )
        self.session.track_result(layer)
        return layer

    # ---- state ---------------------------------------------------------------------------
    def _on_image_changed(self, name: str) -> None:
        """Default the corrected layer to this image's prediction."""
        candidate = f"{name}_labels"
        if self.corrected.findText(candidate) >= 0:
            self.corrected.setCurrentText(candidate)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        self.first_axis.setEnabled(isinstance(layer, Image) and layer.ndim == 3)
        self._update_diameter_units()
        self._update_buttons()

    def _on_fitted_toggled(self, fitted: bool) -> None:
        # the model's values replace these two while ticked
        self.threshold.setEnabled(not fitted)
        self.h.setEnabled(not fitted)

    def _on_model_choice_changed(self, text: str) -> None:
        self.model_path.native.setEnabled(text == MODEL_FILE)
        self._update_buttons()

    def _on_model_choice_activated(self, index: int) -> None:
        self._default_choice = False  # the user's choice stays

    def _on_session_model_changed(self) -> None:
        if not is_alive(self):  # its viewer was closed
            return
        if self._default_choice and self.session.bundle is not None:
            # a model trained (or the built-in one loaded) in this session: predict with it
            self._default_choice = False
            self.model_choice.setCurrentText(MODEL_SESSION)
        self.model_label.setText(self.session.describe_model())
        self._update_buttons()

    def _on_session_busy_changed(self, busy: bool) -> None:
        if not is_alive(self):  # its viewer was closed
            return
        self._update_buttons()

    def _on_training_set_changed(self) -> None:
        if not is_alive(self):  # its viewer was closed
            return
        self.training_set_label.setText(training_set_text(self.session))
        self._update_buttons()

    def _update_buttons(self, *args: Any) -> None:
        running = self._worker is not None
        has_image = bool(self.image.currentText())
        has_model = (
            self.session.bundle is not None
            or self.model_choice.currentText() == MODEL_FILE
            or self.model_choice.currentText() in self._builtins
        )
        self.predict_button.setEnabled(not running and has_image and has_model)
        own = running and self._stop is not None and not self._stop.is_set()
        self.stop_button.setEnabled(own or (not running and self.session.stoppable))
        self.retrain_button.setEnabled(
            not running
            and self.session.busy is None
            and self.session.bundle is not None
            and has_image
            and bool(self.corrected.currentText())
        )
        self.clear_button.setEnabled(not running and bool(self.session.training_set))
        edits = self.counts.currentText() == COUNT_EDITS
        self.regions.setEnabled(edits)
        self.new_regions_button.setEnabled(edits and has_image)
        self.save_set_button.setEnabled(bool(self.session.training_set))
        self.load_set_button.setEnabled(self.session.busy is None)
        self.export_button.setEnabled(
            self._export_worker is None
            and any(isinstance(layer, Labels) for layer in self.viewer.layers)
        )


def _pixel_size(layer: Image) -> tuple[float, str] | None:
    """(pixel size, unit) of an Image layer's Y and X axes; None when its scale is 1."""
    yx = np.asarray(layer.scale[-2:], dtype=float)
    if np.allclose(yx, 1.0):
        return None
    units = getattr(layer, "units", None)
    unit = format(units[-1], "~") if units is not None and len(units) else "pixel"
    return float(np.sqrt(yx[0] * yx[1])), "units" if unit in ("pixel", "px", "") else unit


def _scale_text(scale: Any, layer: Image) -> str:
    """Return the object diameter a prediction used, as a sentence for the status line."""
    size = _pixel_size(layer)
    text = scale.describe(*size) if size is not None else scale.describe()
    return text[:1].upper() + text[1:] + "."


def _stack_note(result: Any) -> tuple[str, list[str]]:
    """Return how a stack was labelled (for the status line) and the other notes.

    The note of a z-stack labelled in 3D goes to the status line; it stays a warning too
    when the voxel size was not known (the layer's scale is napari's default).
    """
    said = [n for n in result.notes if n.startswith("labelled in 3D")]
    if not said:
        return "", list(result.notes)
    others = [n for n in result.notes if n not in said]
    if result.settings.get("voxel_size") is None:
        others.append(
            said[0] + ": set the layer's scale (z, y, x) to its voxel size, e.g. "
            "layer.scale = (2.0, 0.5, 0.5)"
        )
    return said[0], others


def _warn_notes(notes: list[str]) -> None:
    """Show what the job changed on the way (e.g. smaller tiles after out of memory)."""
    if notes:
        show_warning("; ".join(notes))


def _plain_transform(layer: Layer) -> bool:
    """Return True when `layer` maps data to world by scale and translate only."""
    n = layer.ndim
    return bool(
        np.allclose(np.asarray(layer.rotate, float), np.eye(n))
        and np.allclose(np.asarray(layer.shear, float), 0.0)
        and np.allclose(np.asarray(layer.affine.affine_matrix, float), np.eye(n + 1))
    )


def _refill(box: QComboBox, names: list[str]) -> None:
    """Replace a combo box's items, keeping the current one when it still exists."""
    current = box.currentText()
    box.blockSignals(True)
    box.clear()
    box.addItems(names)
    if current in names:
        box.setCurrentText(current)
    box.blockSignals(False)


def _result_info(layer: Layer) -> dict[str, Any]:
    info = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    return info if isinstance(info, dict) else {}


def _result_kind(layer: Layer) -> str | None:
    """Return what napari-unet made `layer` as ("prediction", "split", ...), or None."""
    return _result_info(layer).get("kind")


def training_image(data: np.ndarray, rgb: bool, in_channels: int, name: str) -> np.ndarray:
    """Return an image layer's data as the training set keeps it (channels last, no alpha).

    Raises
    ------
    NapariUnetError
        Its channels do not fit the model (nothing is added to the training set then).
    """
    from napari_unet.core.predict import prepare_image

    axis = guess_channel_axis(data.shape, in_channels, rgb=rgb)
    try:
        prepared = prepare_image(data, in_channels, axis)  # (C, ..., Y, X)
    except NapariUnetError as error:
        raise NapariUnetError(f"'{name}' cannot fine-tune the session's model: {error}") from None
    if axis is None:
        return data  # grey (repeated on the model's channels when training)
    return np.moveaxis(np.asarray(prepared[(slice(None),) * prepared.ndim]), 0, -1)


def _channels(image: np.ndarray, labels: np.ndarray) -> int:
    """Return the number of channels of a training pair's image (1 for grey)."""
    from napari_unet.core.data import find_channel_axis

    axis = find_channel_axis(np.shape(image), np.shape(labels))
    return 1 if axis is None else int(np.shape(image)[axis])


def training_set_text(session: Session) -> str:
    """Describe the training set, one line per image: objects and annotated share."""
    from napari_unet.core.corrections import annotation_summary, to_sparse

    if not session.training_set:
        return "Training set: empty"
    lines = [f"Training set: {len(session.training_set)} image(s)"]
    for name, pair in session.training_set.items():
        info = annotation_summary(pair.labels if pair.sparse else to_sparse(pair.labels))
        share = info["annotated_fraction"]
        what = "all of it" if info["fully_annotated"] else f"{100 * share:.0f}% of it"
        lines.append(f"  {name}: {info['objects']} object(s), {what} annotated")
    return "\n".join(lines)


def _spatial_transform(source: Image, shape: tuple[int, ...]) -> dict[str, Any]:
    """``scale``/``translate`` for a result of `shape` covering `source` pixel for pixel.

    RGB layers' transforms are already spatial; a multi-channel layer loses the channel
    axis that the prediction dropped (its first or last axis).
    """
    scale, translate = tuple(source.scale), tuple(source.translate)
    units = tuple(str(u) for u in getattr(source, "units", ()) or ())
    names = tuple(str(a) for a in getattr(source, "axis_labels", ()) or ())
    keep = slice(None)
    if len(scale) != len(shape):
        data_shape = tuple(layer_array(source, in_memory=False).shape)
        keep = slice(1, None) if data_shape[1:] == tuple(shape) else slice(None, -1)
        scale, translate = scale[keep], translate[keep]
    out: dict[str, Any] = {"scale": scale, "translate": translate}
    # the same units and axis names as the image: napari then draws them together
    if len(units) == len(getattr(source, "scale", ())):
        out["units"] = units[keep]
    if len(names) == len(getattr(source, "scale", ())):
        out["axis_labels"] = names[keep]
    return out
