"""Picker for several (Image layer, Labels layer) training pairs."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

#: Suffixes tried, in order, to find the labels of an image by name.
LABEL_SUFFIXES = ("_ground_truth", "_labels", "_corrected", " labels", "_gt", "_masks", "_mask")


def guess_labels(image: str, labels: Sequence[str]) -> str | None:
    """Return the labels layer most likely painted on `image`, judged by name only."""
    for suffix in LABEL_SUFFIXES:
        if image + suffix in labels:
            return image + suffix
    starting = [name for name in labels if name.startswith(image)]
    return starting[0] if starting else None


class LayerPairs(QWidget):
    """Rows of (Image, Labels) combo boxes, with add and remove buttons.

    The choices come from :meth:`set_choices` (the widget does not know the viewer);
    :meth:`pairs` returns the selected layer names.
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._images: list[str] = []
        self._labels: list[str] = []
        self._rows: list[tuple[QComboBox, QComboBox, QToolButton]] = []
        self._grid = QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.addWidget(QLabel("Image"), 0, 0)
        self._grid.addWidget(QLabel("Labels"), 0, 1)
        self.add_button = QPushButton("+ Add image")
        self.add_button.setToolTip("Train on several images at once: add one row per image.")
        self.add_button.clicked.connect(self._on_add_clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._grid)
        layout.addWidget(self.add_button)
        self.add_row()

    # ---- public -------------------------------------------------------------------
    def set_choices(self, images: Sequence[str], labels: Sequence[str]) -> None:
        """Update the layer names offered, keeping current selections that still exist."""
        self._images, self._labels = list(images), list(labels)
        for image_box, labels_box, _ in self._rows:
            self._fill(image_box, self._images)
            self._fill(labels_box, self._labels)
        self._autofill()
        self.changed.emit()

    def add_row(self, image: str | None = None, labels: str | None = None) -> None:
        """Add a row, selecting `image` / `labels` (or good guesses)."""
        image_box, labels_box = QComboBox(), QComboBox()
        image_box.setToolTip("An Image layer to learn from.")
        labels_box.setToolTip(
            "The Labels layer painted on that image (instance labels, a mask or partial "
            "annotations)."
        )
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("Remove this image from the training data.")
        row = len(self._rows) + 1
        self._grid.addWidget(image_box, row, 0)
        self._grid.addWidget(labels_box, row, 1)
        self._grid.addWidget(remove, row, 2)
        entry = (image_box, labels_box, remove)
        self._rows.append(entry)
        remove.clicked.connect(lambda: self.remove_row(self._rows.index(entry)))
        self._fill(image_box, self._images)
        self._fill(labels_box, self._labels)
        image_box.currentTextChanged.connect(lambda name: self._on_image_changed(entry, name))
        labels_box.currentTextChanged.connect(lambda _: self.changed.emit())
        if image is not None:
            image_box.setCurrentText(image)
        if labels is not None:
            labels_box.setCurrentText(labels)
        self._autofill()
        self._update_remove_buttons()
        self.changed.emit()

    def remove_row(self, index: int) -> None:
        """Remove row `index` (the last remaining row is kept)."""
        if len(self._rows) <= 1:
            return
        for widget in self._rows.pop(index):
            self._grid.removeWidget(widget)
            widget.deleteLater()
        # re-pack the remaining rows
        for row, widgets in enumerate(self._rows, start=1):
            for column, widget in enumerate(widgets):
                self._grid.addWidget(widget, row, column)
        self._update_remove_buttons()
        self.changed.emit()

    def pairs(self) -> list[tuple[str, str]]:
        """Return the selected (image name, labels name) pairs; incomplete rows are skipped."""
        out = []
        for image_box, labels_box, _ in self._rows:
            if image_box.currentText() and labels_box.currentText():
                out.append((image_box.currentText(), labels_box.currentText()))
        return out

    def set_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Replace all rows by `pairs`."""
        while len(self._rows) > 1:
            self.remove_row(len(self._rows) - 1)
        for i, (image, labels) in enumerate(pairs):
            if i == 0:
                self._rows[0][0].setCurrentText(image)
                self._rows[0][1].setCurrentText(labels)
            else:
                self.add_row(image, labels)
        self.changed.emit()

    # ---- private ---------------------------------------------------------------------
    @staticmethod
    def _fill(box: QComboBox, names: list[str]) -> None:
        current = box.currentText()
        box.blockSignals(True)
        box.clear()
        box.addItems(names)
        box.setCurrentIndex(names.index(current) if current in names else -1)
        box.blockSignals(False)

    def _autofill(self) -> None:
        """Give empty rows an image not used yet and its labels, when names tell."""
        used = {box.currentText() for box, _, _ in self._rows}
        for image_box, labels_box, _ in self._rows:
            if not image_box.currentText():
                free = [n for n in self._images if n not in used]
                if free:
                    image_box.setCurrentText(free[0])
                    used.add(free[0])
            if image_box.currentText() and not labels_box.currentText():
                guess = guess_labels(image_box.currentText(), self._labels)
                if guess is not None:
                    labels_box.setCurrentText(guess)

    def _on_image_changed(self, entry: tuple, name: str) -> None:
        guess = guess_labels(name, self._labels)
        if guess is not None:
            entry[1].setCurrentText(guess)
        self.changed.emit()

    def _on_add_clicked(self) -> None:
        self.add_row()

    def _update_remove_buttons(self) -> None:
        for _, _, remove in self._rows:
            remove.setEnabled(len(self._rows) > 1)
