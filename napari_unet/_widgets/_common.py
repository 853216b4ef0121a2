"""Small helpers shared by the widgets: layer -> array, names, notifications."""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit
from napari.layers import Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._session import METADATA_KEY
from napari_unet.core.errors import NapariUnetError

_log = logging.getLogger(__name__)

__all__ = [
    "FIRST_AXIS_ITEMS",
    "first_axis_box",
    "METADATA_KEY",
    "NapariUnetError",
    "file_edit",
    "help_label",
    "layer_array",
    "layer_geometry",
    "set_features",
    "source_image",
    "notify_error",
    "path_value",
    "precision_box",
    "report_worker_error",
    "scrollable_layout",
    "widget_body",
    "show_info",
]


def layer_array(layer: Layer, *, in_memory: bool = True) -> Any:
    """Return a layer's data (full-resolution level if multiscale).

    With `in_memory` a numpy *copy* (dask data are computed), so painting on the layer
    while a worker uses the array changes nothing; otherwise the array as stored (dask
    and zarr stay lazy, for tiled prediction).
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.array(data, copy=True) if in_memory else data


#: The "First axis" choices of a 3D layer in Predict and Split nuclei: the text shown, and
#: the value for :func:`napari_unet.core.volume.guess_axes`.
FIRST_AXIS_ITEMS = (
    ("auto (from the axis names)", "auto"),
    ("z: a z-stack, 3D nuclei", "z"),
    ("time: 2D nuclei per frame", "time"),
)


def first_axis_box(what: str) -> Any:
    """Return the "First axis" combo box of Predict and Split nuclei (data: the choice).

    ``what`` says what a z-stack gets, e.g. "labelled" or "split".
    """
    from qtpy.QtWidgets import QComboBox

    box = QComboBox()
    for text, value in FIRST_AXIS_ITEMS:
        box.addItem(text, value)
    box.setToolTip(
        f"What the first axis of a 3D layer is. A z-stack is {what} in 3D: one object per "
        "nucleus across slices, with the layer's scale as the voxel size (z-step against "
        "pixel size); a time series frame by frame. Auto: a first axis named t, time or "
        "frame is time, anything else z. A 4D layer is a time series of z-stacks."
    )
    return box


def layer_geometry(layer: Layer) -> dict[str, Any]:
    """Return the axis labels, scale and unit of `layer`, for measuring its objects.

    Read on the main thread and handed to a job (:func:`._jobs.measure_result`), which
    fits them to the labels it measures.
    """
    units = getattr(layer, "units", None)
    return {
        "axis_labels": [str(a) for a in getattr(layer, "axis_labels", ())],
        "scale": tuple(float(v) for v in layer.scale),
        "unit": str(units[-1]) if units is not None and len(units) else "pixel",
    }


_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()


def set_features(layer: Layer, features: dict[str, Any] | None) -> None:
    """Attach measurements to a result layer; they are dropped when the user paints on it.

    The table describes the labels as predicted: once a stroke changes them it would
    show stale areas and intensities under the cursor (and nothing for new objects), so
    the first paint event clears it. Export measures the layer as it is then.
    """
    layer = getattr(layer, "__wrapped__", layer)  # napari's plugin proxy is made anew each time
    layer.features = features if features is not None else {}
    if layer not in _WATCHED:
        _WATCHED.add(layer)
        ref = weakref.ref(layer)
        layer.events.paint.connect(lambda event: _drop_features(ref))


def _drop_features(ref: weakref.ref) -> None:
    layer = ref()
    if layer is not None and layer.features.shape[1]:
        layer.features = {}


def source_image(viewer: Any, layer: Layer, shape: tuple[int, ...]) -> tuple[Any, int | None]:
    """Return the image that `layer`'s labels of `shape` belong to, for intensities.

    The image a result was made from (napari-unet's layer metadata, following a split
    back to its prediction), else the Image layer named like `layer` without a labels
    suffix (``cells`` for ``cells_labels`` or ``cells_ground_truth``). Returns
    ``(array, channel_axis)`` when one is open and fits `shape` pixel for pixel,
    else ``(None, None)``.
    """
    from napari.layers import Image

    from napari_unet._widgets._pairs import LABEL_SUFFIXES

    names = []
    current = layer
    for _ in range(3):  # split of a prediction of an image
        info = current.metadata.get(METADATA_KEY) if isinstance(current.metadata, dict) else None
        source = info.get("source") if isinstance(info, dict) else None
        if not source or source not in viewer.layers:
            break
        names.append(source)
        current = viewer.layers[source]
    for suffix in LABEL_SUFFIXES + ("_probability", "_split"):
        if layer.name.endswith(suffix):
            names.append(layer.name[: -len(suffix)])
    for name in names:
        if name not in viewer.layers or not isinstance(viewer.layers[name], Image):
            continue
        image = viewer.layers[name]
        data = layer_array(image, in_memory=False)
        if tuple(data.shape) == tuple(shape):
            return layer_array(image), None
        if data.ndim == len(shape) + 1:
            for axis in (-1,) if image.rgb else (-1, 0):
                if tuple(np.delete(np.array(data.shape), axis)) == tuple(shape):
                    return layer_array(image), axis
    return None, None


def notify_error(message: str | BaseException) -> None:
    """Show a problem the user can fix as a napari notification (nothing is changed)."""
    if isinstance(message, BaseException):
        _log.debug("napari-unet: %s", message, exc_info=message)
    show_error(str(message))


def report_worker_error(error: BaseException) -> None:
    """Show what made a worker fail.

    A :class:`NapariUnetError` (a problem the user can fix) becomes a plain error
    notification; anything else goes to napari's error handler, which shows it with
    its traceback.
    """
    if isinstance(error, NapariUnetError):
        notify_error(error)
        return
    from napari.utils.notifications import notification_manager

    notification_manager.receive_error(type(error), error, error.__traceback__)


def help_label(text: str) -> QLabel:
    """Return a wrapped, muted label explaining something in a widget."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: gray; font-size: 11px;")
    return label


def file_edit(mode: str, filter: str | None = None, tooltip: str = "") -> FileEdit:
    """Return a path field with a browse button (magicgui FileEdit), empty by default."""
    edit = FileEdit(mode=mode, filter=filter, value="")
    edit.tooltip = tooltip
    edit.native.setToolTip(tooltip)
    return edit


def path_value(edit: FileEdit) -> str | None:
    """Return the text of a path field, or None when it is empty."""
    text = str(edit.line_edit.value).strip()
    return text or None


class _BodyScrollArea(QScrollArea):
    """Scrolls vertically only, and is always as wide as its body needs."""

    def __init__(self, body: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(body)
        body.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        """Re-measure when the body's layout changes (rows added, longer names)."""
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        """Return the body's minimum width (plus the scroll bar) and a small height."""
        body = self.widget()
        hint = super().minimumSizeHint()
        if body is None:
            return hint
        width = body.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, hint.height())

    def sizeHint(self) -> QSize:  # noqa: N802
        """Return the body's preferred size (napari sizes the dock from it)."""
        body = self.widget()
        if body is None:
            return super().sizeHint()
        hint = body.sizeHint()
        return QSize(
            max(hint.width(), body.minimumSizeHint().width())
            + self.verticalScrollBar().sizeHint().width(),
            hint.height(),
        )


def scrollable_layout(widget: QWidget) -> QVBoxLayout:
    """Give `widget` a vertically scrolling body and return the body's layout.

    napari dock widgets do not scroll by themselves: a tall widget would stretch the
    window beyond small screens.
    """
    body = QWidget()
    layout = QVBoxLayout(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(_BodyScrollArea(body))
    return layout


def widget_body(widget: QWidget) -> QWidget:
    """Return the scrolling body of a napari-unet widget (for screenshots of all of it)."""
    return widget.findChild(QScrollArea).widget()


def spin_box(
    lo: float, hi: float, value: float, *, step: float = 1, decimals: int = 0, tip: str = ""
) -> QSpinBox | QDoubleSpinBox:
    """Return an integer (``decimals=0``) or decimal spin box with range, value and tooltip."""
    box: QSpinBox | QDoubleSpinBox
    if decimals:
        box = QDoubleSpinBox()
        box.setDecimals(decimals)
        box.setSingleStep(step)
    else:
        box = QSpinBox()
        box.setSingleStep(int(step))
    box.setRange(lo, hi)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def precision_box(value: str = "auto") -> QComboBox:
    """Return the Advanced settings' choice of compute precision on the CPU.

    The choices are :data:`napari_unet.core.options.PRECISIONS` ("auto", "fp32",
    "bf16"); see :func:`napari_unet.core.device.resolve_precision`.
    """
    from napari_unet.core.options import PRECISIONS  # standard library only

    box = QComboBox()
    box.addItems(list(PRECISIONS))
    box.setCurrentText(value)
    box.setToolTip(
        "Compute precision on the CPU. auto: bfloat16 where the CPU computes it natively "
        "(Intel AMX or AVX-512 BF16: 2-3x faster), else float32. bf16: always (slower "
        "where it is emulated). fp32: never. GPUs ignore it. The device line shows "
        "', bfloat16' when it is used."
    )
    return box


class JobGuard:
    """Ends a running job when its widget goes away (the viewer was closed).

    Closing a napari window deletes its dock widgets; the widget's ``destroyed`` signal
    then sets the job's stop event, so the job ends the way the Stop button ends it:
    training keeps its best model on disk, prediction changes nothing. (napari's task
    list would also do this, but plugins may not use it: it is private.)

    Parameters
    ----------
    widget : QWidget
        The dock widget that started the job.
    stop : threading.Event
        The job's stop event.
    """

    def __init__(self, widget: QWidget, stop: Any) -> None:
        self.stop = stop
        self._widget = widget
        widget.destroyed.connect(self.cancel)

    def cancel(self, *args: Any) -> None:
        """Ask the job to stop."""
        self.stop.set()

    def done(self) -> None:
        """Disconnect from the widget: the job has ended."""
        try:
            self._widget.destroyed.disconnect(self.cancel)
        except (RuntimeError, TypeError):  # already gone
            pass


def is_alive(widget: QObject) -> bool:
    """Return False once Qt has deleted `widget` (its viewer was closed)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def relay(widget: QObject, handler: Any, otherwise: Any = None) -> Any:
    """Return a callback for a worker's signal that calls `handler` while `widget` lives.

    Qt holds a bound method connected to a signal weakly: a panel closed while its job
    runs (napari takes it out of the window) would be collected, its result dropped and
    the session left busy. This callback holds `handler` strongly, so the panel lives
    until its job has ended and handles its result; once Qt has deleted the widget
    (the viewer was closed), `otherwise` (if given) runs instead.
    """

    def call(*args: Any) -> None:
        if is_alive(widget):
            handler(*args)
        elif otherwise is not None:
            otherwise(*args)

    return call


#: Qt property that marks napari-unet's panels (to find them among napari's docks).
PANEL_PROPERTY = "napari_unet_panel"


class TabbedPanel(QWidget):
    """A napari-unet panel that joins the others as a tab when it is opened.

    Three panels stacked in one column of the window leave each only a few visible lines
    on a laptop screen (1366x768); as tabs, each gets the whole column. The first time
    the panel is put in a dock, it is tabified with a napari-unet panel already docked
    in the same area (the user can drag it out again).
    """

    def __init__(self) -> None:
        super().__init__()
        self.setProperty(PANEL_PROPERTY, True)
        self._joined = False

    def event(self, event: QEvent) -> bool:
        """Once napari puts the panel in a dock, join the others (next event loop turn)."""
        if event.type() == QEvent.Type.ParentChange and not self._joined:
            QTimer.singleShot(0, self._join_once)
        return super().event(event)

    def _join_once(self) -> None:
        if not self._joined and self.join_other_panels():
            self._joined = True

    def join_other_panels(self) -> bool:
        """Tabify this panel's dock with another napari-unet dock in the same area.

        Returns True when it joined one.
        """
        if not is_alive(self):
            return False
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is None or not isinstance(dock.parentWidget(), QMainWindow):
            return False
        window = dock.parentWidget()
        area = window.dockWidgetArea(dock)
        ours = [
            other
            for other in window.findChildren(QDockWidget)
            if not other.isFloating()
            and (other is dock or other.isVisibleTo(window))
            and window.dockWidgetArea(other) == area
            and _is_panel(other.widget())
        ]
        if len(ours) < 2:
            return False
        anchor = next(other for other in ours if other is not dock)
        grouped = set(window.tabifiedDockWidgets(anchor))
        for other in ours:  # one tab group, whatever order the panels were opened in
            if other is not anchor and other not in grouped:
                window.tabifyDockWidget(anchor, other)
        QTimer.singleShot(0, dock.raise_)  # its tab is shown, once the tabs are laid out
        return True


def _is_panel(widget: QWidget | None) -> bool:
    """Return True for a napari-unet panel (or a wrapper holding one)."""
    if widget is None:
        return False
    return bool(widget.property(PANEL_PROPERTY)) or any(
        bool(child.property(PANEL_PROPERTY)) for child in widget.findChildren(QWidget)
    )
