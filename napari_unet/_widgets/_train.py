"""The Train widget: train a UNet on one or more Image + Labels layer pairs.

Thin adapter over :func:`napari_unet.core.train.iter_train`: the arrays are read from
the layers on the main thread, the generator runs in a napari ``thread_worker``
(:func:`._jobs.train_job`), and what it yields becomes the progress bar, the device
label and the live plot. The trained model goes to the viewer's
:class:`~._session.Session` (for Predict and Correct & retrain) and is saved as a
checkpoint file.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible
from superqt.utils import create_worker

from napari_unet._widgets._common import (
    JobGuard,
    TabbedPanel,
    file_edit,
    help_label,
    is_alive,
    layer_array,
    notify_error,
    path_value,
    precision_box,
    relay,
    report_worker_error,
    scrollable_layout,
)
from napari_unet._widgets._common import (
    spin_box as _spin,
)
from napari_unet._widgets._jobs import train_job
from napari_unet._widgets._pairs import LayerPairs
from napari_unet._widgets._plot import TrainingPlot
from napari_unet._widgets._session import Session, session_for
from napari_unet.core.builtin import check_not_builtin, list_models
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.train import TrainConfig, score_name
from napari_unet.core.tune import describe_settings


def validation_text(entry: dict[str, Any]) -> str:
    """One validation as words: its score by name (and whether it is the best so far)."""
    name = score_name(entry)
    if name == "training loss":
        return "nothing held back to score"
    best = " (best so far)" if entry.get("best") else ""
    return f"{name} {entry['score']:.3f}{best}"


if TYPE_CHECKING:
    import napari

#: Where models go when the user leaves "Save model as" empty.
DEFAULT_MODEL_DIR = Path("~/napari-unet/models")

START_NEW, START_SESSION, START_FILE = "New model", "The session's model", "A model file"

SPARSE_HELP = (
    "Partial annotation: paint only some nuclei and some background. Then 0 (unpainted) "
    "is ignored, label 1 means background, and 2, 3, ... are nuclei."
)


def default_model_path(now: float | None = None) -> Path:
    """Return a new, time-stamped model file name in :data:`DEFAULT_MODEL_DIR`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return (DEFAULT_MODEL_DIR / f"unet-{stamp}.pt").expanduser()


class TrainWidget(TabbedPanel):
    """Train a UNet on Image + Labels layers, with a live plot and a Stop button.

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
        self._bioimageio_worker: Any = None
        self._stop: threading.Event | None = None
        self._started_at = 0.0
        self._pending: tuple | None = None
        self._guard: JobGuard | None = None
        #: Train in a child process, so the viewer never waits for the training's
        #: interpreter lock (bench/viewer_lag.py); False trains in a worker thread of
        #: this process (for debugging, and tests that inject faults into the core).
        self.train_in_child_process = True
        self._build()
        self._connect()
        self.reset_choices()
        self._update_buttons()

    # ---- layout ---------------------------------------------------------------------
    def _build(self) -> None:
        layout = scrollable_layout(self)

        data_box = QGroupBox("Training data")
        data_layout = QVBoxLayout(data_box)
        self.pairs = LayerPairs()
        data_layout.addWidget(self.pairs)
        self.sparse = QCheckBox("Labels are partial (0 = not annotated, 1 = background)")
        self.sparse.setToolTip(SPARSE_HELP)
        data_layout.addWidget(self.sparse)
        layout.addWidget(data_box)

        model_box = self.model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.start_from = QComboBox()
        # the built-in models by title; one is chosen while the picked images' channels fit
        # it (only the index is read here; the model is loaded when training starts)
        self._builtins = {m.title: m for m in list_models()}
        self.start_from.addItems([START_NEW, START_SESSION, *self._builtins, START_FILE])
        self.start_from.setToolTip(
            "Train a new model, or fine-tune the session's model, a built-in model (a copy "
            "of it: the built-in file is never changed) or a saved model file."
        )
        #: True until the user picks "Start from" themselves: the choice then follows the
        #: picked images (a built-in model that fits them, else a new model)
        self._default_start = True
        form.addRow("Start from", self.start_from)
        self.init_path = file_edit("r", "*.pt", "A model file saved by napari-unet (.pt).")
        form.addRow("Model file", self.init_path.native)
        self.minutes = _spin(
            0.1,
            24 * 60,
            2.0,
            step=0.5,
            decimals=1,
            tip="Training stops after this time (earlier only with an early-stopping patience).",
        )
        form.addRow("Training time (min)", self.minutes)
        self.save_path = file_edit(
            "w", "*.pt", "Where the best model is saved while training (empty: automatic)."
        )
        self.save_path.line_edit.native.setPlaceholderText(
            str(DEFAULT_MODEL_DIR / "unet-<date-time>.pt")
        )
        form.addRow("Save model as", self.save_path.native)
        layout.addWidget(model_box)

        self.advanced = QCollapsible("Advanced settings")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        d = TrainConfig()  # one source of truth for the defaults
        self.epochs = _spin(0, 100000, 0, tip="0 = no limit: the training time decides.")
        adv_form.addRow("Epochs (0 = time only)", self.epochs)
        self.patch_size = _spin(
            32, 2048, d.patch_size, step=32, tip="Side of the square training patches."
        )
        adv_form.addRow("Patch size", self.patch_size)
        self.batch_size = _spin(1, 256, d.batch_size, tip="Patches per training step.")
        adv_form.addRow("Batch size", self.batch_size)
        self.depth = _spin(2, 6, d.depth, tip="Number of down-sampling levels of the UNet.")
        adv_form.addRow("Depth", self.depth)
        self.base_channels = _spin(
            4,
            128,
            d.base_channels,
            step=4,
            tip="Features in the first level (doubled at each level).",
        )
        adv_form.addRow("Base channels", self.base_channels)
        self.lr = _spin(1e-5, 1.0, d.lr, step=1e-4, decimals=5, tip="AdamW learning rate.")
        adv_form.addRow("Learning rate", self.lr)
        self.val_fraction = _spin(
            0.0,
            0.5,
            d.val_fraction,
            step=0.05,
            decimals=2,
            tip="Share of the annotated area kept aside to measure progress.",
        )
        adv_form.addRow("Validation fraction", self.val_fraction)
        self.patience = _spin(
            0,
            10000,
            d.patience or 0,
            tip="Stop after this many validations without improvement (0 = never).",
        )
        adv_form.addRow("Early-stopping patience", self.patience)
        self.targets = QComboBox()
        self.targets.addItems(["auto", "instance", "semantic"])
        self.targets.setToolTip(
            "auto: instance labels learn nucleus boundaries too (to separate touching "
            "nuclei); binary masks learn foreground only."
        )
        adv_form.addRow("Labels are", self.targets)
        self.augment = QCheckBox("Augment (flips, rotations, intensity)")
        self.augment.setChecked(True)
        adv_form.addRow(self.augment)
        self.invert_bright = QCheckBox("Invert bright-background images")
        self.invert_bright.setChecked(d.polarity == "auto")
        self.invert_bright.setToolTip(
            "Brightfield and H&E images (dark nuclei on a light background) are inverted "
            "before training and prediction, so every image shows bright nuclei on dark as "
            "in fluorescence. Decided per image; stored with the model."
        )
        adv_form.addRow(self.invert_bright)
        self.device = QComboBox()
        self.device.addItems(["auto", "cuda", "mps", "cpu"])
        self.device.setToolTip("auto: CUDA GPU if available, then Apple MPS, then the CPU.")
        adv_form.addRow("Device", self.device)
        self.precision = precision_box(d.precision)
        adv_form.addRow("Precision", self.precision)
        self.seed = _spin(0, 2**31 - 1, d.seed, tip="Random seed, for repeatable training.")
        adv_form.addRow("Seed", self.seed)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Train")
        self.start_button.setToolTip("Start training in the background; the viewer stays usable.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step and keep the best model so far.")
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        self.export_button = QPushButton("Export for a cluster...")
        self.export_button.setToolTip(
            "Write the training set (the selected pairs and your corrections), these settings "
            "and a torchrun / SLURM script into a folder, to train on a cluster."
        )
        layout.addWidget(self.export_button)
        self.bioimageio_button = QPushButton("Export for Fiji / bioimage.io...")
        self.bioimageio_button.setToolTip(
            "Write the session's model as a bioimage.io model package (.zip): it opens in "
            "Fiji (deepImageJ), ilastik and other bioimage.io tools, and can be shared."
        )
        layout.addWidget(self.bioimageio_button)

        self.device_label = QLabel("Device: chosen when training starts")
        layout.addWidget(self.device_label)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot)
        self.model_label = help_label(self.session.describe_model())
        layout.addWidget(self.model_label)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.start_button.clicked.connect(self._on_start_clicked)
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.bioimageio_button.clicked.connect(self._on_bioimageio_clicked)
        self.start_from.currentTextChanged.connect(self._on_start_from_changed)
        self.start_from.activated.connect(self._on_start_from_activated)
        self.pairs.changed.connect(self._on_pairs_changed)
        self.session.busy_changed.connect(self._on_session_busy_changed)
        self.session.model_changed.connect(self._on_session_model_changed)
        self._on_start_from_changed(self.start_from.currentText())

    # ---- napari hooks -----------------------------------------------------------------
    def reset_choices(self, event: Any = None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.pairs.set_choices(images, labels)
        self._choose_default_start()

    # ---- config ---------------------------------------------------------------------
    def config_dict(self, checkpoint_path: Path) -> dict[str, Any]:
        """Return the widget's values as a :class:`~napari_unet.core.train.TrainConfig` dict."""
        return {
            "minutes": float(self.minutes.value()),
            "epochs": int(self.epochs.value()) or None,
            "patch_size": int(self.patch_size.value()),
            "batch_size": int(self.batch_size.value()),
            "depth": int(self.depth.value()),
            "base_channels": int(self.base_channels.value()),
            "lr": float(self.lr.value()),
            "val_fraction": float(self.val_fraction.value()),
            "patience": int(self.patience.value()) or None,
            "targets": self.targets.currentText(),
            "sparse": self.sparse.isChecked(),
            "augment": self.augment.isChecked(),
            "polarity": "auto" if self.invert_bright.isChecked() else "keep",
            "device": self.device.currentText(),
            "precision": self.precision.currentText(),
            "seed": int(self.seed.value()),
            "checkpoint_path": str(checkpoint_path),
        }

    def _read_pairs(self) -> tuple[list[str], list[Any], list[Any]]:
        """Read the selected pairs' arrays from the layers (main thread)."""
        names, images, labels = [], [], []
        pairs = self.pairs.pairs()
        if not pairs:
            raise NapariUnetError(
                "Pick at least one Image layer and the Labels layer painted on it "
                "(File > Open Sample > napari-unet has examples)."
            )
        for image_name, labels_name in pairs:
            if image_name not in self.viewer.layers or labels_name not in self.viewer.layers:
                raise NapariUnetError(
                    f"Layer '{image_name}' or '{labels_name}' no longer exists; pick again."
                )
            image_layer = self.viewer.layers[image_name]
            labels_layer = self.viewer.layers[labels_name]
            if not isinstance(image_layer, Image) or not isinstance(labels_layer, Labels):
                raise NapariUnetError(
                    f"'{image_name}' must be an Image layer and '{labels_name}' a Labels layer."
                )
            names.append(image_name)
            images.append(layer_array(image_layer))
            labels.append(layer_array(labels_layer))
        if len(set(names)) < len(names):
            raise NapariUnetError("The same image is picked twice; each row needs its own image.")
        return names, images, labels

    # ---- actions -----------------------------------------------------------------------
    def _on_start_clicked(self) -> None:
        try:
            self.start()
        except NapariUnetError as error:
            notify_error(error)

    def start(self) -> None:
        """Read the layers and settings, and start training in a worker.

        Raises
        ------
        NapariUnetError
            When the inputs are unusable (nothing is started, nothing changed).
        """
        if self.session.busy:
            raise NapariUnetError(f"Wait until {self.session.busy} has finished.")
        names, images, labels = self._read_pairs()
        init, init_path = None, None
        start_from = self.start_from.currentText()
        if start_from == START_SESSION:
            if self.session.bundle is None:
                raise NapariUnetError(
                    "There is no model in this session yet: start from a new model or a file."
                )
            init = self.session.bundle
        elif start_from in self._builtins:  # loaded (checksum verified) where it trains
            init_path = str(self._builtins[start_from].path)
        elif start_from == START_FILE:
            init_path = path_value(self.init_path)
            if init_path is None:
                raise NapariUnetError("Choose the model file to start from.")
        checkpoint = Path(path_value(self.save_path) or default_model_path()).expanduser()
        if checkpoint.suffix != ".pt":
            checkpoint = checkpoint.with_suffix(checkpoint.suffix + ".pt")
        check_not_builtin(checkpoint)  # before training, not when saving
        config = self.config_dict(checkpoint)

        self._stop = threading.Event()
        self._pending = (names, images, labels, config["sparse"], checkpoint)
        worker = create_worker(
            train_job,
            images,
            labels,
            config,
            names=names,
            init=init,
            init_path=init_path,
            stop=self._stop,
            in_child=self.train_in_child_process,
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        # a panel closed while it trains still hands its model to the session (see relay)
        worker.yielded.connect(relay(self, self._on_progress))
        worker.returned.connect(relay(self, self._on_returned))
        worker.errored.connect(relay(self, self._on_errored, report_worker_error))
        worker.finished.connect(relay(self, self._on_finished, self.session.end))
        self._worker = worker
        self._guard = JobGuard(self, self._stop)
        self.session.begin("training", self._stop)
        self.plot.clear()
        self.progress.setValue(0)
        self._started_at = time.monotonic()
        self.status.setText(f"Preparing {len(images)} image(s)...")
        self._update_buttons()
        worker.start()

    def _on_stop_clicked(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the training to end after the current step (keeps the best model).

        With no job of its own, it stops the session's (a training or retrain started
        from a panel that was closed since).
        """
        if self._stop is not None:
            self._stop.set()
        elif not self.session.request_stop():
            return
        self.status.setText("Stopping after this step...")
        self.stop_button.setEnabled(False)

    def _on_export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Export the training set for a cluster (an empty folder)"
        )
        if folder:
            self.export_for_cluster(folder)

    def export_for_cluster(self, folder: str | Path) -> Any:
        """Export the training set, settings and cluster script into ``folder``.

        Returns the :class:`~napari_unet.core.export.ExportSummary`, or None after
        showing the error (nothing is overwritten; layers are never changed).
        """
        from napari.utils.notifications import show_info

        from napari_unet.core.export import export_training_set

        try:
            names, images, labels, sparse = self._export_pairs()
            config = TrainConfig.from_dict(self.config_dict(Path("model.pt")))
            config.sparse = sparse
            start_model = None
            start_from = self.start_from.currentText()
            if start_from == START_SESSION and self.session.bundle is not None:
                start_model = self.session.bundle
            elif start_from in self._builtins:
                from napari_unet.core.checkpoint import load_checkpoint

                start_model = load_checkpoint(self._builtins[start_from].path)
            elif start_from == START_FILE and path_value(self.init_path):
                from napari_unet.core.checkpoint import load_checkpoint

                start_model = load_checkpoint(path_value(self.init_path))
            summary = export_training_set(
                folder, names, images, labels, config, start_model=start_model
            )
        except (NapariUnetError, OSError) as error:
            notify_error(error)
            return None
        show_info(
            f"Exported {len(names)} image(s) to {summary.folder}: run "
            f"'bash run_on_cluster.sh' there (or sbatch it), then load model.pt in Predict."
        )
        self.status.setText(f"Exported {len(names)} image(s) for a cluster to {summary.folder}")
        return summary

    def _on_bioimageio_clicked(self) -> None:
        info = self.session.model_info
        stem = info.checkpoint.stem if info is not None and info.checkpoint else "nuclei-unet"
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export the session's model as a bioimage.io package",
            str(Path.home() / f"{stem}.bioimageio.zip"),
            "bioimage.io model package (*.zip)",
        )
        if path:
            self.export_for_bioimageio(path)

    def export_for_bioimageio(self, path: str | Path) -> Any:
        """Write the session's model to `path` as a bioimage.io package, in a worker.

        The package's test input is the first image of the session's training set (cropped),
        else a built-in sample. Returns the worker, or None after showing why not.
        """
        from napari_unet._widgets._jobs import bioimageio_job
        from napari_unet.core.data import guess_channel_axis

        bundle = self.session.bundle
        if bundle is None:
            notify_error("There is no model to export yet: train one first.")
            return None
        from napari_unet.core.bioimageio import default_model_name

        path = Path(path).expanduser()
        if path.suffix.lower() != ".zip":  # the dialog asked about the name without .zip
            path = path.with_name(path.name + ".zip")
            if path.exists():
                notify_error(
                    f"{path.name} exists already and was not replaced: choose it by its "
                    "whole name to replace it, or another name."
                )
                return None
        image, axis = None, None
        for pair in self.session.training_set.values():
            shape = tuple(np.shape(pair.image))
            axis = guess_channel_axis(
                shape, bundle.in_channels, rgb=len(shape) == 3 and shape[-1] in (3, 4)
            )
            if len(shape) - (axis is not None) == 2:  # a 2D image: the package's test input
                image = pair.image
                break
        info = self.session.model_info
        stem = info.checkpoint.stem if info is not None and info.checkpoint else "nuclei"
        name = default_model_name(stem)  # a name bioimage.io accepts, from the file's
        worker = create_worker(
            bioimageio_job,
            bundle,
            path,
            test_image=image,
            channel_axis=axis if image is not None else None,
            name=name,
            _start_thread=False,
            _ignore_errors=True,  # errored is connected below: report_worker_error
        )
        worker.returned.connect(self._on_bioimageio_written)
        worker.errored.connect(self._on_bioimageio_errored)
        worker.finished.connect(self._on_bioimageio_finished)
        self._bioimageio_worker = worker
        self.bioimageio_button.setEnabled(False)
        self.status.setText(f"Writing the bioimage.io package {path.name}...")
        worker.start()
        return worker

    def _on_bioimageio_written(self, path: Path) -> None:
        from napari.utils.notifications import show_info

        text = (
            f"Wrote the bioimage.io package {path} (validated). Open it in Fiji with "
            "deepImageJ (Install model, from a local zip) or in ilastik."
        )
        show_info(text)
        self.status.setText(text)

    def _on_bioimageio_errored(self, error: BaseException) -> None:
        report_worker_error(error)  # nothing was written (the package is validated first)
        self.status.setText(f"The bioimage.io export failed: {error}")

    def _on_bioimageio_finished(self) -> None:
        self._bioimageio_worker = None
        self._update_buttons()

    def _export_pairs(self) -> tuple[list[str], list[Any], list[Any], bool]:
        """Return the selected pairs plus the session's training set (its corrections)."""
        from napari_unet._widgets._session import TrainingPair

        selected = []
        if self.pairs.pairs():
            sparse = self.sparse.isChecked()
            selected = [
                TrainingPair(name, image, label, sparse)
                for name, image, label in zip(*self._read_pairs(), strict=True)
            ]
        return self.session.training_data(selected)

    # ---- worker callbacks (main thread) ---------------------------------------------
    def _on_progress(self, progress: Any) -> None:
        if getattr(progress, "device", ""):
            self.device_label.setText(f"Device: {progress.device}")
        self.progress.setValue(int(round(1000 * min(max(progress.fraction, 0.0), 1.0))))
        if progress.loss is not None:
            self.plot.add_loss(progress.step, progress.loss)
        if progress.validation:
            self.plot.add_validation(progress.step, progress.validation)
        parts = [f"step {progress.step}", f"epoch {progress.epoch}"]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.3f}")
        if progress.validation:
            parts.append(validation_text(progress.validation))
        parts.append(f"{progress.elapsed:.0f} s")
        text = ", ".join(parts)
        if progress.message:
            text = f"{progress.message}\n{text}"
        self.status.setText(text)

    def _on_returned(self, result: Any) -> None:
        names, images, labels, sparse, checkpoint = self._pending
        stamp = time.strftime("%H:%M")
        self.session.set_model(
            result.bundle,
            source=f"Trained at {stamp} on {len(names)} image(s)",
            checkpoint=result.checkpoint,
        )
        for name, image, label in zip(names, images, labels, strict=True):
            self.session.add_training_pair(name, image, label, sparse=sparse)
        self.progress.setValue(1000)
        reasons = {
            "budget": "time budget used",
            "epochs": "all epochs done",
            "early_stopping": "no more improvement",
            "user": "stopped by you",
            "diverged": "the loss diverged; try a lower learning rate",
        }
        score = ""
        if result.best_score is not None and result.history:
            name = score_name(result.history[-1])
            if name == "training loss":  # nothing held back: the score is minus the loss
                score = f", nothing held back (lowest training loss {-result.best_score:.3f})"
            else:
                score = f", best {name} {result.best_score:.3f}"
        settings = f"\nPrediction will use {describe_settings(result.bundle.meta)}."
        saved = f"\nModel saved as {result.checkpoint}" if result.checkpoint else ""
        notes = "".join(f"\nNote: {note}" for note in result.notes)
        self.status.setText(
            f"Done after {result.steps} steps ({reasons.get(result.stopped, result.stopped)})"
            f"{score}.{settings}{saved}{notes}"
        )
        if result.save_error is not None:
            notify_error(
                f"The model was trained but could not be saved: {result.save_error} "
                "It is kept in this session: Predict can use it."
            )
        elif result.notes:
            show_warning("; ".join(result.notes))

    def _on_errored(self, error: BaseException) -> None:
        # shown as a napari notification; no layer was changed
        report_worker_error(error)
        self.status.setText(f"Training failed: {error}")

    def _on_finished(self) -> None:
        if self._guard is not None:
            self._guard.done()
        self._guard = None
        self._worker = None
        self._stop = None
        self._pending = None
        self.session.end()
        self._update_buttons()

    # ---- state ------------------------------------------------------------------------
    def _on_start_from_changed(self, text: str) -> None:
        self.init_path.native.setEnabled(text == START_FILE)
        self._update_buttons()

    def _on_start_from_activated(self, index: int) -> None:
        self._default_start = False  # the user's choice stays

    def _on_pairs_changed(self) -> None:
        self._choose_default_start()
        self._update_buttons()

    def _choose_default_start(self) -> None:
        """Start from the first built-in model the picked images fit, else a new model.

        Only until the user picks "Start from" themselves.
        """
        if not self._default_start or not self._builtins:
            return
        channels = self._picked_channels()
        fitting = [
            title
            for title, model in self._builtins.items()
            if channels and all(model.fits(c) for c in channels)
        ]
        self.start_from.setCurrentText(fitting[0] if fitting else START_NEW)

    def _picked_channels(self) -> set[int]:
        """Channel counts of the picked images (1: grey), read from the layers' shapes."""
        from napari_unet.core.data import find_channel_axis

        channels = set()
        for image_name, labels_name in self.pairs.pairs():
            if image_name not in self.viewer.layers or labels_name not in self.viewer.layers:
                continue
            image = self.viewer.layers[image_name]
            shape = tuple(layer_array(image, in_memory=False).shape)
            if getattr(image, "rgb", False):
                channels.add(shape[-1])
                continue
            labels = layer_array(self.viewer.layers[labels_name], in_memory=False)
            try:
                axis = find_channel_axis(shape, tuple(labels.shape))
            except NapariUnetError:  # told when training starts
                continue
            channels.add(1 if axis is None else shape[axis])
        return channels

    def _on_session_busy_changed(self, busy: bool) -> None:
        if not is_alive(self):  # its viewer was closed
            return
        self._update_buttons()

    def _on_session_model_changed(self) -> None:
        if not is_alive(self):  # its viewer was closed
            return
        self.model_label.setText(self.session.describe_model())
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self._worker is not None
        busy = self.session.busy is not None
        self.start_button.setEnabled(not busy and bool(self.pairs.pairs()))
        own = running and self._stop is not None and not self._stop.is_set()
        self.stop_button.setEnabled(own or (not running and self.session.stoppable))
        self.bioimageio_button.setEnabled(
            self.session.bundle is not None and self._bioimageio_worker is None
        )
        for settings in (self.pairs, self.sparse, self.model_box, self.advanced):
            settings.setEnabled(not running)
        if busy and not running:
            self.start_button.setToolTip(f"Wait until {self.session.busy} has finished.")
        else:
            self.start_button.setToolTip(
                "Start training in the background; the viewer stays usable."
            )
