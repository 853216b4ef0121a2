"""A small live plot of training loss and validation scores, drawn with QPainter.

No plotting library needed: two stacked panels (loss on a log or linear scale chosen
from the data, validation scores on 0..1), x = training step. The data live in plain
lists (:class:`PlotData`), so tests can read what is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Colours of the series, readable on napari's dark and light themes.
COLOURS = {
    "loss": "#4fa3ff",
    "val_loss": "#ff9f40",
    "dice": "#5ad17a",
    "f1": "#e76fd0",
}

#: Legend names of the series.
NAMES = {"loss": "training", "val_loss": "validation", "dice": "Dice", "f1": "F1"}


@dataclass
class PlotData:
    """Series shown by :class:`TrainingPlot`: name -> list of (step, value)."""

    loss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    scores: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every point."""
        self.loss.clear()
        self.scores.clear()


def _finite(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class TrainingPlot(QWidget):
    """Live plot: training/validation loss (top) and validation scores (bottom)."""

    #: Validation keys drawn in the score panel (when the core reports them).
    SCORE_KEYS = ("dice", "f1")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data = PlotData()
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(
            "Top: training loss (blue) and validation loss (orange).\n"
            "Bottom: validation Dice (green) and F1 of matched nuclei (pink), 0 to 1."
        )

    def sizeHint(self) -> QSize:  # noqa: D102
        return QSize(320, 220)

    # ---- data --------------------------------------------------------------------
    def clear(self) -> None:
        """Remove every point (a new training run)."""
        self.data.clear()
        self.update()

    def add_loss(self, step: float, loss: object, name: str = "loss") -> None:
        """Add one loss value at `step` (ignored if not finite)."""
        value = _finite(loss)
        if value is not None:
            self.data.loss.setdefault(name, []).append((float(step), value))
            self.update()

    def add_validation(self, step: float, validation: dict) -> None:
        """Add the validation loss and scores reported at `step`."""
        if "val_loss" in validation:
            self.add_loss(step, validation["val_loss"], name="val_loss")
        for key in self.SCORE_KEYS:
            value = _finite(validation.get(key))
            if value is not None:
                self.data.scores.setdefault(key, []).append((float(step), value))
        self.update()

    # ---- drawing ------------------------------------------------------------------
    def paintEvent(self, event: object) -> None:  # noqa: D102, N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        rect = QRectF(self.rect()).adjusted(4, 4, -4, -4)
        half = rect.height() / 2
        top = QRectF(rect.left(), rect.top(), rect.width(), half - 4)
        bottom = QRectF(rect.left(), rect.top() + half + 4, rect.width(), half - 4)
        xmax = max(
            [p[0] for s in (*self.data.loss.values(), *self.data.scores.values()) for p in s]
            or [1.0]
        )
        self._panel(
            painter, top, self.data.loss, "loss", text, xmax, None, "appears while training"
        )
        self._panel(
            painter,
            bottom,
            self.data.scores,
            "validation",
            text,
            xmax,
            (0.0, 1.0),
            "scores after each epoch (on what was held back)",
        )
        painter.end()

    def _panel(
        self,
        painter: QPainter,
        rect: QRectF,
        series: dict[str, list[tuple[float, float]]],
        title: str,
        text: QColor,
        xmax: float,
        yrange: tuple[float, float] | None,
        empty: str,
    ) -> None:
        metrics = painter.fontMetrics()
        left = metrics.horizontalAdvance("0.000") + 8
        plot = rect.adjusted(left, metrics.height() + 2, -4, -metrics.height() - 2)
        values = [v for s in series.values() for _, v in s]
        if yrange is None:
            lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
            if hi - lo < 1e-9:
                lo, hi = lo - 0.5 * abs(lo) - 1e-3, hi + 0.5 * abs(hi) + 1e-3
            lo = min(lo, 0.0) if lo >= 0 and lo < 0.2 * hi else lo
        else:
            lo, hi = yrange

        painter.setPen(QPen(text, 1))
        painter.drawRect(plot)
        # legend: the title, then one coloured entry per series
        x = rect.left() + left
        y = rect.top() + metrics.ascent()
        painter.drawText(QPointF(x, y), title)
        x += metrics.horizontalAdvance(title) + 12
        for name in series:
            colour = QColor(COLOURS.get(name, "#cccccc"))
            painter.setPen(QPen(colour, 2.5))
            mid = rect.top() + metrics.height() / 2
            painter.drawLine(QPointF(x, mid), QPointF(x + 14, mid))
            painter.setPen(QPen(text, 1))
            label = NAMES.get(name, name)
            painter.drawText(QPointF(x + 18, y), label)
            x += 18 + metrics.horizontalAdvance(label) + 12
        for value, y in ((hi, plot.top()), (lo, plot.bottom())):
            painter.drawText(
                QRectF(rect.left(), y - metrics.height() / 2, left - 4, metrics.height()),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                f"{value:.3g}",
            )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 1, plot.width(), metrics.height()),
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop),
            f"step {xmax:.0f}",
        )
        if not series:
            painter.drawText(plot, int(Qt.AlignmentFlag.AlignCenter), empty)
            return

        def to_point(x: float, y: float) -> QPointF:
            fx = x / xmax if xmax > 0 else 0.0
            fy = (y - lo) / (hi - lo) if hi > lo else 0.5
            return QPointF(plot.left() + fx * plot.width(), plot.bottom() - fy * plot.height())

        for name, points in series.items():
            colour = QColor(COLOURS.get(name, "#cccccc"))
            painter.setPen(QPen(colour, 1.6))
            if len(points) == 1:
                painter.setBrush(colour)
                painter.drawEllipse(to_point(*points[0]), 2.5, 2.5)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                continue
            path = QPainterPath(to_point(*points[0]))
            for x, y in points[1:]:
                path.lineTo(to_point(x, y))
            painter.drawPath(path)
